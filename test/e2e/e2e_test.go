// Package e2e runs the whole local stack — real Azurite, the DPS emulator, mosquitto as
// the IoT Hub stand-in and the handler binary in local-runner mode — and drives it as a
// device would: the README's own device script, then the error cases of the device API.
package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/deviceclient"
	"github.com/iotprov/iotprov/internal/devstack"
	"github.com/iotprov/iotprov/internal/testenv"
)

// stackOptions tune a test's stack: handler settings over the sample's, and DPSEMU_*
// knobs for the emulator (e.g. "DPSEMU_FAULT_RATE=0.2").
type stackOptions struct {
	Settings map[string]string
	DPSEnv   []string
}

// stack starts a fresh local stack on free ports for one test.
func stack(t *testing.T, settings map[string]string) *devstack.Stack {
	t.Helper()
	return startStack(t, stackOptions{Settings: settings})
}

// startStack starts a fresh local stack on free ports; it is stopped when t ends.
func startStack(t *testing.T, o stackOptions) *devstack.Stack {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end: needs Azurite and mosquitto (not run with -short)")
	}
	for _, tool := range []string{"mosquitto", "mosquitto_pub", "jq", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: apt-get install -y mosquitto mosquitto-clients jq curl", tool)
		}
	}
	root := testenv.ModuleRoot()
	bin := t.TempDir()
	for name, pkg := range map[string]string{"handler": "./handler", "dpsemu": "./cmd/dpsemu", "iotprov": "./cmd/iotprov"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, name), pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, out)
		}
	}
	azurite := os.Getenv(testenv.EnvAzuriteBin)
	if azurite == "" {
		azurite = filepath.Join(root, ".tools", "node_modules", ".bin", "azurite")
	}
	sample, err := devstack.ReadSample(filepath.Join(root, "local.settings.sample.json"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range o.Settings {
		sample[k] = v
	}
	ports := devstack.Ports{Blob: testenv.FreePort(t), Queue: testenv.FreePort(t), Table: testenv.FreePort(t),
		DPS: testenv.FreePort(t), MQTT: testenv.FreePort(t), API: testenv.FreePort(t)}
	logs := &testenv.SyncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := devstack.Start(ctx, devstack.Options{
		Dir: t.TempDir(), Ports: ports, BinDir: bin, AzuriteBin: azurite, Settings: sample, DPSEnv: o.DPSEnv, Log: logs,
	})
	if err != nil {
		t.Fatalf("start the local stack: %v\n%s", err, logs.String())
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("stack output:\n%s", logs.String())
		}
	})
	t.Setenv("E2E_BIN", bin)
	t.Setenv("E2E_MQTT_PORT", fmt.Sprint(ports.MQTT))
	return s
}

// readmeDeviceScript is the device flow exactly as README.md shows it, between markers.
func readmeDeviceScript(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.ModuleRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- device-flow:start -->\\s*```sh\n(.*?)```\\s*<!-- device-flow:end -->").FindSubmatch(b)
	if m == nil {
		t.Fatal("README.md has no device-flow block between <!-- device-flow:start --> and <!-- device-flow:end -->")
	}
	return string(m[1])
}

// TestDeviceFlowFromREADME runs the README's device script against the stack and expects
// mosquitto_pub to connect with the issued certificate and publish.
func TestDeviceFlowFromREADME(t *testing.T) {
	s := stack(t, nil)
	script := readmeDeviceScript(t)
	// The stand-in listens on a free port in tests; the README uses IoT Hub's 8883.
	script = strings.ReplaceAll(script, "-p 8883", `-p "$E2E_MQTT_PORT"`)
	script = strings.ReplaceAll(script, "bin/iotprov", `"$E2E_BIN/iotprov"`)
	script = strings.ReplaceAll(script, ".local/secrets/sas-group-key", s.Material.SecretFile(devstack.SecretSASGroupKey))
	script = strings.ReplaceAll(script, "http://127.0.0.1:7071", s.BaseURL)

	work := t.TempDir()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = work
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("device script failed: %v\n%s", err, out.String())
		}
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("device script did not finish in 90s\n%s", out.String())
	}
	got := out.String()
	for _, want := range []string{"received CONNACK (0)", "sending PUBLISH"} {
		if !strings.Contains(strings.ToLower(got), strings.ToLower(want)) {
			t.Errorf("mosquitto_pub output lacks %q:\n%s", want, got)
		}
	}
	// The files the device wrote are a usable credential: the key matches the
	// certificate, and the chain verifies to the device CA the stand-in trusts.
	certPEM, _ := os.ReadFile(filepath.Join(work, "certificate.pem"))
	keyPEM, _ := os.ReadFile(filepath.Join(work, "privatekey.pem"))
	if !bytes.Contains(keyPEM, []byte("BEGIN PRIVATE KEY")) {
		t.Errorf("privatekey.pem is not PKCS#8 PEM")
	}
	verifyDeviceChain(t, s, certPEM, "my-device-1")
}

func verifyDeviceChain(t *testing.T, s *devstack.Stack, chainPEM []byte, deviceID string) {
	t.Helper()
	roots, err := deviceRoots(s)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := deviceclient.VerifyChain(string(chainPEM), deviceID, roots)
	if err != nil {
		t.Fatalf("device certificate: %v", err)
	}
	if len(certs) < 2 {
		t.Fatalf("certificate chain has %d certificates, want the device certificate and its issuer", len(certs))
	}
}

// deviceRoots is the stack's device root CA, which every issued chain must verify to.
func deviceRoots(s *devstack.Stack) (*x509.CertPool, error) {
	rootPEM, err := os.ReadFile(s.Material.DeviceRootFile())
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return nil, fmt.Errorf("%s holds no certificate", s.Material.DeviceRootFile())
	}
	return roots, nil
}

// device is a test device with a SAS credential from the stack's group key.
type device struct {
	t    *testing.T
	base string
	auth string
}

func newDevice(t *testing.T, s *devstack.Stack, id string) *device {
	t.Helper()
	return &device{t: t, base: s.BaseURL, auth: newSASKit(t, s).authorization(id)}
}

func (d *device) do(method, path, contentType string, body io.Reader, hdr map[string]string) (*http.Response, map[string]any) {
	d.t.Helper()
	req, err := http.NewRequest(method, d.base+path, body)
	if err != nil {
		d.t.Fatal(err)
	}
	if d.auth != "" {
		req.Header.Set("Authorization", d.auth)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer res.Body.Close()
	var m map[string]any
	raw, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(raw, &m); err != nil {
		d.t.Fatalf("%s %s: answer is not JSON (%d): %q", method, path, res.StatusCode, raw)
	}
	return res, m
}

func (d *device) register() string {
	d.t.Helper()
	res, body := d.do(http.MethodPost, "/v1/provisioning/azure/iot/register", "", nil, nil)
	if res.StatusCode != http.StatusAccepted {
		d.t.Fatalf("register: %d %v", res.StatusCode, body)
	}
	id, _ := body["operationId"].(string)
	if res.Header.Get("Location") != "/v1/provisioning/azure/iot/registrations/"+id || res.Header.Get("Retry-After") == "" {
		d.t.Errorf("register headers: Location %q Retry-After %q", res.Header.Get("Location"), res.Header.Get("Retry-After"))
	}
	return id
}

func (d *device) await(opID string) map[string]any {
	d.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		res, body := d.do(http.MethodGet, "/v1/provisioning/azure/iot/registrations/"+opID, "", nil, nil)
		if res.StatusCode == http.StatusOK {
			if res.Header.Get("Cache-Control") != "no-store" {
				d.t.Errorf("assigned answer without Cache-Control: no-store")
			}
			return body
		}
		if res.StatusCode != http.StatusAccepted || body["status"] != "assigning" {
			d.t.Fatalf("poll: %d %v", res.StatusCode, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	d.t.Fatalf("operation %s not finished after 60s", opID)
	return nil
}

// TestDeviceAPI covers the API's contract on the running stack: idempotent register,
// poll binding, re-provisioning interval, and the error answers.
func TestDeviceAPI(t *testing.T) {
	s := stack(t, map[string]string{"IOTPROV_REGISTRATION_MIN_INTERVAL": "1h", "IOTPROV_POLL_INTERVAL": "3s"})
	alice := newDevice(t, s, "alice-1")
	bob := newDevice(t, s, "bob-1")

	first := alice.register()
	if again := alice.register(); again != first {
		t.Errorf("second register while in flight gave %s, want the same operation %s", again, first)
	}
	// What devices are told to wait while in flight is the operator's IOTPROV_POLL_INTERVAL.
	if res, _ := alice.do(http.MethodPost, "/v1/provisioning/azure/iot/register", "", nil, nil); res.Header.Get("Retry-After") != "3" {
		t.Errorf("register in flight: Retry-After %q, want 3 (IOTPROV_POLL_INTERVAL=3s)", res.Header.Get("Retry-After"))
	}
	// Bob cannot see Alice's operation: the same 404 as an unknown one.
	res, body := bob.do(http.MethodGet, "/v1/provisioning/azure/iot/registrations/"+first, "", nil, nil)
	expectError(t, res, body, http.StatusNotFound, "operation_not_found")

	got := alice.await(first)
	if got["status"] != "assigned" || got["deviceId"] != "alice-1" || got["host"] != "localhost" {
		t.Fatalf("assigned answer: %v", got)
	}
	for _, f := range []string{"certificate", "privateKey", "rootCaCertificate"} {
		if v, _ := got[f].(string); !strings.Contains(v, "-----BEGIN") {
			t.Errorf("%s is not PEM: %q", f, v)
		}
	}
	verifyDeviceChain(t, s, []byte(got["certificate"].(string)), "alice-1")

	// A finished operation and a 1h minimum interval: the next register is throttled.
	res, body = alice.do(http.MethodPost, "/v1/provisioning/azure/iot/register", "", nil, nil)
	expectError(t, res, body, http.StatusTooManyRequests, "too_many_registrations")
	if res.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}

	cases := []struct {
		name        string
		dev         *device
		method      string
		path        string
		contentType string
		body        string
		status      int
		code        string
	}{
		{"fail/no-credential", &device{t: t, base: s.BaseURL}, "POST", "/v1/provisioning/azure/iot/register", "", "", 401, "missing_credential"},
		{"fail/bad-signature", &device{t: t, base: s.BaseURL, auth: strings.Replace(bob.auth, "sig=", "sig=AAAA", 1)}, "POST", "/v1/provisioning/azure/iot/register", "", "", 401, "invalid_credential"},
		{"fail/malformed-json", bob, "POST", "/v1/provisioning/azure/iot/register", "application/json", `{"csr":`, 400, "malformed_json"},
		{"fail/bad-csr", bob, "POST", "/v1/provisioning/azure/iot/register", "application/json", `{"csr":"bm90IGEgY3Ny"}`, 400, "invalid_csr"},
		{"fail/not-json", bob, "POST", "/v1/provisioning/azure/iot/register", "text/plain", `hello`, 415, "unsupported_media_type"},
		{"fail/too-large", bob, "POST", "/v1/provisioning/azure/iot/register", "application/json", `{"csr":"` + strings.Repeat("A", 17<<10) + `"}`, 413, "body_too_large"},
		{"fail/wrong-method", bob, "GET", "/v1/provisioning/azure/iot/register", "", "", 405, "method_not_allowed"},
		{"fail/unknown-operation", bob, "GET", "/v1/provisioning/azure/iot/registrations/0e8e5b9c-2d7a-4d6e-9f65-3f0a3c1f2b11", "", "", 404, "operation_not_found"},
		{"fail/unknown-path", bob, "GET", "/v1/nothing", "", "", 404, "not_found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.dev.t = t
			var rd io.Reader
			if tc.body != "" {
				rd = strings.NewReader(tc.body)
			}
			res, body := tc.dev.do(tc.method, tc.path, tc.contentType, rd, nil)
			expectError(t, res, body, tc.status, tc.code)
			if tc.status == 401 && res.Header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	// Nothing was lost or created by the refused requests: bob's first real register works.
	bob.t = t
	if op := bob.await(bob.register()); op["status"] != "assigned" {
		t.Errorf("bob after refused requests: %v", op)
	}
}

func expectError(t *testing.T, res *http.Response, body map[string]any, status int, code string) {
	t.Helper()
	e, _ := body["error"].(map[string]any)
	// A missing message is nil in e, not "": read it as a string so absent and empty both fail.
	msg, _ := e["message"].(string)
	if res.StatusCode != status || e == nil || e["code"] != code || msg == "" {
		t.Errorf("got %d %v, want %d with error code %q", res.StatusCode, body, status, code)
	}
}
