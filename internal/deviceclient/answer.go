package deviceclient

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/iotprov/iotprov/internal/pause"
)

// Status is an operation's state in the device API.
type Status string

// The statuses of the device API.
const (
	StatusAssigning Status = "assigning"
	StatusAssigned  Status = "assigned"
	StatusFailed    Status = "failed"
)

// Answer is the device API's JSON (DESIGN.md §2): an operation in flight, assigned or
// failed, or an error. Fakes of the service in tests write it too.
type Answer struct {
	OperationID       string     `json:"operationId,omitempty"`
	Status            Status     `json:"status,omitempty"`
	DeviceID          string     `json:"deviceId,omitempty"`
	Host              string     `json:"host,omitempty"`
	Certificate       string     `json:"certificate,omitempty"`
	PrivateKey        string     `json:"privateKey,omitempty"`
	RootCACertificate string     `json:"rootCaCertificate,omitempty"`
	Error             *ErrorBody `json:"error,omitempty"`
}

// ErrorBody is the error object of a failed operation or of an error answer.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Result is one answer about an operation, checked.
type Result struct {
	OperationID string
	Status      Status
	// RetryAfter is when to ask again (assigning): the service's Retry-After, or
	// DefaultRetryAfter when it sent none that parses.
	RetryAfter time.Duration
	// Credentials are set when Status is assigned.
	Credentials *Credentials
	// Failure is set when Status is failed.
	Failure *Failure
}

// Credentials are what an assigned device receives. The parser has checked that the IDs
// are printable and that the PEM fields look like PEM; VerifyCredentials checks the rest.
type Credentials struct {
	DeviceID string
	Host     string // the IoT Hub hostname
	// Certificate is the device certificate then its intermediates, PEM.
	Certificate string
	// PrivateKey is the PKCS#8 PEM of a server-generated key; empty when a CSR was sent.
	PrivateKey string
	// RootCACertificate holds the roots that verify the IoT Hub server, PEM.
	RootCACertificate string
}

// Failure is why the service gave up on an operation, cleaned for a terminal.
type Failure struct {
	Code, Message string
}

// APIError is an answer of the service that is not an operation: an error body with a
// status, or an answer the device API does not make (a proxy's HTML page, say).
type APIError struct {
	Status  int    // HTTP status
	Code    string // the stable error code; "" when the body was not a device API error
	Message string
	// RetryAfter is the service's Retry-After, or DefaultRetryAfter when it sent none.
	RetryAfter time.Duration
	// RetryAfterSent says the answer carried a Retry-After that parses.
	RetryAfterSent bool
}

func (e *APIError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("HTTP %d (%s) with no device API answer", e.Status, http.StatusText(e.Status))
}

// Temporary says the answer is one to wait out and ask again: a dependency is down (503),
// or the device is throttled (429 with a Retry-After).
func (e *APIError) Temporary() bool {
	return e.Status == http.StatusServiceUnavailable || e.Status == http.StatusTooManyRequests && e.RetryAfterSent
}

// MalformedError is an answer that has the device API's shape but values a device must
// not use: an operation ID that is not safe in a URL, a hostile host, missing PEM.
type MalformedError struct {
	Status int
	Reason string
}

func (e *MalformedError) Error() string { return e.Reason }

// Retry-After bounds.
const (
	// DefaultRetryAfter is the wait when the service sends no usable Retry-After: a
	// missing header must not make a device spin.
	DefaultRetryAfter = time.Second
	// MaxRetryAfter bounds what a service can make a device wait for one answer.
	MaxRetryAfter = 5 * time.Minute
)

// parseAnswer reads one answer of the service, which the device does not trust: anything
// but a well-formed in-flight, assigned or failed answer is an *APIError (an error body,
// or something else) or a *MalformedError. Values that end up in URLs, file names,
// terminals or shell assignments are checked here.
func parseAnswer(status int, retryAfter string, body []byte, now time.Time) (*Result, error) {
	if len(body) > MaxAnswerSize {
		return nil, &MalformedError{Status: status, Reason: fmt.Sprintf("HTTP %d: answer larger than %d bytes", status, MaxAnswerSize)}
	}
	wait, sent := pause.ParseRetryAfter(retryAfter, now, MaxRetryAfter)
	if !sent {
		wait = DefaultRetryAfter
	}
	var a Answer
	jsonErr := json.Unmarshal(body, &a)
	switch {
	case jsonErr == nil && status == http.StatusAccepted && a.Status == StatusAssigning:
	case jsonErr == nil && status == http.StatusOK && (a.Status == StatusAssigned || a.Status == StatusFailed):
	default:
		e := &APIError{Status: status, RetryAfter: wait, RetryAfterSent: sent}
		if jsonErr == nil && a.Error != nil && a.Error.Code != "" {
			e.Code, e.Message = clean(a.Error.Code, 64), clean(a.Error.Message, 300)
		}
		return nil, e
	}
	if !validOperationID(a.OperationID) {
		return nil, &MalformedError{Status: status, Reason: fmt.Sprintf("HTTP %d: the answer has no valid operationId", status)}
	}
	res := &Result{OperationID: a.OperationID, Status: a.Status, RetryAfter: wait}
	switch a.Status {
	case StatusAssigned:
		if !printable(a.DeviceID) || !printable(a.Host) {
			return nil, &MalformedError{Status: status, Reason: "the assigned answer has no usable deviceId or host"}
		}
		if !strings.Contains(a.Certificate, "-----BEGIN CERTIFICATE-----") || !strings.Contains(a.RootCACertificate, "-----BEGIN CERTIFICATE-----") {
			return nil, &MalformedError{Status: status, Reason: "the assigned answer lacks a PEM certificate or rootCaCertificate"}
		}
		res.Credentials = &Credentials{DeviceID: a.DeviceID, Host: a.Host, Certificate: a.Certificate,
			PrivateKey: a.PrivateKey, RootCACertificate: a.RootCACertificate}
	case StatusFailed:
		res.Failure = &Failure{Code: "unknown", Message: "The service gave no reason."}
		if a.Error != nil && a.Error.Code != "" {
			res.Failure = &Failure{Code: clean(a.Error.Code, 64), Message: clean(a.Error.Message, 300)}
		}
	}
	return res, nil
}

// clean keeps a service-supplied string to one printable line of at most n bytes before
// it reaches a terminal or a report, cutting only between runes.
func clean(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return ' '
		}
		return r
	}, s)
	if len(s) > n {
		cut := n
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// validOperationID accepts what the service makes (UUIDs) and the same alphabet, so the ID
// is safe in a URL path and in a shell assignment.
func validOperationID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// printable: non-empty printable ASCII of at most 255 bytes (a hostname's limit; device
// IDs are at most 64).
func printable(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
