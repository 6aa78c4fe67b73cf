package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/keyseal"
	"github.com/iotprov/iotprov/internal/queue"
	"github.com/iotprov/iotprov/internal/store"
)

// fakeAuth authenticates "Authorization: Test <method>:<subject>".
type fakeAuth struct{}

var _ Authenticator = fakeAuth{}

func (fakeAuth) Authenticate(_ context.Context, r *http.Request) (auth.Identity, error) {
	h, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Test ")
	if !ok {
		return auth.Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeMissingCredential, "No credential.")
	}
	m, s, _ := strings.Cut(h, ":")
	return auth.Identity{Method: m, Subject: s}, nil
}

func (fakeAuth) Challenges() []string { return []string{"Test"} }

type plainIDs struct{}

func (plainIDs) DeviceID(s string) (string, error) { return s, nil }

// fakeOps is an in-memory Operations with ETags; err fields simulate an outage.
type fakeOps struct {
	mu        sync.Mutex
	ops       map[string]store.Operation
	current   map[string]store.Current
	n         int
	getErr    error // storage down: reads and writes fail with it
	createErr func() error
}

var _ Operations = (*fakeOps)(nil)

func newFakeOps() *fakeOps {
	return &fakeOps{ops: map[string]store.Operation{}, current: map[string]store.Current{}}
}

func (f *fakeOps) GetCurrent(_ context.Context, dev string) (*store.Current, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.getErr != nil {
		return nil, f.getErr
	}
	c, ok := f.current[dev]
	if !ok {
		return nil, store.ErrNotFound
	}
	return &c, nil
}

func (f *fakeOps) CreateOperation(_ context.Context, op *store.Operation, prev *store.Current) error {
	if f.createErr != nil {
		if err := f.createErr(); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.getErr != nil {
		return f.getErr
	}
	cur, ok := f.current[op.DeviceID]
	if ok != (prev != nil) || (ok && cur.ETag != prev.ETag) {
		// As the store does: the link as read after the conflict comes with it.
		if ok {
			return &store.ConflictError{Current: &cur}
		}
		return store.ErrConflict
	}
	f.n++
	op.ETag = strconv.Itoa(f.n)
	op.UpdatedAt = op.CreatedAt // as the store does (it writes now)
	f.ops[op.DeviceID+"/"+op.ID] = *op
	f.current[op.DeviceID] = store.Current{DeviceID: op.DeviceID, OperationID: op.ID, CreatedAt: op.CreatedAt, ETag: op.ETag}
	return nil
}

func (f *fakeOps) GetOperation(_ context.Context, dev, id string) (*store.Operation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.getErr != nil {
		return nil, f.getErr
	}
	op, ok := f.ops[dev+"/"+id]
	if !ok {
		return nil, store.ErrNotFound
	}
	return &op, nil
}

func (f *fakeOps) UpdateOperation(_ context.Context, op *store.Operation) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	op.ETag = strconv.Itoa(f.n)
	f.ops[op.DeviceID+"/"+op.ID] = *op
	return nil
}

type fakeQueue struct {
	err  error
	sent []queue.Message
}

func (q *fakeQueue) Enqueue(_ context.Context, m queue.Message, _ time.Duration) error {
	if q.err != nil {
		return q.err
	}
	q.sent = append(q.sent, m)
	return nil
}

type fakeKeys struct{}

// Open opens "sealed:KEY"; "rotated:…" fails as keyseal does for a blob sealed under
// another data key, "keyvault-down:…" as a data key that cannot be read now.
func (fakeKeys) Open(_ context.Context, sealed []byte, _, _ string) ([]byte, error) {
	switch s := string(sealed); {
	case strings.HasPrefix(s, "rotated:"):
		return nil, keyseal.ErrOpen
	case strings.HasPrefix(s, "keyvault-down:"):
		return nil, errors.New("data key: vault unreachable")
	default:
		return []byte(strings.TrimPrefix(s, "sealed:")), nil
	}
}

func newServer(ops *fakeOps, q *fakeQueue) (*Server, *http.ServeMux) {
	n := 0
	s := &Server{Auth: fakeAuth{}, DeviceIDs: plainIDs{}, Ops: ops, Queue: q, Keys: fakeKeys{},
		RootCAPEM: "ROOTS", MinInterval: time.Minute, RetryAfter: time.Second,
		NewID: func() string { n++; return "0000000" + strconv.Itoa(n) }, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	// What provision.Worker.Requeue does, on the fakes: record the attempt, then send.
	s.Requeue = func(ctx context.Context, op *store.Operation, _ time.Duration) error {
		op.Attempts++
		if err := ops.UpdateOperation(ctx, op); err != nil {
			return err
		}
		return q.Enqueue(ctx, queue.Message{OperationID: op.ID, DeviceID: op.DeviceID}, 0)
	}
	mux := http.NewServeMux()
	s.Routes(mux)
	mux.HandleFunc("/", s.NotFound)
	return s, mux
}

func call(t *testing.T, h http.Handler, method, path, authz, ct, body string) (*httptest.ResponseRecorder, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatalf("%s %s: not JSON: %q", method, path, rec.Body.String())
	}
	return rec, m
}

func errCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func TestRegisterAndPoll(t *testing.T) {
	ops, q := newFakeOps(), &fakeQueue{}
	_, mux := newServer(ops, q)
	rec, body := call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", "")
	if rec.Code != 202 || body["status"] != "assigning" || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("register: %d %v %v", rec.Code, body, rec.Header())
	}
	id := body["operationId"].(string)
	if rec.Header().Get("Location") != RegistrationsPath+id || len(q.sent) != 1 || q.sent[0] != (queue.Message{OperationID: id, DeviceID: "dev1"}) {
		t.Fatalf("location %q, queue %+v", rec.Header().Get("Location"), q.sent)
	}
	// In flight: the same operation again, nothing enqueued twice.
	_, again := call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", "")
	if again["operationId"] != id || len(q.sent) != 1 {
		t.Fatalf("second register: %v, queue %d", again, len(q.sent))
	}
	rec, body = call(t, mux, "GET", RegistrationsPath+id, "Test sas:dev1", "", "")
	if rec.Code != 202 || body["status"] != "assigning" || rec.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("poll in flight: %d %v", rec.Code, body)
	}
	// The same device ID reached with another method is not the creator.
	if rec, body = call(t, mux, "GET", RegistrationsPath+id, "Test jwt:dev1", "", ""); rec.Code != 404 || errCode(body) != "operation_not_found" {
		t.Fatalf("other identity: %d %v", rec.Code, body)
	}

	op, _ := ops.GetOperation(context.Background(), "dev1", id)
	op.Status, op.Host, op.AssignedDeviceID, op.CertificatePEM, op.SealedKey = store.StatusAssigned, "hub", "dev1", "CERT", []byte("sealed:KEY")
	_ = ops.UpdateOperation(context.Background(), op)
	rec, body = call(t, mux, "GET", RegistrationsPath+id, "Test sas:dev1", "", "")
	want := map[string]any{"operationId": id, "status": "assigned", "deviceId": "dev1", "host": "hub",
		"certificate": "CERT", "privateKey": "KEY", "rootCaCertificate": "ROOTS"}
	if rec.Code != 200 || len(body) != len(want) {
		t.Fatalf("assigned: %d %v", rec.Code, body)
	}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("%s = %v, want %v", k, body[k], v)
		}
	}
	// Finished and within the minimum interval: 429 with Retry-After.
	if rec, body = call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", ""); rec.Code != 429 || errCode(body) != errcode.CodeTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("re-register: %d %v", rec.Code, body)
	}
	// Key erased after retention: 410, no key.
	op.SealedKey = nil
	_ = ops.UpdateOperation(context.Background(), op)
	if rec, body = call(t, mux, "GET", RegistrationsPath+id, "Test sas:dev1", "", ""); rec.Code != 410 || errCode(body) != CodeCredentialsExpired {
		t.Fatalf("erased: %d %v", rec.Code, body)
	}
	// Sealed under a data key that is no longer current: no retry opens it, so 410 too.
	op.SealedKey = []byte("rotated:KEY")
	_ = ops.UpdateOperation(context.Background(), op)
	if rec, body = call(t, mux, "GET", RegistrationsPath+id, "Test sas:dev1", "", ""); rec.Code != 410 || errCode(body) != CodeCredentialsExpired {
		t.Fatalf("unopenable key: %d %v", rec.Code, body)
	}
	// The data key cannot be read just now: 503, worth a retry.
	op.SealedKey = []byte("keyvault-down:KEY")
	_ = ops.UpdateOperation(context.Background(), op)
	if rec, body = call(t, mux, "GET", RegistrationsPath+id, "Test sas:dev1", "", ""); rec.Code != 503 || errCode(body) != errcode.CodeUnavailable {
		t.Fatalf("data key unavailable: %d %v", rec.Code, body)
	}
	// Failed operation.
	op.Status, op.ErrorCode, op.ErrorMessage = store.StatusFailed, "dps_registration_failed", "refused"
	_ = ops.UpdateOperation(context.Background(), op)
	rec, body = call(t, mux, "GET", RegistrationsPath+id, "Test sas:dev1", "", "")
	if rec.Code != 200 || body["status"] != "failed" || errCode(body) != "dps_registration_failed" {
		t.Fatalf("failed: %d %v", rec.Code, body)
	}
}

func TestRegisterFailures(t *testing.T) {
	down := errors.New("connection refused")
	tests := []struct {
		name   string
		setup  func(*fakeOps, *fakeQueue)
		status int
		code   string
		check  func(t *testing.T, ops *fakeOps)
	}{
		{"fail/storage-down", func(o *fakeOps, _ *fakeQueue) { o.getErr = down }, 503, errcode.CodeUnavailable, nil},
		{"fail/queue-down-operation-abandoned", func(_ *fakeOps, q *fakeQueue) { q.err = down }, 503, errcode.CodeUnavailable,
			func(t *testing.T, ops *fakeOps) {
				for _, op := range ops.ops {
					if op.Status != store.StatusFailed {
						t.Errorf("unqueued operation left %s: the device would wait forever", op.Status)
					}
				}
				if len(ops.ops) != 1 {
					t.Errorf("%d operations", len(ops.ops))
				}
			}},
		{"fail/lost-race-too-often", func(o *fakeOps, _ *fakeQueue) { o.createErr = func() error { return store.ErrConflict } }, 503, errcode.CodeUnavailable, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ops, q := newFakeOps(), &fakeQueue{}
			tc.setup(ops, q)
			_, mux := newServer(ops, q)
			rec, body := call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", "")
			if rec.Code != tc.status || errCode(body) != tc.code || rec.Header().Get("Retry-After") == "" {
				t.Fatalf("got %d %v", rec.Code, body)
			}
			if tc.check != nil {
				tc.check(t, ops)
			}
		})
	}
}

func TestRegisterLosesRaceReturnsWinner(t *testing.T) {
	ops, q := newFakeOps(), &fakeQueue{}
	first := true
	ops.createErr = func() error {
		if first {
			first = false
			// A concurrent register of the same device commits between our read and write.
			w := &store.Operation{ID: "winner", DeviceID: "dev1", Identity: "sas:dev1", Status: store.StatusQueued, CreatedAt: time.Now(), UpdatedAt: time.Now()}
			ops.createErr = nil
			if err := ops.CreateOperation(context.Background(), w, nil); err != nil {
				t.Fatal(err)
			}
			return store.ErrConflict
		}
		return nil
	}
	_, mux := newServer(ops, q)
	rec, body := call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", "")
	if rec.Code != 202 || body["operationId"] != "winner" || len(q.sent) != 0 {
		t.Fatalf("got %d %v, queued %d", rec.Code, body, len(q.sent))
	}
}

func TestRequestErrors(t *testing.T) {
	tests := []struct {
		name, method, path, authz, ct, body string
		status                              int
		code                                string
	}{
		{"fail/no-credential", "POST", RegisterPath, "", "", "", 401, errcode.CodeMissingCredential},
		{"fail/malformed-json", "POST", RegisterPath, "Test sas:d", "application/json", `{"csr":`, 400, errcode.CodeMalformedJSON},
		{"fail/two-objects", "POST", RegisterPath, "Test sas:d", "application/json", `{}{}`, 400, errcode.CodeMalformedJSON},
		{"fail/not-an-object", "POST", RegisterPath, "Test sas:d", "application/json", `[1]`, 400, errcode.CodeMalformedJSON},
		{"fail/bad-csr", "POST", RegisterPath, "Test sas:d", "application/json", `{"csr":"x"}`, 400, errcode.CodeInvalidCSR},
		{"fail/media-type", "POST", RegisterPath, "Test sas:d", "text/plain", `x`, 415, errcode.CodeUnsupportedMedia},
		{"fail/too-large", "POST", RegisterPath, "Test sas:d", "application/json", strings.Repeat(" ", 16<<10+1), 413, errcode.CodeBodyTooLarge},
		{"fail/method-register", "PUT", RegisterPath, "Test sas:d", "", "", 405, errcode.CodeMethodNotAllowed},
		{"fail/method-registration", "DELETE", RegistrationsPath + "abc", "Test sas:d", "", "", 405, errcode.CodeMethodNotAllowed},
		{"fail/bad-operation-id", "GET", RegistrationsPath + "not-hex!", "Test sas:d", "", "", 404, errcode.CodeOperationNotFound},
		{"fail/unknown-path", "GET", "/v2/x", "", "", "", 404, errcode.CodeNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ops := newFakeOps()
			_, mux := newServer(ops, &fakeQueue{})
			rec, body := call(t, mux, tc.method, tc.path, tc.authz, tc.ct, tc.body)
			if rec.Code != tc.status || errCode(body) != tc.code {
				t.Fatalf("got %d %v, want %d %s", rec.Code, body, tc.status, tc.code)
			}
			if tc.status == 401 && rec.Header().Get("WWW-Authenticate") != "Test" {
				t.Error("401 without WWW-Authenticate")
			}
			if tc.status == 405 && rec.Header().Get("Allow") == "" {
				t.Error("405 without Allow")
			}
			if len(ops.ops) != 0 {
				t.Error("a refused request created an operation")
			}
		})
	}
}

// A queued operation whose message was lost (handler died before enqueueing) is sent
// again when the device registers again; a fresh one is not.
func TestRegisterRequeuesStuckOperation(t *testing.T) {
	ops, q := newFakeOps(), &fakeQueue{}
	s, mux := newServer(ops, q)
	now := time.Now()
	s.Now = func() time.Time { return now }
	_, body := call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", "")
	id := body["operationId"].(string)
	call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", "")
	if len(q.sent) != 1 {
		t.Fatalf("fresh in-flight operation re-queued: %d messages", len(q.sent))
	}
	now = now.Add(2 * stuckAfter)
	_, again := call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", "")
	if again["operationId"] != id || len(q.sent) != 2 || q.sent[1].OperationID != id {
		t.Fatalf("stuck operation not re-queued: %v, %+v", again, q.sent)
	}
	// The re-queue was an attempt: the operation has a message on its way now, and a
	// register a minute later does not send a third one.
	now = now.Add(2 * stuckAfter)
	call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", "")
	if len(q.sent) != 2 {
		t.Fatalf("an operation already re-queued (attempted) was sent again: %d messages", len(q.sent))
	}
}

// An operation the service abandoned (could not queue) does not count against the
// device's minimum interval: the device was told to register again.
func TestRegisterAfterAbandonedIsNotThrottled(t *testing.T) {
	ops, q := newFakeOps(), &fakeQueue{err: errors.New("queue down")}
	_, mux := newServer(ops, q)
	if rec, _ := call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", ""); rec.Code != 503 {
		t.Fatalf("register with the queue down: %d", rec.Code)
	}
	q.err = nil
	if rec, body := call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", ""); rec.Code != 202 {
		t.Fatalf("retry after abandon: %d %v", rec.Code, body)
	}
}
