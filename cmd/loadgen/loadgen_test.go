package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/deviceclient"
	"github.com/iotprov/iotprov/internal/testenv"
)

// testCA is a root and the issuing CA below it, as on the local stack.
type testCA struct {
	root, issuing *ca.Authority
	roots         *x509.CertPool
	profile       *ca.Profile
}

func newTestCA(t testing.TB) *testCA {
	h := testenv.NewCAHierarchy(t)
	return &testCA{root: h.Root, issuing: h.Issuing, roots: h.Roots, profile: h.Profile}
}

// answer is what the service sends once a device is assigned; keyPEM empty for a CSR.
func (c *testCA) answer(t testing.TB, id string, pub crypto.PublicKey, keyPEM string) *deviceclient.Answer {
	t.Helper()
	issued, err := c.profile.Issue(c.issuing, ca.Request{DeviceID: id, PublicKey: pub}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &deviceclient.Answer{OperationID: "op-" + id, Status: deviceclient.StatusAssigned, DeviceID: id, Host: "localhost",
		Certificate: string(issued.ChainPEM), PrivateKey: keyPEM, RootCACertificate: string(c.root.CertificatePEM())}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := percentilesOf(d)
	if got != (percentiles{P50: 50, P95: 95, P99: 99, Max: 100}) {
		t.Errorf("percentilesOf(1..100 ms) = %+v", got)
	}
	if got := percentilesOf(nil); got != (percentiles{}) {
		t.Errorf("percentilesOf(nil) = %+v", got)
	}
}

func TestStackLog(t *testing.T) {
	l := &stackLog{}
	out := `handler  | {"time":"x","level":"WARN","msg":"provision: deferred","code":"dps_throttled"}
handler  | {"time":"x","level":"INFO","msg":"provision: step done"}
dpsemu   | {"time":"x","level":"INFO","msg":"dpsemu stopped","registrations":10,"assigned":9,"throttled":4,"faults":0,"polls":20}
`
	// Written in two pieces that split a line, as a pipe may deliver it.
	_, _ = l.Write([]byte(out[:50]))
	_, _ = l.Write([]byte(out[50:]))
	deferrals, dps := l.counts()
	if deferrals != 1 {
		t.Errorf("deferrals = %d, want 1", deferrals)
	}
	if dps == nil || *dps != (dpsStats{Registrations: 10, Assigned: 9, Throttled: 4, Polls: 20}) {
		t.Errorf("dps = %+v", dps)
	}
}

// fakeService speaks the device API: it checks the SAS token, answers register with an
// operation, the first poll with "assigning" and the next with credentials from c.
// throttle429 and unavailable503 first answer that many registers with 429 and that many
// polls with 503, per device.
type fakeService struct {
	t                           *testing.T
	c                           *testCA
	groupKey                    []byte
	throttle429, unavailable503 int
	mu                          sync.Mutex
	registers, polls            map[string]int
	csrs                        map[string]crypto.PublicKey
}

func newFakeService(t *testing.T, c *testCA, groupKey []byte) *fakeService {
	return &fakeService{t: t, c: c, groupKey: groupKey, registers: map[string]int{}, polls: map[string]int{}, csrs: map[string]crypto.PublicKey{}}
}

func (f *fakeService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok, err := auth.ParseSASToken(r.Header.Get("Authorization"))
	if err != nil || tok.Sig != auth.SignSAS(auth.DeriveDeviceKey(f.groupKey, tok.RegistrationID), tok.SR, tok.Expiry) {
		http.Error(w, `{"error":{"code":"unauthorized"}}`, http.StatusUnauthorized)
		return
	}
	id := tok.RegistrationID
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == deviceclient.RegisterPath:
		if f.registers[id]++; f.registers[id] <= f.throttle429 {
			w.Header().Set("Retry-After", "0")
			http.Error(w, `{"error":{"code":"too_many_requests","message":"later"}}`, http.StatusTooManyRequests)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if len(body) > 0 {
			var req struct{ CSR string }
			_ = json.Unmarshal(body, &req)
			b, _ := pem.Decode([]byte(req.CSR))
			csr, err := x509.ParseCertificateRequest(b.Bytes)
			if err != nil {
				http.Error(w, "bad csr", http.StatusBadRequest)
				return
			}
			f.csrs[id] = csr.PublicKey
		}
		w.Header().Set("Retry-After", "0")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"operationId":"op-`+id+`","status":"assigning"}`)
	case r.Method == http.MethodGet && r.URL.Path == deviceclient.RegistrationsPath+"op-"+id:
		f.polls[id]++
		if f.polls[id] <= f.unavailable503 {
			w.Header().Set("Retry-After", "0")
			http.Error(w, `{"error":{"code":"service_unavailable","message":"later"}}`, http.StatusServiceUnavailable)
			return
		}
		if f.polls[id] == f.unavailable503+1 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"operationId":"op-`+id+`","status":"assigning"}`)
			return
		}
		var a *deviceclient.Answer
		if pub, ok := f.csrs[id]; ok {
			a = f.c.answer(f.t, id, pub, "")
		} else {
			k, p := testenv.NewDeviceKey(f.t)
			a = f.c.answer(f.t, id, k.Public(), p)
		}
		_ = json.NewEncoder(w).Encode(a)
	default:
		http.NotFound(w, r)
	}
}

func TestRunLoad(t *testing.T) {
	groupKey := []byte("0123456789abcdef0123456789abcdef")
	for _, csr := range []bool{false, true} {
		name := "ok/server-generated keys"
		if csr {
			name = "ok/csr"
		}
		t.Run(name, func(t *testing.T) {
			c := newTestCA(t)
			svc := httptest.NewServer(newFakeService(t, c, groupKey))
			defer svc.Close()
			f := &fleet{base: svc.URL, hc: svc.Client(), groupKey: groupKey, deviceRoots: c.roots, minPoll: time.Millisecond}
			r := runLoad(context.Background(), f, loadSpec{Name: "t", N: 20, Concurrency: 5, Rate: 500, CSR: csr, Deadline: time.Minute}, "dev")
			if r.Assigned != 20 || r.Failed != 0 || r.Pending != 0 {
				t.Fatalf("assigned %d failed %d pending %d: %v", r.Assigned, r.Failed, r.Pending, r.Errors)
			}
			if r.Polls != 40 || r.DevicesPerSec <= 0 || r.Latency.P99 <= 0 {
				t.Errorf("polls %d (want 40: one assigning, one assigned each), %v devices/s, latency %+v", r.Polls, r.DevicesPerSec, r.Latency)
			}
		})
	}
	t.Run("ok/throttled register and unavailable poll are waited out and counted", func(t *testing.T) {
		c := newTestCA(t)
		fs := newFakeService(t, c, groupKey)
		fs.throttle429, fs.unavailable503 = 1, 1
		svc := httptest.NewServer(fs)
		defer svc.Close()
		f := &fleet{base: svc.URL, hc: svc.Client(), groupKey: groupKey, deviceRoots: c.roots}
		start := time.Now()
		r := runLoad(context.Background(), f, loadSpec{Name: "t", N: 3, Concurrency: 3, Deadline: time.Minute}, "dev")
		if r.Assigned != 3 || r.Throttled != 3 || r.Unavailable != 3 || r.Polls != 9 {
			t.Fatalf("assigned %d throttled %d unavailable %d polls %d (want 3, 3, 3, 9): %v", r.Assigned, r.Throttled, r.Unavailable, r.Polls, r.Errors)
		}
		// Retry-After: 0 on a 429 or 503 still means a second's pause: not a hammering.
		if d := time.Since(start); d < 2*time.Second {
			t.Errorf("done in %s: the 429 and the 503 were not waited out", d)
		}
	})
	t.Run("fail/wrong group key", func(t *testing.T) {
		c := newTestCA(t)
		svc := httptest.NewServer(newFakeService(t, c, groupKey))
		defer svc.Close()
		f := &fleet{base: svc.URL, hc: svc.Client(), groupKey: []byte("another key"), deviceRoots: c.roots}
		r := runLoad(context.Background(), f, loadSpec{Name: "t", N: 3, Concurrency: 3, Deadline: time.Minute}, "dev")
		if r.Failed != 3 || r.Errors["register: 401 unauthorized"] != 3 {
			t.Errorf("failed %d, errors %v; want three 401s", r.Failed, r.Errors)
		}
	})
}

func TestParseFlags(t *testing.T) {
	if _, err := parseFlags([]string{"-scenarios", "throughput,nope"}, io.Discard); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown scenario: err = %v", err)
	}
	o, err := parseFlags([]string{"-set", "IOTPROV_AUTH_METHODS=sas", "-scenarios", "burst"}, io.Discard)
	if err != nil || o.set["IOTPROV_AUTH_METHODS"] != "sas" || !o.want("burst") || o.want("throughput") {
		t.Errorf("parseFlags = %+v, %v", o, err)
	}
}

func FuzzParseDPSStopped(f *testing.F) {
	f.Add(`{"msg":"dpsemu stopped","registrations":1,"throttled":2}`)
	f.Add(`dpsemu stopped`)
	f.Fuzz(func(t *testing.T, s string) {
		if st, ok := parseDPSStopped(s); ok && st == nil {
			t.Error("ok without stats")
		}
	})
}
