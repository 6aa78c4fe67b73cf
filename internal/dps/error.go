package dps

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Error is any failure talking to DPS.
type Error struct {
	StatusCode int           // HTTP status, 0 for network errors
	ErrorCode  int           // DPS errorCode (e.g. 401002, 429001), 0 if none
	Message    string        // DPS message (safe to record), or a short description
	TrackingID string        // DPS trackingId, for a support ticket
	RetryAfter time.Duration // from Retry-After, 0 if none

	// permanent marks failures no retry can fix that carry no HTTP error status: bad
	// arguments, and operations that ended failed or disabled.
	permanent bool
	cause     error // network or decoding error, for the logs
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("dps: ")
	if e.StatusCode != 0 && e.StatusCode != http.StatusOK && e.StatusCode != http.StatusAccepted {
		fmt.Fprintf(&b, "HTTP %d: ", e.StatusCode)
	}
	b.WriteString(e.Message)
	if e.ErrorCode != 0 {
		fmt.Fprintf(&b, " (errorCode %d)", e.ErrorCode)
	}
	if e.TrackingID != "" {
		fmt.Fprintf(&b, " (trackingId %s)", e.TrackingID)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	if e.cause != nil {
		fmt.Fprintf(&b, ": %v", e.cause)
	}
	return b.String()
}

// Unwrap returns the network or decoding error behind e, if any.
func (e *Error) Unwrap() error { return e.cause }

// Transient: network errors, 429, 5xx (and 408). Permanent otherwise (400/401/403/404,
// status failed/disabled).
func (e *Error) Transient() bool {
	if e.permanent {
		return false
	}
	switch {
	case e.StatusCode == 0:
		return true
	case e.StatusCode == http.StatusRequestTimeout, e.StatusCode == http.StatusTooManyRequests:
		return true
	case e.StatusCode >= 500 && e.StatusCode <= 599:
		return true
	}
	return false
}
