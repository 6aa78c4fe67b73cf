package dpsemu_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/dpsemu"
	"github.com/iotprov/iotprov/internal/dpsemu/dpsemutest"
	"github.com/iotprov/iotprov/internal/testenv"
)

const scope = "0ne00000000"

// device is a raw HTTPS client presenting one certificate, to see the emulator's
// answers byte for byte rather than through the dps client.
type device struct {
	t    *testing.T
	hc   *http.Client
	base string
}

func newDevice(t *testing.T, srv *httptest.Server, pki *dpsemutest.PKI, cert tls.Certificate) *device {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs:      pki.Roots,
		Certificates: []tls.Certificate{cert},
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &device{t: t, hc: &http.Client{Transport: tr}, base: "https://" + srv.Listener.Addr().String()}
}

type reply struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (d *device) do(method, path, body string) reply {
	d.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, d.base+path, rd)
	if err != nil {
		d.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := d.hc.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := reply{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		d.t.Fatalf("%s %s: answer is not a JSON object: %q", method, path, raw)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		d.t.Errorf("Content-Type = %q", ct)
	}
	return r
}

func (d *device) register(id string) reply {
	d.t.Helper()
	return d.do(http.MethodPut, "/"+scope+"/registrations/"+id+"/register?api-version=2021-06-01", `{"registrationId":"`+id+`"}`)
}

func (d *device) poll(id, op string) reply {
	d.t.Helper()
	return d.do(http.MethodGet, "/"+scope+"/registrations/"+id+"/operations/"+op+"?api-version=2021-06-01", "")
}

// wantError checks a DPS-shaped error answer.
func wantError(t *testing.T, r reply, status, code int) {
	t.Helper()
	if r.status != status {
		t.Errorf("status = %d, want %d (%s)", r.status, status, r.raw)
	}
	if got, _ := r.body["errorCode"].(float64); int(got) != code {
		t.Errorf("errorCode = %v, want %d", r.body["errorCode"], code)
	}
	for _, k := range []string{"trackingId", "message", "timestampUtc"} {
		if s, _ := r.body[k].(string); s == "" {
			t.Errorf("error body lacks %s: %s", k, r.raw)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, r.body["timestampUtc"].(string)); err != nil {
		t.Errorf("timestampUtc: %v", err)
	}
}

func TestRegistrationFlow(t *testing.T) {
	emu, srv, pki := dpsemutest.Start(t, dpsemu.Config{AssignedHub: "hub.azure-devices.net"})
	d := newDevice(t, srv, pki, pki.Device(t, "dev-1"))

	put := d.register("dev-1")
	if put.status != http.StatusAccepted || put.body["status"] != "assigning" || put.header.Get("Retry-After") != "1" {
		t.Fatalf("PUT answer %d %v %s", put.status, put.header, put.raw)
	}
	opID, _ := put.body["operationId"].(string)
	if !strings.HasPrefix(opID, "4.") || strings.Count(opID, ".") != 2 {
		t.Errorf("operationId %q is not shaped like DPS's", opID)
	}
	if _, ok := put.body["registrationState"]; ok {
		t.Errorf("PUT answer carries registrationState: %s", put.raw)
	}

	get := d.poll("dev-1", opID)
	if get.status != http.StatusOK || get.body["status"] != "assigned" || get.body["operationId"] != opID {
		t.Fatalf("GET answer %d %s", get.status, get.raw)
	}
	if get.header.Get("Retry-After") != "" {
		t.Errorf("final answer has Retry-After")
	}
	st, _ := get.body["registrationState"].(map[string]any)
	for k, want := range map[string]string{
		"registrationId": "dev-1", "assignedHub": "hub.azure-devices.net", "deviceId": "dev-1",
		"status": "assigned", "substatus": "initialAssignment",
	} {
		if st[k] != want {
			t.Errorf("registrationState.%s = %v, want %q", k, st[k], want)
		}
	}
	for _, k := range []string{"createdDateTimeUtc", "lastUpdatedDateTimeUtc"} {
		if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(st[k])); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
	if s, _ := st["etag"].(string); s == "" {
		t.Error("no etag")
	}
	x, _ := st["x509"].(map[string]any)
	ci, _ := x["certificateInfo"].(map[string]any)
	si, _ := x["signingCertificateInfo"].(map[string]any)
	if x["enrollmentGroupId"] != "iotprov-emulator" || ci["subjectName"] != "CN=dev-1" ||
		len(fmt.Sprint(ci["sha256Thumbprint"])) != 64 || si["subjectName"] != "CN=dpsemutest intermediate" {
		t.Errorf("x509 = %v", x)
	}

	// Polling a finished operation again gives the same final answer.
	if again := d.poll("dev-1", opID); again.status != 200 || again.raw != get.raw {
		t.Errorf("second poll differs: %s", again.raw)
	}

	// Re-provisioning: a new operation, the same device, the other substatus.
	put2 := d.register("dev-1")
	op2, _ := put2.body["operationId"].(string)
	if op2 == opID || op2 == "" {
		t.Fatalf("re-registration operationId %q", op2)
	}
	st2, _ := d.poll("dev-1", op2).body["registrationState"].(map[string]any)
	if st2["substatus"] != "reprovisionedToInitialAssignment" || st2["deviceId"] != "dev-1" ||
		st2["createdDateTimeUtc"] != st["createdDateTimeUtc"] {
		t.Errorf("re-provisioned state = %v", st2)
	}
	if got := emu.Stats(); got != (dpsemu.Stats{Registrations: 2, Assigned: 2, Polls: 3}) {
		t.Errorf("stats = %+v", got)
	}
	if got := emu.Devices(); len(got) != 1 || got["dev-1"] != "dev-1" {
		t.Errorf("devices = %v", got)
	}
}

func TestAssigning(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	_, srv, pki := dpsemutest.Start(t, dpsemu.Config{AssignDelay: 5 * time.Second, PollRetryAfter: 3 * time.Second, Now: clock.Now})
	d := newDevice(t, srv, pki, pki.Device(t, "dev-1"))
	op, _ := d.register("dev-1").body["operationId"].(string)

	r := d.poll("dev-1", op)
	st, _ := r.body["registrationState"].(map[string]any)
	if r.status != http.StatusAccepted || r.body["status"] != "assigning" || r.header.Get("Retry-After") != "3" ||
		st["registrationId"] != "dev-1" || st["status"] != "assigning" {
		t.Fatalf("poll while assigning: %d %v %s", r.status, r.header, r.raw)
	}
	clock.Advance(5 * time.Second)
	if r := d.poll("dev-1", op); r.status != http.StatusOK || r.body["status"] != "assigned" {
		t.Fatalf("poll after the delay: %d %s", r.status, r.raw)
	}
}

func TestErrors(t *testing.T) {
	emu, srv, pki := dpsemutest.Start(t, dpsemu.Config{})
	d1 := newDevice(t, srv, pki, pki.Device(t, "dev-1"))
	op1, _ := d1.register("dev-1").body["operationId"].(string)

	tests := []struct {
		name   string
		dev    *device
		method string
		path   string
		body   string
		status int
		code   int
	}{
		{name: "fail/CN is not the registration ID", dev: d1, method: "PUT", path: "/" + scope + "/registrations/dev-2/register?api-version=2021-06-01",
			body: `{"registrationId":"dev-2"}`, status: 401, code: 401002},
		{name: "fail/untrusted chain", dev: newDevice(t, srv, pki, dpsemutest.NewPKI(t).Device(t, "dev-1")), method: "PUT",
			path: "/" + scope + "/registrations/dev-1/register?api-version=2021-06-01", body: `{"registrationId":"dev-1"}`, status: 401, code: 401002},
		{name: "fail/body names another device", dev: d1, method: "PUT", path: "/" + scope + "/registrations/dev-1/register?api-version=2021-06-01",
			body: `{"registrationId":"dev-2"}`, status: 400, code: 400004},
		{name: "fail/body not JSON", dev: d1, method: "PUT", path: "/" + scope + "/registrations/dev-1/register?api-version=2021-06-01",
			body: `registrationId=dev-1`, status: 400, code: 400004},
		{name: "fail/body without registrationId", dev: d1, method: "PUT", path: "/" + scope + "/registrations/dev-1/register?api-version=2021-06-01",
			body: `{}`, status: 400, code: 400004},
		{name: "fail/unknown api-version", dev: d1, method: "PUT", path: "/" + scope + "/registrations/dev-1/register?api-version=2017-01-01",
			body: `{"registrationId":"dev-1"}`, status: 400, code: 400001},
		{name: "fail/no api-version", dev: d1, method: "GET", path: "/" + scope + "/registrations/dev-1/operations/" + op1, status: 400, code: 400001},
		{name: "fail/other ID scope", dev: d1, method: "PUT", path: "/0ne11111111/registrations/dev-1/register?api-version=2021-06-01",
			body: `{"registrationId":"dev-1"}`, status: 404, code: 404001},
		{name: "fail/unknown operation", dev: d1, method: "GET", path: "/" + scope + "/registrations/dev-1/operations/4.0.nope?api-version=2021-06-01", status: 404, code: 404002},
		{name: "fail/another device's operation", dev: newDevice(t, srv, pki, pki.Device(t, "dev-2")), method: "GET",
			path: "/" + scope + "/registrations/dev-2/operations/" + op1 + "?api-version=2021-06-01", status: 404, code: 404002},
		{name: "fail/unknown path", dev: d1, method: "GET", path: "/" + scope + "/enrollments/dev-1?api-version=2021-06-01", status: 404, code: 404001},
		{name: "fail/GET on register", dev: d1, method: "GET", path: "/" + scope + "/registrations/dev-1/register?api-version=2021-06-01", status: 405, code: 405001},
		{name: "fail/PUT on operation", dev: d1, method: "PUT", path: "/" + scope + "/registrations/dev-1/operations/" + op1 + "?api-version=2021-06-01", body: `{}`, status: 405, code: 405001},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantError(t, tt.dev.do(tt.method, tt.path, tt.body), tt.status, tt.code)
		})
	}
	if got := emu.Stats(); got.Registrations != 1 || got.Assigned != 0 {
		t.Errorf("stats = %+v: a refused request changed state", got)
	}
	if len(emu.Devices()) != 0 {
		t.Errorf("devices = %v", emu.Devices())
	}
}

func TestThrottling(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	emu, srv, pki := dpsemutest.Start(t, dpsemu.Config{QuotaPerMinute: 3, PollLimit: 5, Now: clock.Now})
	var ops []string
	devs := map[string]*device{}
	for i := range 3 {
		id := fmt.Sprintf("dev-%d", i)
		devs[id] = newDevice(t, srv, pki, pki.Device(t, id))
		r := devs[id].register(id)
		if r.status != 202 {
			t.Fatalf("%s: %d %s", id, r.status, r.raw)
		}
		ops = append(ops, r.body["operationId"].(string))
		clock.Advance(10 * time.Second)
	}
	// Quota: 3 PUTs at t=0,10,20; now t=30; the first frees at t=60.
	d3 := newDevice(t, srv, pki, pki.Device(t, "dev-3"))
	r := d3.register("dev-3")
	wantError(t, r, 429, 429001)
	if r.header.Get("Retry-After") != "30" {
		t.Errorf("quota Retry-After = %q, want 30", r.header.Get("Retry-After"))
	}
	clock.Advance(30 * time.Second)
	if r := d3.register("dev-3"); r.status != 202 {
		t.Errorf("after the window: %d %s", r.status, r.raw)
	}

	// Poll limit: 5 per device per 10 s, counted per device.
	d0 := devs["dev-0"]
	for i := range 5 {
		if r := d0.poll("dev-0", ops[0]); r.status != 200 {
			t.Fatalf("poll %d: %d %s", i, r.status, r.raw)
		}
		clock.Advance(time.Second)
	}
	r = d0.poll("dev-0", ops[0])
	wantError(t, r, 429, 429001)
	if r.header.Get("Retry-After") != "5" {
		t.Errorf("poll Retry-After = %q, want 5", r.header.Get("Retry-After"))
	}
	if r := devs["dev-1"].poll("dev-1", ops[1]); r.status != 200 {
		t.Errorf("another device was throttled: %d", r.status)
	}
	clock.Advance(5 * time.Second)
	if r := d0.poll("dev-0", ops[0]); r.status != 200 {
		t.Errorf("after the poll window: %d %s", r.status, r.raw)
	}
	if st := emu.Stats(); st.Throttled != 2 || st.Registrations != 4 {
		t.Errorf("stats = %+v", st)
	}
}

func TestFaults(t *testing.T) {
	tests := []struct {
		name   string
		rate   float64
		faults bool
	}{
		{name: "ok/rate 0", rate: 0},
		{name: "fail/rate 1", rate: 1, faults: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			emu, srv, pki := dpsemutest.Start(t, dpsemu.Config{FaultRate: tt.rate, Rand: mrand.New(mrand.NewPCG(1, 2))})
			d := newDevice(t, srv, pki, pki.Device(t, "dev-1"))
			seen := map[int]bool{}
			for range 20 {
				r := d.register("dev-1")
				seen[r.status] = true
				if tt.faults {
					code := 500000
					if r.status == 503 {
						code = 503000
					}
					wantError(t, r, r.status, code)
					if r.status != 500 && r.status != 503 {
						t.Fatalf("status %d", r.status)
					}
				} else if r.status != 202 {
					t.Fatalf("status %d", r.status)
				}
			}
			st := emu.Stats()
			if tt.faults && (st.Faults != 20 || st.Registrations != 0 || !seen[500] || !seen[503]) {
				t.Errorf("stats %+v, statuses %v: want 20 faults of both kinds", st, seen)
			}
			if !tt.faults && st.Faults != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestFaultRateFraction(t *testing.T) {
	emu, srv, pki := dpsemutest.Start(t, dpsemu.Config{FaultRate: 0.3, Rand: mrand.New(mrand.NewPCG(7, 7))})
	d := newDevice(t, srv, pki, pki.Device(t, "dev-1"))
	for range 200 {
		d.register("dev-1")
	}
	st := emu.Stats()
	if st.Faults < 30 || st.Faults > 90 || st.Faults+st.Registrations != 200 {
		t.Errorf("stats = %+v, want about 60 faults in 200", st)
	}
}

func TestLatency(t *testing.T) {
	_, srv, pki := dpsemutest.Start(t, dpsemu.Config{Latency: 200 * time.Millisecond})
	d := newDevice(t, srv, pki, pki.Device(t, "dev-1"))
	start := time.Now()
	d.register("dev-1")
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("took %v, want ≥ 200ms", took)
	}
}

func TestOutcome(t *testing.T) {
	_, srv, pki := dpsemutest.Start(t, dpsemu.Config{Outcome: func(id string) (string, int, string) {
		if id == "dev-bad" {
			return "failed", 400209, "Custom allocation failed."
		}
		return "", 0, ""
	}})
	d := newDevice(t, srv, pki, pki.Device(t, "dev-bad"))
	op, _ := d.register("dev-bad").body["operationId"].(string)
	r := d.poll("dev-bad", op)
	st, _ := r.body["registrationState"].(map[string]any)
	if r.status != 200 || r.body["status"] != "failed" || st["errorCode"] != float64(400209) ||
		st["errorMessage"] != "Custom allocation failed." || st["assignedHub"] != nil {
		t.Errorf("failed answer: %d %s", r.status, r.raw)
	}
}

func TestLogging(t *testing.T) {
	var buf testenv.SyncBuffer
	_, srv, pki := dpsemutest.Start(t, dpsemu.Config{Logger: slog.New(slog.NewJSONHandler(&buf, nil))})
	cert := pki.Device(t, "dev-1")
	d := newDevice(t, srv, pki, cert)
	d.register("dev-1")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("log lines = %q", lines)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["method"] != "PUT" || rec["status"] != float64(202) || rec["registrationId"] != "dev-1" ||
		!strings.Contains(fmt.Sprint(rec["path"]), "/registrations/dev-1/register") {
		t.Errorf("log line = %v", rec)
	}
	if strings.Contains(buf.String(), "CERTIFICATE") || strings.Contains(buf.String(), "MII") {
		t.Error("log line carries certificate material")
	}
}

func TestConcurrent(t *testing.T) {
	emu, srv, pki := dpsemutest.Start(t, dpsemu.Config{QuotaPerMinute: 25})
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for i := range 40 {
		id := fmt.Sprintf("dev-%02d", i)
		d := newDevice(t, srv, pki, pki.Device(t, id))
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := d.register(id)
			if r.status == 202 {
				d.poll(id, r.body["operationId"].(string))
			}
			mu.Lock()
			statuses[r.status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if statuses[202] != 25 || statuses[429] != 15 {
		t.Errorf("statuses = %v, want 25 accepted and 15 throttled", statuses)
	}
	if st := emu.Stats(); st.Assigned != 25 || len(emu.Devices()) != 25 {
		t.Errorf("stats = %+v, devices = %d", st, len(emu.Devices()))
	}
}
