package funcs

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// TimerTrigger is a decoded timer invocation.
type TimerTrigger struct{ IsPastDue bool }

// ParseTimerTrigger decodes a timer invocation body for the named binding (e.g. "timer").
// The timer value may arrive as an object or as a string holding it.
func ParseTimerTrigger(body []byte, binding string) (*TimerTrigger, error) {
	data, _, err := parseEnvelope(body, binding)
	if err != nil {
		return nil, err
	}
	var timer struct {
		IsPastDue json.RawMessage `json:"IsPastDue"`
	}
	if len(data) == 0 || data[0] != '{' {
		return nil, fmt.Errorf("funcs: timer binding %q is not an object", binding)
	}
	if err := json.Unmarshal(data, &timer); err != nil {
		return nil, fmt.Errorf("funcs: timer binding %q: %w", binding, err)
	}
	t := &TimerTrigger{}
	if len(timer.IsPastDue) > 0 {
		s, ok := scalarString(timer.IsPastDue)
		if !ok {
			return nil, fmt.Errorf("funcs: timer IsPastDue is not a boolean")
		}
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("funcs: timer IsPastDue is not a boolean: %w", err)
		}
		t.IsPastDue = b
	}
	return t, nil
}
