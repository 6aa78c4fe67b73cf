package dps

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Bounds on what we keep from a DPS answer: everything here ends up in operation records
// and log lines, and the answer is untrusted input.
const (
	maxIDLen      = 1024
	maxMessageLen = 512
	// maxRetryAfter caps a Retry-After so a bad header cannot park work for days.
	maxRetryAfter = time.Hour
)

// wireOperation is DPS's RegistrationOperationStatus.
type wireOperation struct {
	OperationID       string     `json:"operationId"`
	Status            string     `json:"status"`
	RegistrationState *wireState `json:"registrationState"`
}

// wireState is DPS's DeviceRegistrationResult, the fields we use.
type wireState struct {
	RegistrationID string  `json:"registrationId"`
	AssignedHub    string  `json:"assignedHub"`
	DeviceID       string  `json:"deviceId"`
	Status         string  `json:"status"`
	Substatus      string  `json:"substatus"`
	ErrorCode      flexInt `json:"errorCode"`
	ErrorMessage   string  `json:"errorMessage"`
}

// wireError is DPS's ProvisioningServiceErrorDetails.
type wireError struct {
	ErrorCode  flexInt `json:"errorCode"`
	TrackingID string  `json:"trackingId"`
	Message    string  `json:"message"`
}

// flexInt accepts a JSON number or a number in a string, and leaves 0 for anything
// else: an odd errorCode must not hide the rest of an error answer.
type flexInt int

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(bytes.TrimSpace(b)), `"`)
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		*f = 0
		return nil
	}
	*f = flexInt(n)
	return nil
}

// parseOperation decodes a 200/202 answer to a register PUT or status GET.
func parseOperation(body []byte) (*Operation, error) {
	var w wireOperation
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("decoding operation: %w", err)
	}
	if w.OperationID == "" {
		return nil, errors.New("operation has no operationId")
	}
	if len(w.OperationID) > maxIDLen || !printable(w.OperationID) {
		return nil, errors.New("operationId is not a plausible identifier")
	}
	op := &Operation{OperationID: w.OperationID, Status: strings.ToLower(w.Status)}
	switch op.Status {
	case StatusAssigning:
		return op, nil
	case StatusAssigned, StatusFailed, StatusDisabled:
	default:
		return nil, fmt.Errorf("unknown operation status %q", clean(w.Status, 32))
	}
	if w.RegistrationState != nil {
		s := w.RegistrationState
		op.State = &RegistrationState{
			RegistrationID: clean(s.RegistrationID, maxIDLen),
			AssignedHub:    clean(s.AssignedHub, maxIDLen),
			DeviceID:       clean(s.DeviceID, maxIDLen),
			Status:         clean(strings.ToLower(s.Status), 64),
			Substatus:      clean(s.Substatus, 64),
			ErrorCode:      int(s.ErrorCode),
			ErrorMessage:   clean(s.ErrorMessage, maxMessageLen),
		}
	}
	if op.Status == StatusAssigned {
		// An assignment without a hub and a device ID is useless to a device.
		if op.State == nil || op.State.AssignedHub == "" || op.State.DeviceID == "" {
			return nil, errors.New("assigned operation lacks assignedHub or deviceId")
		}
	}
	return op, nil
}

// parseErrorBody extracts DPS's error fields from an error answer. Anything that is not
// a DPS error body (an HTML page from a proxy, say) gives zero values.
func parseErrorBody(body []byte) (code int, message, trackingID string) {
	var w wireError
	if err := json.Unmarshal(body, &w); err != nil {
		return 0, "", ""
	}
	return int(w.ErrorCode), clean(w.Message, maxMessageLen), clean(w.TrackingID, 128)
}

// clean truncates s to n bytes (on a rune boundary) and drops control characters, so a
// DPS string is safe to put in a record or a log line.
func clean(s string, n int) string {
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "")
	}
	if printable(s) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
}

func printable(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}
