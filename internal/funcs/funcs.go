// Package funcs is the Azure Functions custom-handler envelope: it decodes the bodies the
// Functions host POSTs to /<functionName> for non-HTTP triggers (queue, timer) into typed
// values, writes the {"Outputs","Logs","ReturnValue"} answer, and builds invocation
// bodies in the host's real shape for the local runner that stands in for the host.
//
// The host is not consistent about encoding: scalar metadata usually arrives
// JSON-encoded a second time ("DequeueCount":"1", "Id":"\"4e77…\""), and a queue item may
// be an object, a JSON string holding the JSON, or a string of such a string. Every
// decoder here therefore unwraps strings defensively instead of trusting one shape.
package funcs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// maxUnwrap bounds how many string layers are peeled off a value. Real bodies have at
// most two; the bound keeps a hostile body from costing more than a few passes.
const maxUnwrap = 8

// envelope is the outer shape of every non-HTTP invocation.
type envelope struct {
	Data     map[string]json.RawMessage `json:"Data"`
	Metadata json.RawMessage            `json:"Metadata"`
}

func parseEnvelope(body []byte, binding string) (data json.RawMessage, meta map[string]json.RawMessage, err error) {
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, nil, fmt.Errorf("funcs: invocation body is not a JSON object: %w", err)
	}
	if env.Data == nil {
		return nil, nil, errors.New("funcs: invocation body has no Data")
	}
	raw, ok := env.Data[binding]
	if !ok {
		return nil, nil, fmt.Errorf("funcs: invocation Data has no binding %q", binding)
	}
	raw, ok = unwrap(raw)
	if !ok {
		return nil, nil, fmt.Errorf("funcs: invocation binding %q is nested too deeply", binding)
	}
	if isNull(raw) {
		return nil, nil, fmt.Errorf("funcs: invocation binding %q is null", binding)
	}
	meta = map[string]json.RawMessage{}
	m, ok := unwrap(env.Metadata)
	if !ok {
		return nil, nil, errors.New("funcs: invocation Metadata is nested too deeply")
	}
	if len(m) > 0 && !isNull(m) {
		if err := json.Unmarshal(m, &meta); err != nil {
			return nil, nil, fmt.Errorf("funcs: invocation Metadata is not an object: %w", err)
		}
	}
	return raw, meta, nil
}

// unwrap peels JSON-string layers off raw while the string's content is itself JSON,
// and returns the innermost JSON value. A string whose content is not JSON (plain text)
// is returned as that JSON string. ok is false when more than maxUnwrap layers remain.
func unwrap(raw json.RawMessage) (_ json.RawMessage, ok bool) {
	raw = bytes.TrimSpace(raw)
	for range maxUnwrap + 1 {
		if len(raw) == 0 || raw[0] != '"' {
			return raw, true
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return raw, true
		}
		inner := bytes.TrimSpace([]byte(s))
		if len(inner) == 0 || !json.Valid(inner) {
			return raw, true
		}
		raw = inner
	}
	return nil, false
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// scalarString returns a metadata scalar as plain text, whatever number of string
// layers it came in: `"x"`, `"\"x\""` and `1` give x, x and 1.
func scalarString(raw json.RawMessage) (string, bool) {
	raw, ok := unwrap(raw)
	if !ok || len(raw) == 0 || isNull(raw) {
		return "", false
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", false
		}
		return s, true
	}
	if raw[0] == '{' || raw[0] == '[' {
		return "", false
	}
	return string(raw), true
}
