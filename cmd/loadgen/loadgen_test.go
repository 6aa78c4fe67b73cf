package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/deviceclient"
	"github.com/iotprov/iotprov/internal/devstack"
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

func TestStackCPU(t *testing.T) {
	const ms = time.Millisecond
	proc := func(cpu time.Duration) *devstack.ProcStats { return &devstack.ProcStats{CPU: cpu} }
	// before is a stack the bench started: every process read.
	before := snapshot{proc: proc(time.Second), cpu: map[string]time.Duration{"azurite": 2 * time.Second, "dpsemu": 500 * ms, "loadgen": 3 * time.Second}}
	const allMetric = "stack CPU per device (azurite / dpsemu / handler / loadgen = total)"
	const boundMetric = "devices/s these cores allow at this CPU per device"
	tests := []struct {
		name      string
		a, b      snapshot
		devices   int
		want      map[string]float64 // nil: no figure at all
		wantBound float64            // 0: no bound (a process was not measured)
		wantRows  map[string]string  // metric → value; a metric mapped to "" must be absent
	}{
		{
			name: "ok/every process measured",
			a:    before,
			b: snapshot{proc: proc(1340 * ms), cpu: map[string]time.Duration{
				"azurite": 2610 * ms, "dpsemu": 620 * ms, "loadgen": 3200 * ms}},
			devices:   100,
			want:      map[string]float64{"azurite": 6.1, "dpsemu": 1.2, "handler": 3.4, "loadgen": 2, "total": 12.7},
			wantBound: 157.5, // 2 CPUs / 12.7 ms
			wantRows: map[string]string{
				allMetric:                "6.10 / 1.20 / 3.40 / 2.00 = 12.70 ms",
				boundMetric:              "157.5 devices/s (2 CPUs / 12.70 ms)",
				"handler CPU per device": "3.40 ms", // the existing row, from the same figure
			},
		},
		{
			name:    "ok/stack started elsewhere: only the handler (from its metrics) and loadgen",
			a:       snapshot{metrics: &handlerMetrics{CPUSeconds: 1}, cpu: map[string]time.Duration{"loadgen": time.Second}},
			b:       snapshot{metrics: &handlerMetrics{CPUSeconds: 1.34}, cpu: map[string]time.Duration{"loadgen": 1200 * ms}},
			devices: 100,
			want:    map[string]float64{"handler": 3.4, "loadgen": 2, "total": 5.4},
			wantRows: map[string]string{
				"stack CPU per device (handler / loadgen = total)": "3.40 / 2.00 = 5.40 ms (not measured: azurite, dpsemu)",
				allMetric:   "",
				boundMetric: "",
			},
		},
		{
			name:    "fail/azurite gone by the end of the load and the handler unknown: both left out",
			a:       snapshot{cpu: before.cpu},
			b:       snapshot{cpu: map[string]time.Duration{"dpsemu": 620 * ms, "loadgen": 3200 * ms}},
			devices: 100,
			want:    map[string]float64{"dpsemu": 1.2, "loadgen": 2, "total": 3.2},
			wantRows: map[string]string{
				"stack CPU per device (dpsemu / loadgen = total)": "1.20 / 2.00 = 3.20 ms (not measured: azurite, handler)",
				boundMetric: "",
			},
		},
		{
			name:    "fail/a counter that went back (another process on a reused PID) is left out",
			a:       before,
			b:       snapshot{proc: proc(1340 * ms), cpu: map[string]time.Duration{"azurite": time.Second, "dpsemu": 620 * ms, "loadgen": 3200 * ms}},
			devices: 100,
			want:    map[string]float64{"dpsemu": 1.2, "handler": 3.4, "loadgen": 2, "total": 6.6},
			wantRows: map[string]string{
				"stack CPU per device (dpsemu / handler / loadgen = total)": "1.20 / 3.40 / 2.00 = 6.60 ms (not measured: azurite)",
				boundMetric: "",
			},
		},
		{
			name:    "fail/no device assigned: no figure",
			a:       before,
			b:       before,
			devices: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := delta(tt.a, tt.b, tt.devices, 2)
			if tt.want == nil {
				if c != nil && c.StackCPUMsPerDevice != nil {
					t.Fatalf("stack CPU = %v, want none", c.StackCPUMsPerDevice)
				}
				return
			}
			if !maps.Equal(c.StackCPUMsPerDevice, tt.want) {
				t.Errorf("stack CPU = %v, want %v", c.StackCPUMsPerDevice, tt.want)
			}
			switch {
			case tt.wantBound == 0 && c.CPUBoundDevicesPerSec != nil:
				t.Errorf("bound = %v, want none", *c.CPUBoundDevicesPerSec)
			case tt.wantBound != 0 && (c.CPUBoundDevicesPerSec == nil || *c.CPUBoundDevicesPerSec != tt.wantBound):
				t.Errorf("bound = %v, want %v", c.CPUBoundDevicesPerSec, tt.wantBound)
			}
			r := &report{Machine: machine{CPUs: 2}, Loads: []loadResult{{Name: "throughput-p256", Devices: tt.devices, Assigned: tt.devices, Cost: c}}}
			got := map[string]string{}
			for _, x := range r.rows() {
				got[x.Metric] = x.Value
			}
			for metric, want := range tt.wantRows {
				if v, ok := got[metric]; want == "" && ok {
					t.Errorf("row %q = %q, want no such row", metric, v)
				} else if want != "" && v != want {
					t.Errorf("row %q = %q, want %q", metric, v, want)
				}
			}
		})
	}
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
