package funcs

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// QueueMetadata is what the local runner knows about a dequeued message.
type QueueMetadata struct {
	DequeueCount                                   int64
	ID, PopReceipt                                 string
	InsertionTime, ExpirationTime, NextVisibleTime time.Time
	// MethodName is the function name sent as sys.MethodName; optional.
	MethodName string
}

// hostTimeLayout is .NET's round-trip format as the host prints a DateTimeOffset
// ("2026-11-28T10:00:00+00:00", up to 7 fractional digits).
const hostTimeLayout = "2006-01-02T15:04:05.9999999-07:00"

// doubleEncoded returns v JSON-encoded and then wrapped as a JSON string, the way the
// host sends scalar metadata.
func doubleEncoded(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func sysMetadata(methodName string) map[string]any {
	return map[string]any{
		"MethodName": methodName,
		"UtcNow":     time.Now().UTC().Format(hostTimeLayout),
		"RandGuid":   uuid.NewString(),
	}
}

// NewQueueInvocation builds a queue invocation body in the host's real shape: the item as
// a JSON string holding messageText, scalars double-encoded, sys{...} included. Zero
// times are left out.
func NewQueueInvocation(binding string, messageText []byte, meta QueueMetadata) []byte {
	md := map[string]any{
		"DequeueCount": strconv.FormatInt(meta.DequeueCount, 10),
		"Id":           doubleEncoded(meta.ID),
		"PopReceipt":   doubleEncoded(meta.PopReceipt),
		"sys":          sysMetadata(meta.MethodName),
	}
	for name, t := range map[string]time.Time{
		"InsertionTime":   meta.InsertionTime,
		"ExpirationTime":  meta.ExpirationTime,
		"NextVisibleTime": meta.NextVisibleTime,
	} {
		if !t.IsZero() {
			md[name] = doubleEncoded(t.Format(hostTimeLayout))
		}
	}
	body, _ := json.Marshal(map[string]any{
		"Data":     map[string]any{binding: string(messageText)},
		"Metadata": md,
	})
	return body
}

// NewTimerInvocation builds a timer invocation body in the host's shape.
func NewTimerInvocation(binding string, isPastDue bool) []byte {
	body, _ := json.Marshal(map[string]any{
		"Data": map[string]any{binding: map[string]any{
			"Schedule":       map[string]any{"AdjustForDST": true},
			"ScheduleStatus": nil,
			"IsPastDue":      isPastDue,
		}},
		"Metadata": map[string]any{"sys": sysMetadata(binding)},
	})
	return body
}
