package funcs

import (
	"encoding/json"
	"log/slog"
	"net/http"
)

// InvocationResult is the answer to the host.
type InvocationResult struct {
	Outputs     map[string]any `json:"Outputs"`
	Logs        []string       `json:"Logs"`
	ReturnValue any            `json:"ReturnValue"`
}

// WriteResult writes res as the host expects it, with Outputs and Logs never null (the
// host's deserializer is happier with empty collections). A non-2xx status tells the
// host the invocation failed, so it retries the message.
func WriteResult(w http.ResponseWriter, status int, res InvocationResult) {
	if res.Outputs == nil {
		res.Outputs = map[string]any{}
	}
	if res.Logs == nil {
		res.Logs = []string{}
	}
	body, err := json.Marshal(res)
	if err != nil {
		// An output that cannot be encoded is a bug in the function; fail the invocation
		// so the host retries instead of silently dropping the outputs.
		slog.Error("funcs: cannot encode invocation result", "err", err)
		status = http.StatusInternalServerError
		body = []byte(`{"Outputs":{},"Logs":["invocation result could not be encoded"],"ReturnValue":null}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
