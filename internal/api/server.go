// Package api is the device-facing HTTP edge: the Krypton-compatible register and
// registration routes, reading every body through readJSON and ending every answer in
// renderJSON or renderError. It knows storage, queues and keys only through the small
// interfaces below.
package api

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/policy"
	"github.com/iotprov/iotprov/internal/queue"
	"github.com/iotprov/iotprov/internal/store"
)

// Paths of the device API (Krypton's).
const (
	RegisterPath      = "/v1/provisioning/azure/iot/register"
	RegistrationsPath = "/v1/provisioning/azure/iot/registrations/"
)

// Authenticator proves who a request comes from (auth.Chain).
type Authenticator interface {
	Authenticate(ctx context.Context, r *http.Request) (auth.Identity, error)
	Challenges() []string
}

// DeviceIDs turns an identity's subject into the device ID (auth.DeviceIDTemplate).
type DeviceIDs interface {
	DeviceID(subject string) (string, error)
}

// Admitter is the device policy (policy.Policy): whether a device may register now, and
// its own minimum interval if it has one. nil admits every device.
type Admitter interface {
	Admit(ctx context.Context, deviceID string) (policy.Admission, error)
}

// Operations is the part of the store the edge uses.
type Operations interface {
	GetCurrent(ctx context.Context, deviceID string) (*store.Current, error)
	CreateOperation(ctx context.Context, op *store.Operation, prev *store.Current) error
	GetOperation(ctx context.Context, deviceID, operationID string) (*store.Operation, error)
	UpdateOperation(ctx context.Context, op *store.Operation) error
}

// Enqueuer sends work to the provision function.
type Enqueuer interface {
	Enqueue(ctx context.Context, m queue.Message, delay time.Duration) error
}

// KeyOpener decrypts a sealed private key for the device that owns it.
type KeyOpener interface {
	Open(ctx context.Context, sealed []byte, operationID, deviceID string) ([]byte, error)
}

// Server serves the device API.
type Server struct {
	Auth      Authenticator
	DeviceIDs DeviceIDs
	Ops       Operations
	Queue     Enqueuer
	// Requeue sends an in-flight operation's queue message again, recording an attempt
	// first (the handler wires provision.Worker.Requeue, which the stalled-operation sweep
	// uses too); nil: a lost first message waits for that sweep.
	Requeue     func(ctx context.Context, op *store.Operation, stalledFor time.Duration) error
	Policy      Admitter // nil: no device policy
	Keys        KeyOpener
	RootCAPEM   string        // rootCaCertificate handed to devices
	MinInterval time.Duration // between two new registrations of one device
	RetryAfter  time.Duration // what a device is told to wait between polls (IOTPROV_POLL_INTERVAL)
	Now         func() time.Time
	NewID       func() string // operation IDs; random and unguessable
	Log         *slog.Logger
}

// Routes mounts the device API on mux. Methods are checked by the handlers so that a
// wrong method gets the API's JSON 405 rather than the mux's plain text.
func (s *Server) Routes(mux *http.ServeMux) {
	mux.HandleFunc(RegisterPath, s.handleRegister)
	mux.HandleFunc(RegistrationsPath+"{operationId}", s.handleRegistration)
}

// NotFound answers any other path with the API's JSON 404.
func (s *Server) NotFound(w http.ResponseWriter, r *http.Request) {
	s.renderError(w, r, errcode.New(http.StatusNotFound, errcode.CodeNotFound, "There is nothing at this path."))
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// unavailable is the answer when storage or the queue cannot be reached: the device
// retries later and nothing it sent is half-recorded.
func unavailable(cause error) error {
	return errcode.Unavailable(cause, "The service is temporarily unavailable; retry later.")
}

// authenticate runs the authenticators and maps the identity to its device ID.
func (s *Server) authenticate(r *http.Request) (auth.Identity, string, error) {
	id, err := s.Auth.Authenticate(r.Context(), r)
	if err != nil {
		return auth.Identity{}, "", err
	}
	deviceID, err := s.DeviceIDs.DeviceID(id.Subject)
	if err != nil {
		return auth.Identity{}, "", err
	}
	return id, deviceID, nil
}
