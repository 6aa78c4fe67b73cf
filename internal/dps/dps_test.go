package dps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/dpsemu"
	"github.com/iotprov/iotprov/internal/dpsemu/dpsemutest"
	"github.com/iotprov/iotprov/internal/testenv"
)

func newFakeClock() *testenv.Clock { return testenv.NewClock(time.Now()) }

func newClient(t *testing.T, srv *httptest.Server, pki *dpsemutest.PKI, scope string) *Client {
	t.Helper()
	c, err := New(Config{
		Endpoint:        srv.Listener.Addr().String(),
		IDScope:         scope,
		RootCAs:         pki.Roots,
		HTTPTimeout:     5 * time.Second,
		MinPollInterval: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func asError(t *testing.T, err error) *Error {
	t.Helper()
	var de *Error
	if !errors.As(err, &de) {
		t.Fatalf("error %v (%T) is not a *dps.Error", err, err)
	}
	return de
}

// registerOnce and statusOnce send one register PUT or one status GET the way
// RegisterAndWait does: over a client presenting cert, through c.register and c.status.
func registerOnce(ctx context.Context, c *Client, registrationID string, cert tls.Certificate) (*Operation, error) {
	hc, done, err := c.httpClient(cert)
	if err != nil {
		return nil, err
	}
	defer done()
	return c.register(ctx, hc, registrationID)
}

func statusOnce(ctx context.Context, c *Client, registrationID, operationID string, cert tls.Certificate) (*Operation, error) {
	hc, done, err := c.httpClient(cert)
	if err != nil {
		return nil, err
	}
	defer done()
	return c.status(ctx, hc, registrationID, operationID)
}

func TestRegisterAndWait(t *testing.T) {
	type result struct {
		op   *Operation
		err  error
		emu  *dpsemu.Server
		took time.Duration
	}
	tests := []struct {
		name string
		cfg  dpsemu.Config
		// cert picks the certificate the client presents for registration ID "dev-1".
		cert  func(t *testing.T, pki *dpsemutest.PKI) tls.Certificate
		scope string
		check func(t *testing.T, r result)
	}{
		{
			name: "ok/assigned",
			cfg:  dpsemu.Config{PollRetryAfter: -1},
			check: func(t *testing.T, r result) {
				if r.err != nil {
					t.Fatal(r.err)
				}
				if r.op.Status != StatusAssigned || r.op.State == nil {
					t.Fatalf("op = %+v", r.op)
				}
				s := r.op.State
				if s.AssignedHub != "localhost" || s.DeviceID != "dev-1" || s.RegistrationID != "dev-1" ||
					s.Status != StatusAssigned || s.Substatus != "initialAssignment" {
					t.Errorf("state = %+v", s)
				}
				if got := r.emu.Devices(); got["dev-1"] != "dev-1" || len(got) != 1 {
					t.Errorf("emulator devices = %v", got)
				}
				if st := r.emu.Stats(); st.Registrations != 1 || st.Assigned != 1 || st.Polls != 1 {
					t.Errorf("stats = %+v", st)
				}
			},
		},
		{
			name: "ok/custom hub",
			cfg:  dpsemu.Config{PollRetryAfter: -1, AssignedHub: "hub-1.azure-devices.net"},
			check: func(t *testing.T, r result) {
				if r.err != nil {
					t.Fatal(r.err)
				}
				if r.op.State.AssignedHub != "hub-1.azure-devices.net" {
					t.Errorf("assignedHub = %q", r.op.State.AssignedHub)
				}
			},
		},
		{
			// The emulator keeps the operation assigning for 1.2 s and sends
			// Retry-After: 1 each time; the client must wait that, not its 10 ms minimum.
			name: "ok/honours Retry-After while assigning",
			cfg:  dpsemu.Config{AssignDelay: 1200 * time.Millisecond, PollRetryAfter: time.Second},
			check: func(t *testing.T, r result) {
				if r.err != nil {
					t.Fatal(r.err)
				}
				if r.op.Status != StatusAssigned {
					t.Fatalf("status = %q", r.op.Status)
				}
				if st := r.emu.Stats(); st.Polls != 2 {
					t.Errorf("polls = %d, want 2 (one refused as assigning, one assigned)", st.Polls)
				}
				if r.took < 2*time.Second {
					t.Errorf("took %v, want ≥ 2s (two Retry-After: 1 waits)", r.took)
				}
			},
		},
		{
			name: "fail/CN is not the registration ID",
			cfg:  dpsemu.Config{PollRetryAfter: -1},
			cert: func(t *testing.T, pki *dpsemutest.PKI) tls.Certificate { return pki.Device(t, "dev-2") },
			check: func(t *testing.T, r result) {
				de := asError(t, r.err)
				if de.StatusCode != 401 || de.ErrorCode != 401002 || de.Transient() || de.TrackingID == "" {
					t.Errorf("error = %+v", de)
				}
				if len(r.emu.Devices()) != 0 {
					t.Error("device registered despite CN mismatch")
				}
			},
		},
		{
			name: "fail/untrusted chain",
			cfg:  dpsemu.Config{PollRetryAfter: -1},
			cert: func(t *testing.T, _ *dpsemutest.PKI) tls.Certificate {
				return dpsemutest.NewPKI(t).Device(t, "dev-1")
			},
			check: func(t *testing.T, r result) {
				de := asError(t, r.err)
				if de.StatusCode != 401 || de.ErrorCode != 401002 || de.Transient() {
					t.Errorf("error = %+v", de)
				}
			},
		},
		{
			name: "fail/serverAuth-only EKU",
			cfg:  dpsemu.Config{PollRetryAfter: -1},
			cert: func(t *testing.T, pki *dpsemutest.PKI) tls.Certificate {
				return pki.DeviceWithEKU(t, "dev-1", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
			},
			check: func(t *testing.T, r result) {
				if de := asError(t, r.err); de.StatusCode != 401 || de.Transient() {
					t.Errorf("error = %+v", de)
				}
			},
		},
		{
			name:  "fail/unknown ID scope",
			cfg:   dpsemu.Config{PollRetryAfter: -1},
			scope: "0ne99999999",
			check: func(t *testing.T, r result) {
				if de := asError(t, r.err); de.StatusCode != 404 || de.Transient() {
					t.Errorf("error = %+v", de)
				}
			},
		},
		{
			name: "fail/faults are transient",
			cfg:  dpsemu.Config{PollRetryAfter: -1, FaultRate: 1},
			check: func(t *testing.T, r result) {
				de := asError(t, r.err)
				if !de.Transient() || (de.StatusCode != 500 && de.StatusCode != 503) ||
					(de.ErrorCode != 500000 && de.ErrorCode != 503000) {
					t.Errorf("error = %+v", de)
				}
				if st := r.emu.Stats(); st.Faults != 1 || st.Registrations != 0 {
					t.Errorf("stats = %+v", st)
				}
			},
		},
		{
			name: "fail/failed status is permanent",
			cfg: dpsemu.Config{PollRetryAfter: -1, Outcome: func(string) (string, int, string) {
				return "failed", 400209, "Custom allocation failed."
			}},
			check: func(t *testing.T, r result) {
				de := asError(t, r.err)
				if de.Transient() || de.ErrorCode != 400209 || !strings.Contains(de.Message, "Custom allocation failed.") {
					t.Errorf("error = %+v", de)
				}
				if r.op == nil || r.op.Status != StatusFailed {
					t.Errorf("op = %+v", r.op)
				}
				if len(r.emu.Devices()) != 0 {
					t.Error("failed registration recorded as a device")
				}
			},
		},
		{
			name: "fail/disabled status is permanent",
			cfg: dpsemu.Config{PollRetryAfter: -1, Outcome: func(string) (string, int, string) {
				return "disabled", 0, ""
			}},
			check: func(t *testing.T, r result) {
				de := asError(t, r.err)
				if de.Transient() || !strings.Contains(de.Message, "disabled") {
					t.Errorf("error = %+v", de)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			emu, srv, pki := dpsemutest.Start(t, tt.cfg)
			scope := tt.scope
			if scope == "" {
				scope = "0ne00000000"
			}
			c := newClient(t, srv, pki, scope)
			cert := pki.Device(t, "dev-1")
			if tt.cert != nil {
				cert = tt.cert(t, pki)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			op, err := c.RegisterAndWait(ctx, "dev-1", cert)
			tt.check(t, result{op: op, err: err, emu: emu, took: time.Since(start)})
		})
	}
}

func TestRegisterAndWait_reprovision(t *testing.T) {
	_, srv, pki := dpsemutest.Start(t, dpsemu.Config{PollRetryAfter: -1})
	c := newClient(t, srv, pki, "0ne00000000")
	cert := pki.Device(t, "dev-1")
	want := []string{"initialAssignment", "reprovisionedToInitialAssignment"}
	var ops []string
	for i, sub := range want {
		op, err := c.RegisterAndWait(context.Background(), "dev-1", cert)
		if err != nil {
			t.Fatal(err)
		}
		if op.State.Substatus != sub || op.State.DeviceID != "dev-1" {
			t.Errorf("registration %d: state = %+v, want substatus %s", i, op.State, sub)
		}
		ops = append(ops, op.OperationID)
	}
	if ops[0] == ops[1] {
		t.Error("re-registration reused the operation ID")
	}
}

func TestRegister_quota(t *testing.T) {
	clock := newFakeClock()
	emu, srv, pki := dpsemutest.Start(t, dpsemu.Config{PollRetryAfter: -1, QuotaPerMinute: 2, Now: clock.Now})
	c := newClient(t, srv, pki, "0ne00000000")
	ctx := context.Background()
	for _, id := range []string{"dev-1", "dev-2"} {
		if _, err := registerOnce(ctx, c, id, pki.Device(t, id)); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	dev3 := pki.Device(t, "dev-3")
	tests := []struct {
		name      string
		advance   time.Duration
		wantAfter time.Duration // 0: success expected
	}{
		{name: "fail/quota full", wantAfter: 60 * time.Second},
		{name: "fail/still full half a minute on", advance: 30 * time.Second, wantAfter: 30 * time.Second},
		{name: "ok/slot freed", advance: 31 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock.Advance(tt.advance)
			op, err := c.RegisterAndWait(ctx, "dev-3", dev3)
			if tt.wantAfter == 0 {
				if err != nil || op.Status != StatusAssigned {
					t.Fatalf("op = %+v, err = %v", op, err)
				}
				return
			}
			de := asError(t, err)
			if de.StatusCode != 429 || de.ErrorCode != 429001 || !de.Transient() || de.RetryAfter != tt.wantAfter {
				t.Errorf("error = %+v, want 429/429001 retry after %v", de, tt.wantAfter)
			}
		})
	}
	if st := emu.Stats(); st.Throttled != 2 || st.Registrations != 3 {
		t.Errorf("stats = %+v", st)
	}
}

func TestStatus(t *testing.T) {
	clock := newFakeClock()
	_, srv, pki := dpsemutest.Start(t, dpsemu.Config{PollLimit: 2, Now: clock.Now})
	c := newClient(t, srv, pki, "0ne00000000")
	ctx := context.Background()
	cert := pki.Device(t, "dev-1")
	op, err := registerOnce(ctx, c, "dev-1", cert)
	if err != nil {
		t.Fatal(err)
	}
	if op.Status != StatusAssigning || op.State != nil || op.RetryAfter != time.Second || op.OperationID == "" {
		t.Fatalf("register answer = %+v", op)
	}
	other := pki.Device(t, "dev-2")
	tests := []struct {
		name    string
		id, op  string
		cert    tls.Certificate
		advance time.Duration
		check   func(t *testing.T, got *Operation, err error)
	}{
		{name: "ok/assigned", id: "dev-1", op: op.OperationID, cert: cert, check: func(t *testing.T, got *Operation, err error) {
			if err != nil || got.Status != StatusAssigned || got.State.DeviceID != "dev-1" {
				t.Errorf("got %+v, %v", got, err)
			}
		}},
		{name: "fail/unknown operation", id: "dev-1", op: "4.0000.nope", cert: cert, check: func(t *testing.T, _ *Operation, err error) {
			if de := asError(t, err); de.StatusCode != 404 || de.Transient() {
				t.Errorf("error = %+v", de)
			}
		}},
		{name: "fail/poll limit", id: "dev-1", op: op.OperationID, cert: cert, check: func(t *testing.T, _ *Operation, err error) {
			de := asError(t, err)
			if de.StatusCode != 429 || de.ErrorCode != 429001 || !de.Transient() || de.RetryAfter != 10*time.Second {
				t.Errorf("error = %+v", de)
			}
		}},
		{name: "ok/poll window moved on", id: "dev-1", op: op.OperationID, cert: cert, advance: 11 * time.Second,
			check: func(t *testing.T, got *Operation, err error) {
				if err != nil || got.Status != StatusAssigned {
					t.Errorf("got %+v, %v", got, err)
				}
			}},
		{name: "fail/another device's operation", id: "dev-2", op: op.OperationID, cert: other, check: func(t *testing.T, _ *Operation, err error) {
			if de := asError(t, err); de.StatusCode != 404 {
				t.Errorf("error = %+v", de)
			}
		}},
		{name: "fail/empty operation ID", id: "dev-1", op: "", cert: cert, check: func(t *testing.T, _ *Operation, err error) {
			if de := asError(t, err); de.Transient() {
				t.Errorf("error = %+v", de)
			}
		}},
		{name: "fail/no certificate", id: "dev-1", op: op.OperationID, check: func(t *testing.T, _ *Operation, err error) {
			if de := asError(t, err); de.Transient() {
				t.Errorf("error = %+v", de)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock.Advance(tt.advance)
			got, err := statusOnce(ctx, c, tt.id, tt.op, tt.cert)
			tt.check(t, got, err)
		})
	}
}

func TestRegisterAndWait_contextDone(t *testing.T) {
	_, srv, pki := dpsemutest.Start(t, dpsemu.Config{AssignDelay: time.Hour, PollRetryAfter: -1})
	c := newClient(t, srv, pki, "0ne00000000")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := c.RegisterAndWait(ctx, "dev-1", pki.Device(t, "dev-1"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	var de *Error
	if errors.As(err, &de) {
		t.Errorf("a finished context came back as a *dps.Error: %v", de)
	}
}

// scriptedDPS is a hand-written DPS that answers polls from a script, to test how
// RegisterAndWait paces itself around throttled and failing polls.
type scriptedDPS struct {
	mu    sync.Mutex
	put   time.Time // when the register PUT arrived
	polls []time.Time
	// answers are the status-poll answers in order; the last repeats.
	answers []scripted
}

type scripted struct {
	status     int
	retryAfter string
	body       string
}

func (s *scriptedDPS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if r.Method == http.MethodPut {
		s.mu.Lock()
		s.put = time.Now()
		s.mu.Unlock()
		w.Header().Set("Retry-After", "0")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprint(w, `{"operationId":"4.1.op","status":"assigning"}`)
		return
	}
	s.mu.Lock()
	n := len(s.polls)
	s.polls = append(s.polls, time.Now())
	a := s.answers[min(n, len(s.answers)-1)]
	s.mu.Unlock()
	if a.retryAfter != "" {
		w.Header().Set("Retry-After", a.retryAfter)
	}
	w.WriteHeader(a.status)
	fmt.Fprint(w, a.body)
}

func startScripted(t *testing.T, answers ...scripted) (*Client, *scriptedDPS, tls.Certificate) {
	t.Helper()
	pki := dpsemutest.NewPKI(t)
	fake := &scriptedDPS{answers: answers}
	srv := httptest.NewUnstartedServer(fake)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.Server(t)}, ClientAuth: tls.RequireAnyClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return newClient(t, srv, pki, "0ne00000000"), fake, pki.Device(t, "dev-1")
}

const assignedBody = `{"operationId":"4.1.op","status":"assigned","registrationState":{"registrationId":"dev-1","assignedHub":"h","deviceId":"dev-1","status":"assigned","substatus":"initialAssignment"}}`

func TestRegisterAndWait_pollPacing(t *testing.T) {
	tests := []struct {
		name      string
		answers   []scripted
		wantPolls int
		minGap    time.Duration // between the first and second poll
		wantErr   func(t *testing.T, err error)
	}{
		{
			name: "ok/throttled poll waits Retry-After then succeeds",
			answers: []scripted{
				{status: 429, retryAfter: "1", body: `{"errorCode":429001,"trackingId":"t","message":"throttled"}`},
				{status: 200, body: assignedBody},
			},
			wantPolls: 2, minGap: time.Second,
		},
		{
			name: "ok/server error absorbed",
			answers: []scripted{
				{status: 503, body: `<html>gateway</html>`},
				{status: 200, body: assignedBody},
			},
			wantPolls: 2,
		},
		{
			name:      "fail/persistent server errors surface",
			answers:   []scripted{{status: 500, body: `{"errorCode":500000,"message":"boom"}`}},
			wantPolls: maxPollFailures + 1,
			wantErr: func(t *testing.T, err error) {
				if de := asError(t, err); de.StatusCode != 500 || de.ErrorCode != 500000 || !de.Transient() {
					t.Errorf("error = %+v", de)
				}
			},
		},
		{
			name:      "fail/permanent poll error is not retried",
			answers:   []scripted{{status: 401, body: `{"errorCode":401002,"message":"Invalid certificate."}`}},
			wantPolls: 1,
			wantErr: func(t *testing.T, err error) {
				if de := asError(t, err); de.StatusCode != 401 || de.Transient() {
					t.Errorf("error = %+v", de)
				}
			},
		},
		{
			name:      "fail/malformed answer",
			answers:   []scripted{{status: 200, body: `{"operationId":"x","status":"assigned"}`}},
			wantPolls: 1,
			wantErr: func(t *testing.T, err error) {
				if de := asError(t, err); de.StatusCode != 200 {
					t.Errorf("error = %+v", de)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, fake, cert := startScripted(t, tt.answers...)
			op, err := c.RegisterAndWait(context.Background(), "dev-1", cert)
			if tt.wantErr != nil {
				tt.wantErr(t, err)
			} else if err != nil || op.Status != StatusAssigned {
				t.Fatalf("op = %+v, err = %v", op, err)
			}
			fake.mu.Lock()
			defer fake.mu.Unlock()
			if len(fake.polls) != tt.wantPolls {
				t.Errorf("polls = %d, want %d", len(fake.polls), tt.wantPolls)
			}
			if tt.minGap > 0 && len(fake.polls) >= 2 {
				if gap := fake.polls[1].Sub(fake.polls[0]); gap < tt.minGap {
					t.Errorf("second poll %v after the first, want ≥ %v", gap, tt.minGap)
				}
			}
		})
	}
}

// TestRegisterAndWait_pollSchedule checks the pace that keeps a device within DPS's
// 5 status polls per 10 s: the first poll after FirstPollAfter (DPS said less), every
// later one at least MinPollInterval after the one before.
func TestRegisterAndWait_pollSchedule(t *testing.T) {
	const first, gap = 50 * time.Millisecond, 400 * time.Millisecond
	assigning := scripted{status: 202, retryAfter: "0", body: `{"operationId":"4.1.op","status":"assigning"}`}
	c, fake, cert := startScripted(t, assigning, assigning, scripted{status: 200, body: assignedBody})
	c.cfg.FirstPollAfter, c.cfg.MinPollInterval = first, gap
	if _, err := c.RegisterAndWait(context.Background(), "dev-1", cert); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.polls) != 3 {
		t.Fatalf("polls = %d, want 3", len(fake.polls))
	}
	if d := fake.polls[0].Sub(fake.put); d < first || d >= gap {
		t.Errorf("first poll %v after the PUT, want in [%v, %v)", d, first, gap)
	}
	for i := 1; i < len(fake.polls); i++ {
		if d := fake.polls[i].Sub(fake.polls[i-1]); d < gap {
			t.Errorf("poll %d came %v after the one before, want ≥ %v", i+1, d, gap)
		}
	}
}

func TestRegister_concurrent(t *testing.T) {
	emu, srv, pki := dpsemutest.Start(t, dpsemu.Config{PollRetryAfter: -1})
	c := newClient(t, srv, pki, "0ne00000000")
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("dev-%02d", i)
			if _, err := c.RegisterAndWait(context.Background(), id, pki.Device(t, id)); err != nil {
				t.Error(err)
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := len(emu.Devices()); n != 20 || failed.Load() != 0 {
		t.Errorf("devices = %d, failures = %d", n, failed.Load())
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
		base    string
	}{
		{name: "ok/defaults", cfg: Config{IDScope: "0ne00000000"}, base: "https://" + DefaultGlobalEndpoint + "/0ne00000000"},
		{name: "ok/local endpoint", cfg: Config{IDScope: "0ne1", Endpoint: "127.0.0.1:8443"}, base: "https://127.0.0.1:8443/0ne1"},
		{name: "fail/no scope", cfg: Config{}, wantErr: true},
		{name: "fail/endpoint with scheme", cfg: Config{IDScope: "s", Endpoint: "https://x"}, wantErr: true},
		{name: "fail/scope with slash", cfg: Config{IDScope: "a/b"}, wantErr: true},
		{name: "fail/negative timeout", cfg: Config{IDScope: "s", HTTPTimeout: -1}, wantErr: true},
		{name: "fail/negative first poll", cfg: Config{IDScope: "s", FirstPollAfter: -1}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if c.base != tt.base || c.cfg.HTTPTimeout != defaultHTTPTimeout || c.cfg.MinPollInterval != defaultMinPollInterval ||
				c.cfg.FirstPollAfter != defaultFirstPollAfter {
				t.Errorf("client = %+v", c)
			}
		})
	}
}

func TestError(t *testing.T) {
	tests := []struct {
		name      string
		err       *Error
		transient bool
		text      string
	}{
		{name: "ok/network", err: &Error{Message: "request to DPS failed", cause: errors.New("connection refused")}, transient: true, text: "dps: request to DPS failed: connection refused"},
		{name: "ok/408", err: &Error{StatusCode: 408}, transient: true},
		{name: "ok/429", err: &Error{StatusCode: 429, ErrorCode: 429001, Message: "throttled", RetryAfter: 3 * time.Second}, transient: true, text: "dps: HTTP 429: throttled (errorCode 429001) (retry after 3s)"},
		{name: "ok/503", err: &Error{StatusCode: 503}, transient: true},
		{name: "fail/400", err: &Error{StatusCode: 400}},
		{name: "fail/401", err: &Error{StatusCode: 401, ErrorCode: 401002, Message: "Invalid certificate.", TrackingID: "abc"}, text: "dps: HTTP 401: Invalid certificate. (errorCode 401002) (trackingId abc)"},
		{name: "fail/403", err: &Error{StatusCode: 403}},
		{name: "fail/404", err: &Error{StatusCode: 404}},
		{name: "fail/failed operation", err: finalError(&Operation{Status: StatusFailed, State: &RegistrationState{ErrorCode: 400209, ErrorMessage: "nope"}}), text: "dps: nope (errorCode 400209)"},
		{name: "fail/bad argument", err: &Error{Message: "x", permanent: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Transient(); got != tt.transient {
				t.Errorf("Transient() = %v, want %v", got, tt.transient)
			}
			if tt.text != "" && tt.err.Error() != tt.text {
				t.Errorf("Error() = %q, want %q", tt.err.Error(), tt.text)
			}
		})
	}
}

func TestRegister_oversizedAnswer(t *testing.T) {
	pki := dpsemutest.NewPKI(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, `{"operationId":"o","status":"assigning","pad":"%s"}`, strings.Repeat("x", maxResponseBytes))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.Server(t)}, ClientAuth: tls.RequireAnyClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c := newClient(t, srv, pki, "0ne00000000")
	_, err := registerOnce(context.Background(), c, "dev-1", pki.Device(t, "dev-1"))
	if de := asError(t, err); !strings.Contains(de.Message, "1 MiB") {
		t.Errorf("error = %+v", de)
	}
}

// TestRegister_retryAfter: a throttled answer's Retry-After reaches the *Error, bounded
// by maxRetryAfter even when the number is beyond int64 (an earlier parser gave 0 there,
// which would have retried at once), and a date or garbage reads as pause.ParseRetryAfter
// says.
func TestRegister_retryAfter(t *testing.T) {
	tests := []struct {
		name, retryAfter string
		want             time.Duration
	}{
		{name: "ok/seconds", retryAfter: "7", want: 7 * time.Second},
		{name: "ok/capped", retryAfter: "999999999999", want: maxRetryAfter},
		{name: "ok/beyond int64 is capped", retryAfter: "99999999999999999999", want: maxRetryAfter},
		{name: "ok/date far ahead is capped", retryAfter: time.Now().Add(3 * time.Hour).Format(http.TimeFormat), want: maxRetryAfter},
		{name: "fail/garbage is none", retryAfter: "soon"},
		{name: "fail/negative is none", retryAfter: "-5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pki := dpsemutest.NewPKI(t)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", tt.retryAfter)
				w.WriteHeader(http.StatusTooManyRequests)
				fmt.Fprint(w, `{"errorCode":429001,"trackingId":"t","message":"throttled"}`)
			}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.Server(t)}, ClientAuth: tls.RequireAnyClientCert}
			srv.StartTLS()
			t.Cleanup(srv.Close)
			c := newClient(t, srv, pki, "0ne00000000")
			_, err := registerOnce(context.Background(), c, "dev-1", pki.Device(t, "dev-1"))
			if de := asError(t, err); de.StatusCode != 429 || !de.Transient() || de.RetryAfter != tt.want {
				t.Errorf("error = %+v, want 429 retry after %v", de, tt.want)
			}
		})
	}
}
