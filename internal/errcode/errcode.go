// Package errcode is the one typed error of iotprov: a stable machine-readable code, the
// HTTP status it maps to at the edge, and a message that is safe to show a device. The
// cause is kept for logs and never rendered.
package errcode

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Error is a failure with a stable code. Code is snake_case and never changes once
// published; Message is a human sentence with no secrets or internal detail.
type Error struct {
	Code       string
	Status     int
	Message    string
	RetryAfter time.Duration // > 0 for 429 and 503: sent as Retry-After
	Cause      error         // logged, never sent
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Cause)
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Cause }

// New returns an *Error with the given code, status and message.
func New(status int, code, message string) *Error {
	return &Error{Code: code, Status: status, Message: message}
}

// Wrap returns an *Error that carries cause for the logs.
func Wrap(cause error, status int, code, message string) *Error {
	return &Error{Code: code, Status: status, Message: message, Cause: cause}
}

// WithRetryAfter returns a copy of e that asks the client to come back after d.
func (e *Error) WithRetryAfter(d time.Duration) *Error {
	c := *e
	c.RetryAfter = d
	return &c
}

// UnavailableRetryAfter is how long a device is told to wait when a dependency (storage,
// the queue, Key Vault) is down: long enough not to hammer it, short enough for a device
// loop.
const UnavailableRetryAfter = 5 * time.Second

// Unavailable is the 503 for a dependency that is down: service_unavailable with
// Retry-After, message for the device, cause kept for the log. Nothing was half-done.
func Unavailable(cause error, message string) *Error {
	return Wrap(cause, http.StatusServiceUnavailable, CodeUnavailable, message).WithRetryAfter(UnavailableRetryAfter)
}

// As returns the *Error in err's chain, or an internal_error that hides err.
func As(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: CodeInternal, Status: http.StatusInternalServerError,
		Message: "The service could not complete the request.", Cause: err}
}

// Stable codes shared by more than one package. Packages may define their own codes
// next to the code that returns them; every code is snake_case.
const (
	CodeInternal          = "internal_error"
	CodeUnavailable       = "service_unavailable"
	CodeBadRequest        = "bad_request"
	CodeMalformedJSON     = "malformed_json"
	CodeBodyTooLarge      = "body_too_large"
	CodeUnsupportedMedia  = "unsupported_media_type"
	CodeMethodNotAllowed  = "method_not_allowed"
	CodeNotFound          = "not_found"
	CodeOperationNotFound = "operation_not_found"
	CodeMissingCredential = "missing_credential"
	CodeInvalidCredential = "invalid_credential"
	CodeExpiredCredential = "expired_credential"
	CodeDeviceDisabled    = "device_disabled"
	CodeInvalidDeviceID   = "invalid_device_id"
	CodeTooManyRequests   = "too_many_registrations"
	CodeInvalidCSR        = "invalid_csr"
	CodeWeakKey           = "weak_key"
	CodeUnsupportedKey    = "unsupported_key"
)
