package funcs

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// QueueTrigger is a decoded queue invocation.
type QueueTrigger struct {
	Item                                           json.RawMessage // the message itself, unwrapped to the innermost JSON value (an object for our messages)
	DequeueCount                                   int64
	ID, PopReceipt                                 string
	InsertionTime, ExpirationTime, NextVisibleTime time.Time
}

// ParseQueueTrigger decodes an invocation body for the named binding (e.g. "message"),
// accepting every shape above (fuzz it). Missing binding → error.
//
// DequeueCount is required, because the worker decides on poison handling with it; the
// times are informational, so one in a format we do not know is left zero rather than
// failing the invocation (which would make the host retry a message that can never
// succeed).
func ParseQueueTrigger(body []byte, binding string) (*QueueTrigger, error) {
	item, meta, err := parseEnvelope(body, binding)
	if err != nil {
		return nil, err
	}
	q := &QueueTrigger{Item: item}

	raw, ok := meta["DequeueCount"]
	if !ok {
		return nil, errors.New("funcs: queue metadata has no DequeueCount")
	}
	s, ok := scalarString(raw)
	if !ok {
		return nil, errors.New("funcs: queue metadata DequeueCount is not a scalar")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("funcs: queue metadata DequeueCount is not an integer: %w", err)
	}
	if n < 0 {
		return nil, fmt.Errorf("funcs: queue metadata DequeueCount is negative (%d)", n)
	}
	q.DequeueCount = n

	q.ID, _ = scalarString(meta["Id"])
	q.PopReceipt, _ = scalarString(meta["PopReceipt"])
	q.InsertionTime = metaTime(meta["InsertionTime"])
	q.ExpirationTime = metaTime(meta["ExpirationTime"])
	q.NextVisibleTime = metaTime(meta["NextVisibleTime"])
	return q, nil
}

// timeLayouts are the forms the host has been seen to use: .NET's round-trip "o" format
// (RFC 3339 with up to 7 fractional digits, "+00:00" or "Z") and its "G"-like invariant
// form for DateTimeOffset.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.9999999",
	"01/02/2006 15:04:05 -07:00",
}

func metaTime(raw json.RawMessage) time.Time {
	s, ok := scalarString(raw)
	if !ok {
		return time.Time{}
	}
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t
		}
	}
	return time.Time{}
}
