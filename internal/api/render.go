package api

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/pause"
)

// maxBodyBytes is DESIGN.md's limit on a register body.
const maxBodyBytes = 16 << 10

// errorBody is the one error shape of the device API.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// renderJSON writes v as the JSON body with status. Every answer of the device API ends
// here or in renderError.
func renderJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// renderError maps err to its status and stable code. The cause is logged; only the code
// and the safe message reach the device.
func (s *Server) renderError(w http.ResponseWriter, r *http.Request, err error) {
	e := errcode.As(err)
	log := s.log(r)
	if e.Status >= 500 {
		log.Error("request failed", "code", e.Code, "status", e.Status, "err", e.Cause)
	} else {
		log.Info("request refused", "code", e.Code, "status", e.Status, "err", e.Cause)
	}
	if e.RetryAfter > 0 {
		setRetryAfter(w, e.RetryAfter)
	}
	if e.Status == http.StatusUnauthorized && s.Auth != nil {
		for _, c := range s.Auth.Challenges() {
			w.Header().Add("WWW-Authenticate", c)
		}
	}
	renderJSON(w, e.Status, errorBody{Error: errorDetail{Code: e.Code, Message: e.Message}})
}

// setRetryAfter writes whole seconds, rounded up so a client never comes back early.
func setRetryAfter(w http.ResponseWriter, d time.Duration) {
	w.Header().Set("Retry-After", pause.FormatRetryAfter(d))
}

// readJSON reads an optional JSON object body into v (an empty body leaves v as it is).
// Limits, media type and syntax errors are *errcode.Error.
func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if r.ContentLength > maxBodyBytes {
		return errcode.New(http.StatusRequestEntityTooLarge, errcode.CodeBodyTooLarge,
			"The request body is larger than 16 KiB.")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return errcode.New(http.StatusRequestEntityTooLarge, errcode.CodeBodyTooLarge,
				"The request body is larger than 16 KiB.")
		}
		return errcode.Wrap(err, http.StatusBadRequest, errcode.CodeBadRequest, "The request body could not be read.")
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return errcode.New(http.StatusUnsupportedMediaType, errcode.CodeUnsupportedMedia,
				"The request body must be application/json.")
		}
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	if err := dec.Decode(v); err != nil {
		return errcode.Wrap(err, http.StatusBadRequest, errcode.CodeMalformedJSON,
			"The request body is not a valid JSON object.")
	}
	if dec.More() {
		return errcode.New(http.StatusBadRequest, errcode.CodeMalformedJSON,
			"The request body must hold exactly one JSON object.")
	}
	return nil
}

// methodNotAllowed answers 405 with the Allow header.
func (s *Server) methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	s.renderError(w, r, errcode.New(http.StatusMethodNotAllowed, errcode.CodeMethodNotAllowed,
		"This path accepts "+allow+" only."))
}

func (s *Server) log(r *http.Request) *slog.Logger {
	l := s.Log
	if l == nil {
		l = slog.Default()
	}
	return l.With("method", r.Method, "path", r.URL.Path)
}
