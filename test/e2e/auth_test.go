package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/devstack"
	"github.com/iotprov/iotprov/internal/testenv"
)

// TestAuthMethods runs the device flow with each bootstrap method on one local stack
// (all four enabled, as local.settings.sample.json has it), with credentials minted by
// the CLI as an operator would, then the device policy through `iotprov devices`.
func TestAuthMethods(t *testing.T) {
	tlsPort := testenv.FreePort(t)
	s := startStack(t, stackOptions{Settings: map[string]string{
		"IOTPROV_AUTH_METHODS":    "sas,beam,jwt,x509",
		"IOTPROV_TLS_LISTEN_ADDR": fmt.Sprintf("127.0.0.1:%d", tlsPort),
		"IOTPROV_DEVICE_POLICY":   "open",
	}})
	pool, err := s.TrustPool()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("ok/beam", func(t *testing.T) {
		hdr := stackCLI(t, s).beam("295000012345678").header
		d := &flowDevice{t: t, base: s.BaseURL, client: http.DefaultClient, headers: hdr}
		res := d.flow()
		verifyDeviceChain(t, s, []byte(res["certificate"].(string)), "295000012345678")
		// The same signed headers later than the freshness window are refused; a
		// tampered IMSI is refused now.
		hdr["X-Soracom-Imsi"] = "295000012345679"
		code, body := d.post()
		if code != 401 || errorCode(body) != "invalid_credential" {
			t.Errorf("tampered Beam headers: %d %v", code, body)
		}
	})

	t.Run("ok/jwt", func(t *testing.T) {
		cli := stackCLI(t, s)
		tok := cli.jwtToken("jwt-device-1")
		d := &flowDevice{t: t, base: s.BaseURL, client: http.DefaultClient, headers: map[string]string{"Authorization": tok}}
		res := d.flow()
		verifyDeviceChain(t, s, []byte(res["certificate"].(string)), "jwt-device-1")
		// Another audience is refused.
		bad := cli.jwtToken("jwt-device-2", "--aud", "someone-else")
		d.headers["Authorization"] = bad
		if code, body := d.post(); code != 401 || errorCode(body) != "invalid_credential" {
			t.Errorf("wrong audience: %d %v", code, body)
		}
	})

	t.Run("ok/x509", func(t *testing.T) {
		cert := stackCLI(t, s).bootstrapCert("factory-0001")
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}}
		d := &flowDevice{t: t, base: fmt.Sprintf("https://127.0.0.1:%d", tlsPort), client: client}
		res := d.flow()
		verifyDeviceChain(t, s, []byte(res["certificate"].(string)), "factory-0001")

		// X-ARR-ClientCert is not trusted on the local stack: a forged one is refused.
		plain := &flowDevice{t: t, base: s.BaseURL, client: http.DefaultClient,
			headers: map[string]string{"X-ARR-ClientCert": "MIIBforged"}}
		if code, body := plain.post(); code != 401 || errorCode(body) != "untrusted_client_cert_header" {
			t.Errorf("forged X-ARR-ClientCert: %d %v", code, body)
		}
		// A certificate from the device CA (not the manufacturer CA) is refused.
		other := &flowDevice{t: t, base: d.base, client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}}
		if code, body := other.post(); code != 401 || errorCode(body) != "missing_credential" {
			t.Errorf("no client certificate: %d %v", code, body)
		}
	})

	t.Run("fail/disabled-device", func(t *testing.T) {
		cli := stackCLI(t, s)
		cli.device("disable", "blocked-1")
		if !strings.Contains(cli.run("devices", "list", "--connection-string", stackStorage(t, s)), "blocked-1") {
			t.Fatal("devices list does not show blocked-1")
		}
		tok := cli.jwtToken("blocked-1")
		d := &flowDevice{t: t, base: s.BaseURL, client: http.DefaultClient, headers: map[string]string{"Authorization": tok}}
		if code, body := d.post(); code != 403 || errorCode(body) != "device_disabled" {
			t.Fatalf("disabled device: %d %v", code, body)
		}
		cli.device("enable", "blocked-1")
		if res := d.flow(); res["deviceId"] != "blocked-1" {
			t.Fatalf("re-enabled device: %v", res)
		}
	})
}

// stackStorage is the stack's storage connection string, as the handler got it.
func stackStorage(t *testing.T, s *devstack.Stack) string {
	t.Helper()
	cs := s.Settings()["AzureWebJobsStorage"]
	if cs == "" {
		t.Fatal("the stack has no storage connection string")
	}
	return cs
}

// flowDevice runs DESIGN.md §2's device flow with arbitrary credential headers.
type flowDevice struct {
	t       *testing.T
	base    string
	client  *http.Client
	headers map[string]string
}

func (d *flowDevice) do(method, path string) (int, map[string]any) {
	d.t.Helper()
	req, err := http.NewRequest(method, d.base+path, nil)
	if err != nil {
		d.t.Fatal(err)
	}
	for k, v := range d.headers {
		req.Header.Set(k, v)
	}
	res, err := d.client.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		d.t.Fatalf("%s %s: not JSON (%d): %q", method, path, res.StatusCode, raw)
	}
	return res.StatusCode, m
}

func (d *flowDevice) post() (int, map[string]any) {
	return d.do(http.MethodPost, "/v1/provisioning/azure/iot/register")
}

// flow registers and polls until assigned.
func (d *flowDevice) flow() map[string]any {
	d.t.Helper()
	code, body := d.post()
	if code != http.StatusAccepted {
		d.t.Fatalf("register: %d %v", code, body)
	}
	id, _ := body["operationId"].(string)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		code, body = d.do(http.MethodGet, "/v1/provisioning/azure/iot/registrations/"+id)
		if code == http.StatusOK {
			if body["status"] != "assigned" {
				d.t.Fatalf("operation ended %v", body)
			}
			return body
		}
		if code != http.StatusAccepted {
			d.t.Fatalf("poll: %d %v", code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	d.t.Fatalf("operation %s not assigned after 60s", id)
	return nil
}

func errorCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}
