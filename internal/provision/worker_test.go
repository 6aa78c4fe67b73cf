package provision

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/dps"
	"github.com/iotprov/iotprov/internal/queue"
	"github.com/iotprov/iotprov/internal/secrets"
	"github.com/iotprov/iotprov/internal/store"
)

// fakeOps is an in-memory store with the real store's ETag semantics. Hooks let a test
// fail or race a write.
type fakeOps struct {
	mu       sync.Mutex
	ops      map[string]store.Operation
	etag     int
	onUpdate func(op *store.Operation) error // called before a write; an error is returned as is
}

var _ Operations = (*fakeOps)(nil)

func newFakeOps(ops ...store.Operation) *fakeOps {
	f := &fakeOps{ops: map[string]store.Operation{}}
	for _, op := range ops {
		f.etag++
		op.ETag = strconv.Itoa(f.etag)
		f.ops[op.DeviceID+"/"+op.ID] = op
	}
	return f
}

func (f *fakeOps) GetOperation(_ context.Context, deviceID, id string) (*store.Operation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	op, ok := f.ops[deviceID+"/"+id]
	if !ok {
		return nil, store.ErrNotFound
	}
	return &op, nil
}

func (f *fakeOps) UpdateOperation(_ context.Context, op *store.Operation) error {
	if f.onUpdate != nil {
		if err := f.onUpdate(op); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, ok := f.ops[op.DeviceID+"/"+op.ID]
	if !ok {
		return store.ErrNotFound
	}
	if cur.ETag != op.ETag {
		return store.ErrConflict
	}
	f.etag++
	op.ETag = strconv.Itoa(f.etag)
	f.ops[op.DeviceID+"/"+op.ID] = *op
	return nil
}

func (f *fakeOps) Purge(context.Context, time.Time, time.Duration, time.Duration) (int, int, error) {
	return 0, 0, nil
}

func (f *fakeOps) get(t *testing.T, deviceID, id string) store.Operation {
	t.Helper()
	op, err := f.GetOperation(context.Background(), deviceID, id)
	if err != nil {
		t.Fatal(err)
	}
	return *op
}

type enqueued struct {
	msg   queue.Message
	delay time.Duration
}

type fakeQueue struct {
	mu   sync.Mutex
	sent []enqueued
	err  error // returned by Enqueue when set (queue unreachable)
}

func (q *fakeQueue) Enqueue(_ context.Context, m queue.Message, d time.Duration) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return q.err
	}
	q.sent = append(q.sent, enqueued{m, d})
	return nil
}

// fakeDPS answers RegisterAndWait with a function field and records the certificates.
type fakeDPS struct {
	mu       sync.Mutex
	register func(regID string, cert tls.Certificate) (*dps.Operation, error)
	calls    []*x509.Certificate
	creds    []tls.Certificate // as presented
}

func (d *fakeDPS) RegisterAndWait(_ context.Context, regID string, cert tls.Certificate) (*dps.Operation, error) {
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.calls = append(d.calls, leaf)
	d.creds = append(d.creds, cert)
	register := d.register
	d.mu.Unlock()
	return register(regID, cert)
}

func assigned(regID string, _ tls.Certificate) (*dps.Operation, error) {
	return &dps.Operation{OperationID: "4.op", Status: dps.StatusAssigned,
		State: &dps.RegistrationState{RegistrationID: regID, AssignedHub: "hub.example.net", DeviceID: regID, Status: "assigned"}}, nil
}

// mapSecrets is a secret source backed by a map.
type mapSecrets map[string][]byte

func (m mapSecrets) Secret(_ context.Context, name string) ([]byte, error) {
	if v, ok := m[name]; ok {
		return v, nil
	}
	return nil, fmt.Errorf("%q: %w", name, secrets.ErrNotFound)
}

type fixture struct {
	worker *Worker
	ops    *fakeOps
	queue  *fakeQueue
	dps    *fakeDPS
	root   *ca.Authority
	sealer *DataKeySealer
}

func newFixture(t *testing.T, ops ...store.Operation) *fixture {
	t.Helper()
	now := time.Now()
	root, err := ca.NewRootCA("test root", 24*time.Hour*365, now)
	if err != nil {
		t.Fatal(err)
	}
	issuing, err := ca.NewIntermediateCA(root, "test issuing", 24*time.Hour*300, now)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := issuing.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	src := mapSecrets{"ca": bundle, "dk": []byte(base64.StdEncoding.EncodeToString(key))}
	profile, _ := ca.NewProfile(ca.ProfileConfig{})
	regProfile, _ := ca.NewProfile(ca.ProfileConfig{Validity: time.Hour})
	f := &fixture{ops: newFakeOps(ops...), queue: &fakeQueue{}, dps: &fakeDPS{register: assigned}, root: root}
	f.sealer = &DataKeySealer{Secrets: src, Name: "dk"}
	f.worker = &Worker{
		Ops: f.ops, Queue: f.queue, DPS: f.dps, Keys: f.sealer,
		CA:      &AuthorityLoader{Secrets: src, Name: "ca"},
		Profile: profile, RegProfile: regProfile, KeyAlgorithm: ca.ECDSAP256,
		MaxDequeueCount: 5, MaxAttempts: 10, DPSTimeout: time.Second,
	}
	return f
}

func queued(id string) store.Operation {
	return store.Operation{ID: id, DeviceID: "dev-" + id, Identity: "sas:dev-" + id, Status: store.StatusQueued, CreatedAt: time.Now()}
}

func msgFor(op store.Operation) queue.Message {
	return queue.Message{OperationID: op.ID, DeviceID: op.DeviceID}
}

func TestProvision(t *testing.T) {
	csrKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}}, csrKey)

	tests := []struct {
		name    string
		op      store.Operation
		dequeue int64
		setup   func(f *fixture)
		check   func(t *testing.T, f *fixture, op store.Operation, err error)
	}{
		{
			name: "ok/server-generated-key",
			op:   queued("a1"),
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusAssigned || op.Host != "hub.example.net" || op.AssignedDeviceID != "dev-a1" {
					t.Fatalf("err %v, op %+v", err, op)
				}
				keyPEM, err := f.sealer.Open(context.Background(), op.SealedKey, op.ID, op.DeviceID)
				if err != nil {
					t.Fatal(err)
				}
				cert, err := tls.X509KeyPair([]byte(op.CertificatePEM), keyPEM)
				if err != nil {
					t.Fatalf("stored key does not match the stored certificate: %v", err)
				}
				leaf, _ := x509.ParseCertificate(cert.Certificate[0])
				if leaf.Subject.CommonName != "dev-a1" || len(f.dps.calls) != 1 || f.dps.calls[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
					t.Fatalf("DPS was not called with the device's own certificate")
				}
				// The credential issue hands to register (not rebuilt from storage) is
				// exactly the stored chain, with the key that matches it.
				presented := f.dps.creds[0]
				if !slices.EqualFunc(presented.Certificate, cert.Certificate, bytes.Equal) {
					t.Errorf("DPS got a chain of %d certificates that is not the stored one (%d)", len(presented.Certificate), len(cert.Certificate))
				}
				if signer, ok := presented.PrivateKey.(crypto.Signer); !ok || !leaf.PublicKey.(*ecdsa.PublicKey).Equal(signer.Public()) {
					t.Error("DPS got a key that does not match the certificate")
				}
				if _, err := f.sealer.Open(context.Background(), op.SealedKey, op.ID, "other-device"); err == nil {
					t.Error("sealed key opens for another device")
				}
			},
		},
		{
			name: "ok/csr-key-never-held",
			op:   func() store.Operation { o := queued("a2"); o.CSR = csrDER; return o }(),
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusAssigned || op.SealedKey != nil {
					t.Fatalf("err %v, op %+v", err, op)
				}
				leaf := firstCert(t, op.CertificatePEM)
				if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&csrKey.PublicKey) {
					t.Error("certificate is not for the CSR's key")
				}
				reg := f.dps.calls[0]
				if reg.Subject.CommonName != "dev-a2" || reg.PublicKey.(*ecdsa.PublicKey).Equal(&csrKey.PublicKey) {
					t.Error("DPS registration certificate should be a separate short-lived one for the same device ID")
				}
				if reg.NotAfter.Sub(reg.NotBefore) > 2*time.Hour {
					t.Errorf("registration certificate lives %s", reg.NotAfter.Sub(reg.NotBefore))
				}
			},
		},
		{
			name: "ok/unknown-operation-acknowledged",
			op:   queued("a3"),
			setup: func(f *fixture) {
				delete(f.ops.ops, "dev-a3/a3")
			},
			check: func(t *testing.T, f *fixture, _ store.Operation, err error) {
				if err != nil || len(f.dps.calls) != 0 {
					t.Fatalf("err %v, dps calls %d", err, len(f.dps.calls))
				}
			},
		},
		{
			name: "fail/key-sealed-under-another-data-key-fails-at-once",
			op:   queued("a4k"),
			setup: func(f *fixture) {
				// First delivery issues, then DPS fails (transient); meanwhile the stored
				// sealed key is damaged, as a data-key rotation would leave it unopenable.
				f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) { return nil, errors.New("connection reset") }
				_ = f.worker.Provision(context.Background(), msgFor(queued("a4k")), 1)
				op := f.ops.ops["dev-a4k/a4k"]
				op.SealedKey = append([]byte(nil), op.SealedKey...)
				op.SealedKey[len(op.SealedKey)-1] ^= 1
				f.ops.ops["dev-a4k/a4k"] = op
				f.dps.register = assigned
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				// Not retried every 30 s until the attempts run out: no retry opens it.
				if err != nil || op.Status != store.StatusFailed || op.ErrorCode != "issuance_failed" || len(f.dps.calls) != 1 {
					t.Fatalf("err %v status %s code %s dps calls %d", err, op.Status, op.ErrorCode, len(f.dps.calls))
				}
			},
		},
		{
			name: "ok/resume-from-issued-keeps-certificate",
			op:   queued("a4"),
			setup: func(f *fixture) {
				// First delivery issues, then "crashes" at DPS (network error: transient).
				f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) { return nil, errors.New("connection reset") }
				_ = f.worker.Provision(context.Background(), msgFor(queued("a4")), 1)
				f.dps.register = assigned
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusAssigned || len(f.dps.calls) != 2 {
					t.Fatalf("err %v status %s calls %d", err, op.Status, len(f.dps.calls))
				}
				if f.dps.calls[0].SerialNumber.Cmp(f.dps.calls[1].SerialNumber) != 0 {
					t.Error("a redelivery issued a second certificate")
				}
				if firstCert(t, op.CertificatePEM).SerialNumber.Cmp(f.dps.calls[0].SerialNumber) != 0 {
					t.Error("stored certificate is not the one registered")
				}
			},
		},
		{
			name: "ok/throttled-is-deferred-not-failed",
			op:   queued("a5"),
			setup: func(f *fixture) {
				f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) {
					return nil, &dps.Error{StatusCode: 429, ErrorCode: 429001, Message: "throttled", RetryAfter: 3 * time.Second}
				}
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusIssued || op.Attempts != 1 {
					t.Fatalf("err %v, op status %s attempts %d", err, op.Status, op.Attempts)
				}
				if len(f.queue.sent) != 1 || f.queue.sent[0].delay < 3*time.Second || f.queue.sent[0].delay > 4*time.Second {
					t.Fatalf("re-enqueue: %+v", f.queue.sent)
				}
				if f.queue.sent[0].msg != msgFor(op) {
					t.Errorf("re-enqueued %+v", f.queue.sent[0].msg)
				}
			},
		},
		{
			name: "fail/dps-permanent",
			op:   queued("a6"),
			setup: func(f *fixture) {
				f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) {
					return nil, &dps.Error{StatusCode: 401, ErrorCode: 401002, Message: "The device is unauthorized."}
				}
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusFailed || op.ErrorCode != CodeDPSRegistrationFailed {
					t.Fatalf("err %v, op %+v", err, op)
				}
				if len(f.queue.sent) != 0 {
					t.Error("a permanent failure was re-enqueued")
				}
			},
		},
		{
			name: "fail/attempts-exhausted",
			op:   func() store.Operation { o := queued("a7"); o.Attempts = 9; return o }(),
			setup: func(f *fixture) {
				f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) {
					return nil, &dps.Error{StatusCode: 503, Message: "unavailable"}
				}
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusFailed || op.ErrorCode != CodeRetriesExhausted {
					t.Fatalf("err %v, op %+v", err, op)
				}
			},
		},
		{
			name: "ok/ca-missing-waits",
			op:   queued("a8"),
			setup: func(f *fixture) {
				f.worker.CA = &AuthorityLoader{Secrets: mapSecrets{}, Name: "ca"}
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusQueued || op.Attempts != 1 || op.ErrorCode != "ca_unavailable" {
					t.Fatalf("err %v, op %+v", err, op)
				}
				if len(f.queue.sent) != 1 || f.queue.sent[0].delay < time.Minute {
					t.Errorf("re-enqueue: %+v", f.queue.sent)
				}
			},
		},
		{
			name:    "fail/storage-error-redelivered-then-recorded-on-last-delivery",
			op:      queued("a9"),
			dequeue: 5,
			setup: func(f *fixture) {
				n := 0
				f.ops.onUpdate = func(op *store.Operation) error {
					if n++; n == 1 {
						return errors.New("storage blip")
					}
					return nil
				}
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusFailed || op.ErrorCode != CodeDeliveryExhausted {
					t.Fatalf("err %v, op %+v", err, op)
				}
			},
		},
		{
			name:    "fail/storage-error-before-last-delivery-asks-for-redelivery",
			op:      queued("a10"),
			dequeue: 1,
			setup: func(f *fixture) {
				f.ops.onUpdate = func(*store.Operation) error { return errors.New("storage blip") }
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err == nil || op.Status != store.StatusQueued {
					t.Fatalf("err %v, status %s", err, op.Status)
				}
			},
		},
		{
			name: "ok/concurrent-delivery-wins",
			op:   queued("a11"),
			setup: func(f *fixture) {
				// Another delivery finishes the operation between our read and our write.
				once := false
				f.ops.onUpdate = func(op *store.Operation) error {
					if once {
						return nil
					}
					once = true
					f.ops.mu.Lock()
					cur := f.ops.ops[op.DeviceID+"/"+op.ID]
					cur.Status, cur.ETag, cur.Host = store.StatusAssigned, "other", "winner"
					f.ops.ops[op.DeviceID+"/"+op.ID] = cur
					f.ops.mu.Unlock()
					return nil
				}
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusAssigned || op.Host != "winner" || len(f.dps.calls) != 0 {
					t.Fatalf("err %v, op %+v, dps calls %d", err, op, len(f.dps.calls))
				}
			},
		},
		{
			name:    "fail/last-delivery-cannot-reschedule",
			op:      queued("b1"),
			dequeue: 5,
			setup: func(f *fixture) {
				f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) {
					return nil, &dps.Error{StatusCode: 429, ErrorCode: 429001, Message: "throttled", RetryAfter: time.Second}
				}
				f.queue.err = errors.New("queue unreachable")
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				// The host is about to give up the message: the operation must not be left
				// issued with nothing to pick it up again.
				if err != nil || op.Status != store.StatusFailed || op.ErrorCode != CodeDeliveryExhausted {
					t.Fatalf("err %v, op %+v", err, op)
				}
			},
		},
		{
			name: "ok/cannot-reschedule-before-last-delivery-asks-for-redelivery",
			op:   queued("b2"),
			setup: func(f *fixture) {
				f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) {
					return nil, &dps.Error{StatusCode: 503, Message: "unavailable"}
				}
				f.queue.err = errors.New("queue unreachable")
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err == nil || op.Status != store.StatusIssued || op.Attempts != 1 {
					t.Fatalf("err %v, op status %s attempts %d", err, op.Status, op.Attempts)
				}
			},
		},
		{
			name: "fail/attempts-exhausted-records-last-dps-error",
			op:   func() store.Operation { o := queued("b3"); o.Attempts = 9; return o }(),
			setup: func(f *fixture) {
				f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) {
					return nil, &dps.Error{StatusCode: 503, ErrorCode: 503000, Message: "Service is unavailable."}
				}
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusFailed || op.ErrorCode != CodeRetriesExhausted {
					t.Fatalf("err %v, op %+v", err, op)
				}
				for _, want := range []string{"HTTP 503", "503000", "Service is unavailable."} {
					if !strings.Contains(op.ErrorMessage, want) {
						t.Errorf("error message %q lacks DPS's %q", op.ErrorMessage, want)
					}
				}
			},
		},
		{
			name: "ok/fault-without-retry-after-backs-off",
			op:   func() store.Operation { o := queued("b4"); o.Attempts = 2; return o }(),
			setup: func(f *fixture) {
				f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) {
					return nil, &dps.Error{StatusCode: 500, ErrorCode: 500000, Message: "Internal server error."}
				}
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusIssued || op.Attempts != 3 || op.ErrorCode != "dps_unavailable" {
					t.Fatalf("err %v, op %+v", err, op)
				}
				// 2 s doubled twice (the attempts so far), plus up to a fifth of jitter.
				if len(f.queue.sent) != 1 || f.queue.sent[0].delay < 8*time.Second || f.queue.sent[0].delay >= 10*time.Second {
					t.Fatalf("re-enqueue: %+v", f.queue.sent)
				}
			},
		},
		{
			name: "ok/data-key-unavailable-waits",
			op:   queued("b5"),
			setup: func(f *fixture) {
				f.worker.Keys = &DataKeySealer{Secrets: mapSecrets{}, Name: "dk"}
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				// Key Vault down: the operation waits (re-enqueued), it does not fail, and no
				// certificate is stored without its sealed key.
				if err != nil || op.Status != store.StatusQueued || op.Attempts != 1 || op.ErrorCode != "data_key_unavailable" ||
					op.CertificatePEM != "" || op.SealedKey != nil {
					t.Fatalf("err %v, op %+v", err, op)
				}
				if len(f.queue.sent) != 1 || f.queue.sent[0].delay < 30*time.Second {
					t.Errorf("re-enqueue: %+v", f.queue.sent)
				}
			},
		},
		{
			name: "fail/dps-disabled-is-permanent",
			op:   queued("b6"),
			setup: func(f *fixture) {
				f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) {
					return nil, dpsFinalError(t, "disabled")
				}
			},
			check: func(t *testing.T, f *fixture, op store.Operation, err error) {
				if err != nil || op.Status != store.StatusFailed || op.ErrorCode != CodeDPSRegistrationFailed || len(f.queue.sent) != 0 {
					t.Fatalf("err %v, op %+v, sent %d", err, op, len(f.queue.sent))
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.op)
			if tc.setup != nil {
				tc.setup(f)
			}
			dq := tc.dequeue
			if dq == 0 {
				dq = 1
			}
			err := f.worker.Provision(context.Background(), msgFor(tc.op), dq)
			var op store.Operation
			if got, gerr := f.ops.GetOperation(context.Background(), tc.op.DeviceID, tc.op.ID); gerr == nil {
				op = *got
			}
			tc.check(t, f, op, err)
		})
	}
}

func TestAuthorityLoaderRotationAndRefusal(t *testing.T) {
	now := time.Now()
	mk := func(cn string, validity time.Duration, at time.Time) []byte {
		root, err := ca.NewRootCA(cn, validity, at)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := root.MarshalPEM()
		return b
	}
	src := mapSecrets{"ca": mk("first", time.Hour, now)}
	l := &AuthorityLoader{Secrets: src, Name: "ca"}
	a, err := l.Authority(context.Background())
	if err != nil || a.Certificate.Subject.CommonName != "first" {
		t.Fatalf("first: %v", err)
	}
	src["ca"] = mk("second", time.Hour, now)
	if a, err = l.Authority(context.Background()); err != nil || a.Certificate.Subject.CommonName != "second" {
		t.Fatalf("rotation not picked up: %v", err)
	}
	src["ca"] = mk("expired", time.Hour, now.Add(-2*time.Hour))
	if _, err = l.Authority(context.Background()); err == nil {
		t.Fatal("an expired CA was accepted")
	}
	src["ca"] = []byte("garbage")
	if _, err = l.Authority(context.Background()); err == nil {
		t.Fatal("garbage accepted as a CA")
	}
}

func firstCert(t *testing.T, chainPEM string) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode([]byte(chainPEM))
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dpsFinalError is the error the real DPS client returns for an operation that ended with
// status (failed or disabled), got from a DPS stand-in answering that status.
func dpsFinalError(t *testing.T, status string) error {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"operationId":"4.x","status":%q,"registrationState":{"registrationId":"r","status":%q,"errorCode":401002,"errorMessage":"The enrollment is disabled."}}`, status, status)
	}))
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	c, err := dps.New(dps.Config{Endpoint: strings.TrimPrefix(srv.URL, "https://"), IDScope: "0ne00000000", RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "r"}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	_, err = c.RegisterAndWait(context.Background(), "r", tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key})
	if err == nil {
		t.Fatal("DPS client accepted a " + status + " registration")
	}
	return err
}

// TestBackoff: exponential from 2 s with up to a fifth of jitter, capped at a minute.
func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		attempt  int
		min, max time.Duration
	}{
		{0, 2 * time.Second, 3 * time.Second},
		{1, 4 * time.Second, 5 * time.Second},
		{4, 32 * time.Second, 39 * time.Second},
		{5, time.Minute, 73 * time.Second},
		{1000, time.Minute, 73 * time.Second},
	} {
		for range 20 {
			if d := backoff(tc.attempt); d < tc.min || d >= tc.max {
				t.Errorf("backoff(%d) = %v, want in [%v, %v)", tc.attempt, d, tc.min, tc.max)
			}
		}
	}
}

// TestConcurrentDeliveries: two deliveries of one message at once (a redelivery racing
// the first, or two instances) end with one certificate: the one stored, and the only one
// DPS saw for the operation's final state.
func TestConcurrentDeliveries(t *testing.T) {
	for i := range 20 {
		op := queued(fmt.Sprintf("c%d", i))
		f := newFixture(t, op)
		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[w] = f.worker.Provision(context.Background(), msgFor(op), 1)
			}()
		}
		close(start)
		wg.Wait()
		got := f.ops.get(t, op.DeviceID, op.ID)
		if errs[0] != nil || errs[1] != nil || got.Status != store.StatusAssigned {
			t.Fatalf("errors %v, status %s", errs, got.Status)
		}
		stored := firstCert(t, got.CertificatePEM)
		f.dps.mu.Lock()
		for _, c := range f.dps.calls {
			if c.SerialNumber.Cmp(stored.SerialNumber) != 0 {
				t.Errorf("DPS was called with certificate %x, but the operation stored %x", c.SerialNumber, stored.SerialNumber)
			}
		}
		f.dps.mu.Unlock()
	}
}
