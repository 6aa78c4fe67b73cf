// Package dpsemu emulates the device-registration API of the Azure IoT Hub Device
// Provisioning Service (DPS) for the local stack and for tests: X.509 attestation over
// mutual TLS against one enrollment group, the register PUT and operation-status GET
// with DPS's JSON shapes and error bodies, and knobs for what a real DPS does under load
// (a registration quota and a per-device poll limit answered with 429 + Retry-After,
// latency, injected 500/503 faults).
//
// It is a library so tests can run it in-process behind httptest; cmd/dpsemu serves it
// on a port for the local stack.
package dpsemu

import (
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/iotprov/iotprov/internal/pause"
)

// DPS errorCode values the emulator answers with. 401002 and 429001 are what DPS sends
// for a refused certificate and for throttling; the others follow DPS's pattern of the
// HTTP status followed by three digits.
const (
	ErrorCodeInvalidAPIVersion  = 400001
	ErrorCodeBadRequest         = 400004
	ErrorCodeUnauthorized       = 401002
	ErrorCodeNotFound           = 404001
	ErrorCodeOperationNotFound  = 404002
	ErrorCodeMethodNotAllowed   = 405001
	ErrorCodeThrottled          = 429001
	ErrorCodeInternal           = 500000
	ErrorCodeServiceUnavailable = 503000
)

// APIVersions are the api-version values the emulator accepts; DPS accepts these for the
// device API, and iotprov sends 2021-06-01.
var APIVersions = []string{"2019-03-31", "2021-06-01", "2021-10-01"}

const (
	quotaWindow     = time.Minute
	pollWindow      = 10 * time.Second
	maxRequestBytes = 64 << 10
	// enrollmentGroupID is the one enrollment group's name, reported in
	// registrationState.x509.
	enrollmentGroupID = "iotprov-emulator"
)

// Config configures the emulator.
type Config struct {
	IDScope        string         // e.g. "0ne00000000"; requests with another scope → 404
	AssignedHub    string         // "localhost" by default
	TrustedRoots   *x509.CertPool // the enrollment group's CA: client chains must verify to it
	QuotaPerMinute int            // registrations (PUTs) per rolling minute; 0 = unlimited; beyond → 429 + Retry-After, errorCode 429001
	PollLimit      int            // status GETs per device per 10 s; 0 = unlimited; beyond → 429
	FaultRate      float64        // 0..1: fraction of requests answered 500 or 503 (random, DPS-shaped error body)
	Latency        time.Duration  // added to every request
	// AssignDelay is how long an operation stays "assigning" after the PUT. The PUT
	// always answers "assigning"; with 0 the first poll sees the final state.
	AssignDelay time.Duration
	Now         func() time.Time // nil -> time.Now
	Rand        *mrand.Rand      // for FaultRate; nil -> seeded from crypto/rand

	// PollRetryAfter is the Retry-After sent with every "assigning" answer; DPS sends
	// a few seconds. 0 -> 1s; negative -> no header (the client's own pacing applies).
	PollRetryAfter time.Duration
	// Outcome, when set, decides how a registration ends: "" or "assigned" assigns,
	// "failed" or "disabled" ends the operation so, with errorCode and errorMessage.
	Outcome func(registrationID string) (status string, errorCode int, errorMessage string)
	// Logger, when set, gets one line per request (never a certificate).
	Logger *slog.Logger
}

// Stats counts what the emulator has done.
type Stats struct{ Registrations, Assigned, Throttled, Faults, Polls int64 }

// Server is the emulator. It is safe for concurrent use.
type Server struct {
	cfg Config

	mu        sync.Mutex
	rnd       *mrand.Rand
	putTimes  []time.Time            // accepted PUTs in the current quota window, oldest first
	pollTimes map[string][]time.Time // served status GETs per registration ID in the poll window
	ops       map[string]*operation  // by operation ID; kept for the life of the server
	devices   map[string]*device     // by registration ID, once assigned
	stats     Stats
}

type operation struct {
	id             string
	registrationID string
	created        time.Time
	cert           certificateInfo
	signer         *certificateInfo
	state          *registrationState // nil until the operation leaves "assigning"
}

type device struct {
	deviceID string
	created  time.Time
}

// New returns an emulator; zero values in cfg take the documented defaults.
func New(cfg Config) *Server {
	if cfg.AssignedHub == "" {
		cfg.AssignedHub = "localhost"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PollRetryAfter == 0 {
		cfg.PollRetryAfter = time.Second
	}
	rnd := cfg.Rand
	if rnd == nil {
		var seed [32]byte
		_, _ = rand.Read(seed[:])
		rnd = mrand.New(mrand.NewChaCha8(seed))
	}
	return &Server{
		cfg:       cfg,
		rnd:       rnd,
		pollTimes: map[string][]time.Time{},
		ops:       map[string]*operation{},
		devices:   map[string]*device{},
	}
}

// TLSConfig returns the server TLS config for mutual TLS. The handshake asks for any
// client certificate and verifies nothing: the handler verifies the chain against
// TrustedRoots, so a refused device gets DPS's JSON 401 rather than a TLS alert.
func (s *Server) TLSConfig(serverCert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAnyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Devices returns the registered devices (registrationId → assigned deviceId), for tests.
func (s *Server) Devices() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.devices))
	for id, d := range s.devices {
		out[id] = d.deviceID
	}
	return out
}

// Handler returns the HTTP handler serving the DPS device API.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

// answer is one response; every request ends in exactly one, written by write.
type answer struct {
	status         int
	body           any
	retryAfter     time.Duration
	registrationID string // for the log line
	errorCode      int    // for the log line
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	a := s.answer(r)
	write(w, a)
	if s.cfg.Logger != nil {
		s.cfg.Logger.LogAttrs(r.Context(), slog.LevelInfo, "dps request",
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", a.status),
			slog.String("registrationId", a.registrationID),
			slog.Int("errorCode", a.errorCode),
			slog.Duration("took", time.Since(start)))
	}
}

func (s *Server) answer(r *http.Request) answer {
	if s.cfg.Latency > 0 {
		if err := pause.For(r.Context(), s.cfg.Latency); err != nil {
			return s.fail(http.StatusServiceUnavailable, ErrorCodeServiceUnavailable, "Request cancelled.")
		}
	}
	if a, ok := s.fault(); ok {
		return a
	}

	rt, ok := parseRoute(r.URL.EscapedPath())
	if !ok {
		return s.fail(http.StatusNotFound, ErrorCodeNotFound, "The requested resource does not exist.")
	}
	var a answer
	switch {
	case rt.operationID == "" && r.Method != http.MethodPut,
		rt.operationID != "" && r.Method != http.MethodGet:
		a = s.fail(http.StatusMethodNotAllowed, ErrorCodeMethodNotAllowed, "The method is not allowed on this resource.")
	case !validAPIVersion(r.URL.Query().Get("api-version")):
		a = s.fail(http.StatusBadRequest, ErrorCodeInvalidAPIVersion, "The api-version query parameter is missing or not supported.")
	case rt.idScope != s.cfg.IDScope:
		a = s.fail(http.StatusNotFound, ErrorCodeNotFound, "The ID scope does not exist.")
	default:
		leaf, signer, err := s.authenticate(r, rt.registrationID)
		switch {
		case err != nil:
			a = s.fail(http.StatusUnauthorized, ErrorCodeUnauthorized, "Invalid certificate.")
		case rt.operationID == "":
			a = s.register(r, rt.registrationID, leaf, signer)
		default:
			a = s.status(rt.registrationID, rt.operationID)
		}
	}
	a.registrationID = rt.registrationID
	return a
}

// fault decides whether this request gets an injected 500 or 503.
func (s *Server) fault() (answer, bool) {
	if s.cfg.FaultRate <= 0 {
		return answer{}, false
	}
	s.mu.Lock()
	hit := s.rnd.Float64() < s.cfg.FaultRate
	unavailable := s.rnd.IntN(2) == 0
	if hit {
		s.stats.Faults++
	}
	s.mu.Unlock()
	if !hit {
		return answer{}, false
	}
	if unavailable {
		a := s.fail(http.StatusServiceUnavailable, ErrorCodeServiceUnavailable, "The service is temporarily unavailable.")
		a.retryAfter = time.Second
		return a, true
	}
	return s.fail(http.StatusInternalServerError, ErrorCodeInternal, "Internal server error."), true
}

type route struct{ idScope, registrationID, operationID string }

// parseRoute splits /<idScope>/registrations/<id>/register and
// /<idScope>/registrations/<id>/operations/<operationId>.
func parseRoute(escapedPath string) (route, bool) {
	parts := strings.Split(strings.TrimPrefix(escapedPath, "/"), "/")
	for i, p := range parts {
		u, err := url.PathUnescape(p)
		if err != nil || u == "" {
			return route{}, false
		}
		parts[i] = u
	}
	switch {
	case len(parts) == 4 && parts[1] == "registrations" && parts[3] == "register":
		return route{idScope: parts[0], registrationID: parts[2]}, true
	case len(parts) == 5 && parts[1] == "registrations" && parts[3] == "operations":
		return route{idScope: parts[0], registrationID: parts[2], operationID: parts[4]}, true
	}
	return route{}, false
}

func validAPIVersion(v string) bool {
	for _, ok := range APIVersions {
		if v == ok {
			return true
		}
	}
	return false
}

// authenticate is DPS's X.509 enrollment-group attestation: the chain the client sent
// must verify to the group's CA for client authentication, and the leaf's CN must be the
// registration ID.
func (s *Server) authenticate(r *http.Request, registrationID string) (*x509.Certificate, *x509.Certificate, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, nil, errors.New("no client certificate")
	}
	if s.cfg.TrustedRoots == nil {
		return nil, nil, errors.New("no enrollment group configured")
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         s.cfg.TrustedRoots,
		Intermediates: inter,
		CurrentTime:   s.cfg.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, nil, err
	}
	if leaf.Subject.CommonName != registrationID {
		return nil, nil, errors.New("certificate CN is not the registration ID")
	}
	var signer *x509.Certificate
	if len(chains) > 0 && len(chains[0]) > 1 {
		signer = chains[0][1]
	}
	return leaf, signer, nil
}

// registrationRequest is DPS's DeviceRegistration body.
type registrationRequest struct {
	RegistrationID string          `json:"registrationId"`
	Payload        json.RawMessage `json:"payload,omitempty"`
}

// parseRegistrationRequest decodes a register PUT body.
func parseRegistrationRequest(body []byte) (registrationRequest, error) {
	var req registrationRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return registrationRequest{}, err
	}
	if req.RegistrationID == "" {
		return registrationRequest{}, errors.New("registrationId is required")
	}
	return req, nil
}

func (s *Server) register(r *http.Request, registrationID string, leaf, signer *x509.Certificate) answer {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes+1))
	if err != nil || len(body) > maxRequestBytes {
		return s.fail(http.StatusBadRequest, ErrorCodeBadRequest, "The request body could not be read.")
	}
	req, err := parseRegistrationRequest(body)
	if err != nil {
		return s.fail(http.StatusBadRequest, ErrorCodeBadRequest, "The request body is not a valid device registration.")
	}
	if req.RegistrationID != registrationID {
		return s.fail(http.StatusBadRequest, ErrorCodeBadRequest, "The registrationId in the body does not match the request path.")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	if q := s.cfg.QuotaPerMinute; q > 0 {
		s.putTimes = prune(s.putTimes, now.Add(-quotaWindow))
		if len(s.putTimes) >= q {
			s.stats.Throttled++
			a := s.fail(http.StatusTooManyRequests, ErrorCodeThrottled, "Registration quota exceeded. Retry after the interval in Retry-After.")
			a.retryAfter = s.putTimes[0].Add(quotaWindow).Sub(now)
			return a
		}
		s.putTimes = append(s.putTimes, now)
	}
	op := &operation{
		id:             newOperationID(),
		registrationID: registrationID,
		created:        now,
		cert:           infoOf(leaf),
	}
	if signer != nil {
		ci := infoOf(signer)
		op.signer = &ci
	}
	s.ops[op.id] = op
	s.stats.Registrations++
	return answer{
		status:     http.StatusAccepted,
		body:       operationStatus{OperationID: op.id, Status: "assigning"},
		retryAfter: s.cfg.PollRetryAfter,
	}
}

func (s *Server) status(registrationID, operationID string) answer {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	s.stats.Polls++
	if lim := s.cfg.PollLimit; lim > 0 {
		times := prune(s.pollTimes[registrationID], now.Add(-pollWindow))
		if len(times) >= lim {
			s.pollTimes[registrationID] = times
			s.stats.Throttled++
			a := s.fail(http.StatusTooManyRequests, ErrorCodeThrottled, "Too many status requests for this device. Retry after the interval in Retry-After.")
			a.retryAfter = times[0].Add(pollWindow).Sub(now)
			return a
		}
		s.pollTimes[registrationID] = append(times, now)
	}
	op, ok := s.ops[operationID]
	// Another device's operation is as unknown as a made-up one.
	if !ok || op.registrationID != registrationID {
		return s.fail(http.StatusNotFound, ErrorCodeOperationNotFound, "The operation does not exist.")
	}
	if op.state == nil && now.Sub(op.created) < s.cfg.AssignDelay {
		return answer{
			status: http.StatusAccepted,
			body: operationStatus{OperationID: op.id, Status: "assigning",
				RegistrationState: &registrationState{RegistrationID: registrationID, Status: "assigning"}},
			retryAfter: s.cfg.PollRetryAfter,
		}
	}
	if op.state == nil {
		s.finish(op, now)
	}
	return answer{status: http.StatusOK, body: operationStatus{OperationID: op.id, Status: op.state.Status, RegistrationState: op.state}}
}

// finish decides the operation's outcome, once; callers hold s.mu.
func (s *Server) finish(op *operation, now time.Time) {
	status, code, msg := "assigned", 0, ""
	if s.cfg.Outcome != nil {
		if st, c, m := s.cfg.Outcome(op.registrationID); st != "" {
			status, code, msg = st, c, m
		}
	}
	st := &registrationState{
		RegistrationID:     op.registrationID,
		CreatedDateTimeUTC: utc(op.created),
		Status:             status,
		LastUpdatedUTC:     utc(now),
		ETag:               newETag(),
		X509: &x509Result{
			EnrollmentGroupID:      enrollmentGroupID,
			CertificateInfo:        &op.cert,
			SigningCertificateInfo: op.signer,
		},
	}
	if status != "assigned" {
		st.ErrorCode, st.ErrorMessage = code, msg
		op.state = st
		return
	}
	d, again := s.devices[op.registrationID]
	if !again {
		d = &device{deviceID: op.registrationID, created: now}
		s.devices[op.registrationID] = d
	}
	st.CreatedDateTimeUTC = utc(d.created)
	st.AssignedHub = s.cfg.AssignedHub
	st.DeviceID = d.deviceID
	st.Substatus = "initialAssignment"
	if again {
		st.Substatus = "reprovisionedToInitialAssignment"
	}
	op.state = st
	s.stats.Assigned++
}

// fail builds a DPS error answer.
func (s *Server) fail(status, code int, message string) answer {
	return answer{
		status:    status,
		errorCode: code,
		body: errorDetails{
			ErrorCode:    code,
			TrackingID:   uuid.NewString(),
			Message:      message,
			TimestampUTC: utc(s.cfg.Now()),
		},
	}
}

func write(w http.ResponseWriter, a answer) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	if a.retryAfter > 0 {
		// Whole seconds, rounded up: Retry-After cannot say less, and rounding down
		// would invite a retry that is refused again.
		h.Set("Retry-After", pause.FormatRetryAfter(a.retryAfter))
	}
	if a.errorCode != 0 {
		h.Set("x-ms-error-code", strconv.Itoa(a.errorCode))
	}
	w.WriteHeader(a.status)
	_ = json.NewEncoder(w).Encode(a.body)
}

// prune drops times at or before cutoff from a slice sorted oldest first: a slot frees
// exactly when the Retry-After that announced it runs out.
func prune(times []time.Time, cutoff time.Time) []time.Time {
	i := 0
	for i < len(times) && !times[i].After(cutoff) {
		i++
	}
	return append(times[:0], times[i:]...)
}

// newOperationID mimics DPS's "4.<16 hex>.<uuid>" operation IDs.
func newOperationID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "4." + hex.EncodeToString(b[:]) + "." + uuid.NewString()
}

func newETag() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return `"` + hex.EncodeToString(b[:]) + `"`
}

func utc(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func infoOf(c *x509.Certificate) certificateInfo {
	s1 := sha1.Sum(c.Raw)
	s256 := sha256.Sum256(c.Raw)
	return certificateInfo{
		SubjectName:      c.Subject.String(),
		SHA1Thumbprint:   strings.ToUpper(hex.EncodeToString(s1[:])),
		SHA256Thumbprint: strings.ToUpper(hex.EncodeToString(s256[:])),
		IssuerName:       c.Issuer.String(),
		NotBeforeUTC:     utc(c.NotBefore),
		NotAfterUTC:      utc(c.NotAfter),
		SerialNumber:     strings.ToUpper(fmt.Sprintf("%X", c.SerialNumber)),
		Version:          c.Version,
	}
}

// Wire shapes, as DPS's REST API names them.

type operationStatus struct {
	OperationID       string             `json:"operationId"`
	Status            string             `json:"status"`
	RegistrationState *registrationState `json:"registrationState,omitempty"`
}

type registrationState struct {
	X509               *x509Result `json:"x509,omitempty"`
	RegistrationID     string      `json:"registrationId"`
	CreatedDateTimeUTC string      `json:"createdDateTimeUtc,omitempty"`
	AssignedHub        string      `json:"assignedHub,omitempty"`
	DeviceID           string      `json:"deviceId,omitempty"`
	Status             string      `json:"status"`
	Substatus          string      `json:"substatus,omitempty"`
	ErrorCode          int         `json:"errorCode,omitempty"`
	ErrorMessage       string      `json:"errorMessage,omitempty"`
	LastUpdatedUTC     string      `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag               string      `json:"etag,omitempty"`
}

type x509Result struct {
	CertificateInfo        *certificateInfo `json:"certificateInfo,omitempty"`
	EnrollmentGroupID      string           `json:"enrollmentGroupId,omitempty"`
	SigningCertificateInfo *certificateInfo `json:"signingCertificateInfo,omitempty"`
}

type certificateInfo struct {
	SubjectName      string `json:"subjectName"`
	SHA1Thumbprint   string `json:"sha1Thumbprint"`
	SHA256Thumbprint string `json:"sha256Thumbprint"`
	IssuerName       string `json:"issuerName"`
	NotBeforeUTC     string `json:"notBeforeUtc"`
	NotAfterUTC      string `json:"notAfterUtc"`
	SerialNumber     string `json:"serialNumber"`
	Version          int    `json:"version"`
}

type errorDetails struct {
	ErrorCode    int    `json:"errorCode"`
	TrackingID   string `json:"trackingId"`
	Message      string `json:"message"`
	TimestampUTC string `json:"timestampUtc"`
}
