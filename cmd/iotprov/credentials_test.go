package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/testenv"
)

// writeTemp writes data into a fresh temporary file and returns its path.
func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// beamLines parses beam's output: one "-H Name:value" per line, the format scripts and
// test/e2e split.
func beamLines(t *testing.T, out string) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		name, value, ok := strings.Cut(strings.TrimPrefix(line, "-H "), ":")
		if !ok || !strings.HasPrefix(line, "-H ") || strings.ContainsAny(name, " \t") {
			t.Fatalf("line %q is not -H Name:value", line)
		}
		got[name] = value
	}
	return got
}

func TestBeamAgainstIndependentVectors(t *testing.T) {
	_, vectors := testVectors(t)
	for i, v := range vectors {
		psk := writeTemp(t, "beam-psk", []byte(v.PSK+"\n"))
		e, out, errOut := testEnv(t)
		err := run(e, []string{"beam", "--psk-file", psk, "--imsi", v.Headers["x-soracom-imsi"],
			"--imei", v.Headers["x-soracom-imei"], "--timestamp", v.Headers["x-soracom-timestamp"]})
		if err != nil {
			t.Fatal(err)
		}
		if errOut.Len() != 0 {
			t.Errorf("vector %d: stderr %q; test/e2e reads stdout and stderr together", i, errOut)
		}
		got := beamLines(t, out.String())
		if got[auth.BeamHeaderSignature] != v.Signature {
			t.Errorf("vector %d: signature %q, want %q", i, got[auth.BeamHeaderSignature], v.Signature)
		}
		for k, want := range v.Headers {
			if got[http.CanonicalHeaderKey(k)] != want {
				t.Errorf("vector %d: %s = %q, want %q", i, k, got[http.CanonicalHeaderKey(k)], want)
			}
		}
	}
}

func TestBeamTimestampIsTheClock(t *testing.T) {
	psk := writeTemp(t, "beam-psk", []byte("mysecretkey"))
	e, out, _ := testEnv(t)
	now := time.UnixMilli(1445587157992)
	e.now = func() time.Time { return now }
	if err := run(e, []string{"beam", "--psk-file", psk, "--sim-id", "8942310022000012345"}); err != nil {
		t.Fatal(err)
	}
	if got := beamLines(t, out.String())[auth.BeamHeaderTimestamp]; got != "1445587157992" {
		t.Errorf("timestamp %q, want the clock's 1445587157992", got)
	}
}

func TestJWT(t *testing.T) {
	key, err := ca.GenerateKey(ca.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := ca.MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writeTemp(t, "jwt-key.pem", keyPEM)
	e, out, errOut := testEnv(t)
	now := time.Unix(1700000000, 0)
	e.now = func() time.Time { return now }
	if err := run(e, []string{"jwt", "--key-file", keyFile, "--sub", "dev-1", "--ttl", "5m",
		"--claim", "soracom-endorse-claim.imsi=295000012345678"}); err != nil {
		t.Fatal(err)
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr %q", errOut)
	}
	tok, ok := strings.CutPrefix(strings.TrimSpace(out.String()), "Bearer ")
	parts := strings.Split(tok, ".")
	if !ok || len(parts) != 3 {
		t.Fatalf("output %q is not Bearer <JWT>", out)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Sub           string `json:"sub"`
		Iat, Nbf, Exp int64
		Endorse       map[string]string `json:"soracom-endorse-claim"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	if claims.Sub != "dev-1" || claims.Iat != now.Unix() || claims.Nbf != now.Unix() || claims.Exp != now.Add(5*time.Minute).Unix() ||
		claims.Endorse["imsi"] != "295000012345678" {
		t.Errorf("claims %s", payload)
	}
}

func TestCredentialCommandRefusals(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"fail/beam-no-psk", []string{"beam", "--imsi", "295000012345678"}},
		{"fail/beam-no-identity", []string{"beam", "--psk-file", "/nonexistent"}},
		{"fail/jwt-no-subject", []string{"jwt", "--key-file", "/nonexistent"}},
		{"fail/bootstrap-cert-no-cn", []string{"bootstrap-cert", "--ca-file", "/nonexistent"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, out, _ := testEnv(t)
			if err := run(e, tc.args); err == nil || out.Len() != 0 {
				t.Fatalf("err = %v, stdout %q", err, out)
			}
		})
	}
}

func TestBootstrapCert(t *testing.T) {
	factory, err := ca.NewRootCA("factory", 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	factoryKey, err := ca.MarshalPrivateKeyPEM(factory.Signer)
	if err != nil {
		t.Fatal(err)
	}
	caFile := writeTemp(t, "manufacturer-ca.pem", append(factory.CertificatePEM(), factoryKey...))
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "bootstrap.pem"), filepath.Join(dir, "bootstrap-key.pem")
	// Files left world-readable by an earlier run: the new key must not inherit the mode.
	for _, p := range []string{certFile, keyFile} {
		if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o644); err != nil { // in spite of the umask
			t.Fatal(err)
		}
	}
	e, out, _ := testEnv(t)
	if err := run(e, []string{"bootstrap-cert", "--ca-file", caFile, "--cn", "factory-0001", "--out-cert", certFile, "--out-key", keyFile}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "factory-0001") {
		t.Errorf("stdout %q", out)
	}
	for p, want := range map[string]os.FileMode{certFile: 0o644, keyFile: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %o, want %o", filepath.Base(p), fi.Mode().Perm(), want)
		}
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("not a usable credential: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "factory-0001" || leaf.CheckSignatureFrom(factory.Certificate) != nil {
		t.Errorf("leaf %v, issued by %v", leaf.Subject, leaf.Issuer)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("%d files in the output folder, want the two (no temporary left behind)", len(entries))
	}
}

// devicesCommands are the rows of the devices group.
var devicesCommands = []string{"devices add", "devices list", "devices disable", "devices enable"}

// TestDevicesDoNotPrintTheConnectionString: the storage connection string holds the
// account key, and a flag's default is printed in --help and after a flag error.
func TestDevicesDoNotPrintTheConnectionString(t *testing.T) {
	const accountKey = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LWxlYWstb3V0LTEyMzQ1Njc4OTA="
	t.Setenv("AzureWebJobsStorage", "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="+accountKey+
		";TableEndpoint=http://127.0.0.1:1/devstoreaccount1;")
	for _, path := range devicesCommands {
		for _, flagArg := range []string{"--bogus", "--help"} {
			t.Run(strings.ReplaceAll(path, " ", "-")+flagArg, func(t *testing.T) {
				e, out, errOut := testEnv(t)
				err := run(e, append(strings.Fields(path), flagArg))
				if err == nil {
					t.Fatal("accepted")
				}
				// main prints err on standard error too.
				for what, s := range map[string]string{"stdout": out.String(), "stderr": errOut.String(), "error": err.Error()} {
					if strings.Contains(s, accountKey) || strings.Contains(s, "AccountKey") {
						t.Errorf("%s shows the account key:\n%s", what, s)
					}
				}
				if !strings.Contains(errOut.String(), "$AzureWebJobsStorage") {
					t.Errorf("the usage does not say where the connection string comes from:\n%s", errOut)
				}
			})
		}
	}
}

// TestDevicesCheckIDFirst: a bad --id is refused before storage is opened (no
// connection string here, so opening it first would fail on that instead).
func TestDevicesCheckIDFirst(t *testing.T) {
	t.Setenv("AzureWebJobsStorage", "")
	for _, path := range []string{"devices add", "devices disable", "devices enable"} {
		for _, id := range []string{"", "bad id", strings.Repeat("x", 65)} {
			e, out, _ := testEnv(t)
			err := run(e, append(strings.Fields(path), "--id", id))
			if err == nil || !strings.Contains(err.Error(), "--id must be") || out.Len() != 0 {
				t.Errorf("%s --id %q: err = %v, stdout %q", path, id, err, out)
			}
		}
	}
	e, _, _ := testEnv(t)
	if err := run(e, []string{"devices", "add", "--id", "dev-1", "--min-interval", "soon"}); err == nil || !strings.Contains(err.Error(), "--min-interval") {
		t.Errorf("bad --min-interval: %v", err)
	}
	e, _, _ = testEnv(t)
	if err := run(e, []string{"devices", "list"}); err == nil || !strings.Contains(err.Error(), "AzureWebJobsStorage") {
		t.Errorf("no connection string: %v", err)
	}
}

// TestDevicesAgainstAzurite edits the policy table of a real Azurite as an operator
// would, the connection string coming from the flag or from $AzureWebJobsStorage.
func TestDevicesAgainstAzurite(t *testing.T) {
	cs := testenv.Azurite(t)
	t.Setenv("AzureWebJobsStorage", cs)
	// Unique: IOTPROV_TEST_STORAGE may be an Azurite other tests share.
	id := fmt.Sprintf("cli-test-%d", time.Now().UnixNano())
	devices := func(args ...string) string {
		t.Helper()
		e, out, errOut := testEnv(t)
		if err := run(e, append([]string{"devices"}, args...)); err != nil {
			t.Fatalf("devices %v: %v\nstderr:\n%s", args, err, errOut)
		}
		return out.String()
	}
	row := func(list string) []string {
		t.Helper()
		for _, line := range strings.Split(list, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == id {
				return f
			}
		}
		t.Fatalf("%s is not listed:\n%s", id, list)
		return nil
	}

	if out := devices("add", "--connection-string", cs, "--id", id, "--min-interval", "10m", "--note", "first"); out != "added "+id+"\n" {
		t.Errorf("add printed %q", out)
	}
	if f := row(devices("list")); strings.Join(f[1:], " ") != "enabled 10m0s first" {
		t.Errorf("after add: %q", f)
	}
	if out := devices("disable", "--id", id); out != "disabled "+id+"\n" {
		t.Errorf("disable printed %q", out)
	}
	// Adding again replaces the entry but keeps it disabled.
	devices("add", "--id", id, "--note", "second")
	if f := row(devices("list")); strings.Join(f[1:], " ") != "disabled default second" {
		t.Errorf("after disable and add: %q", f)
	}
	if out := devices("enable", "--id", id); out != "enabled "+id+"\n" {
		t.Errorf("enable printed %q", out)
	}
	if f := row(devices("list")); f[1] != "enabled" {
		t.Errorf("after enable: %q", f)
	}

	// The commands run under the caller's context: cancelled (Ctrl-C), they stop.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	e, _, _ := testEnv(t)
	e.ctx = ctx
	if err := run(e, []string{"devices", "list"}); !errors.Is(err, context.Canceled) {
		t.Errorf("with a cancelled context: %v", err)
	}
}
