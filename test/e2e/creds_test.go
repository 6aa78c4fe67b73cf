package e2e

// Credentials for test devices, minted from the stack's material the way an operator or a
// device would: SAS tokens from the group key, and Beam headers, JWTs and bootstrap
// certificates from the iotprov CLI. Every test mints them here so that a change in how a
// credential is made is a change in one place.

import (
	"crypto/tls"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/devstack"
)

// sasKit makes SAS credentials from the stack's default group key.
type sasKit struct{ groupKey []byte }

func newSASKit(t *testing.T, s *devstack.Stack) sasKit {
	t.Helper()
	b, err := os.ReadFile(s.Material.SecretFile(devstack.SecretSASGroupKey))
	if err != nil {
		t.Fatal(err)
	}
	return sasKit{groupKey: decodeB64(t, strings.TrimSpace(string(b)))}
}

// deviceKey is the device's key derived from the group key, as the device holds it.
func (k sasKit) deviceKey(id string) []byte { return auth.DeriveDeviceKey(k.groupKey, id) }

func (k sasKit) token(id string, expiry time.Time, skn string) map[string]string {
	return map[string]string{"Authorization": auth.NewSASToken(k.deviceKey(id), id, expiry.Unix(), skn)}
}

func (k sasKit) valid(id string) map[string]string {
	return k.token(id, time.Now().Add(time.Hour), "registration")
}

// authorization is the Authorization header value of a valid token for id.
func (k sasKit) authorization(id string) string { return k.valid(id)["Authorization"] }

func decodeB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cliCredentials mints credentials with the iotprov CLI, as an operator would.
type cliCredentials struct {
	t   *testing.T
	bin string
	s   *devstack.Stack
}

// stackCLI is the iotprov CLI that startStack built, minting from s's material; t is the
// test (or subtest) that fails when a command does, and owns any files written.
func stackCLI(t *testing.T, s *devstack.Stack) cliCredentials {
	return cliCredentials{t: t, bin: filepath.Join(os.Getenv("E2E_BIN"), "iotprov"), s: s}
}

func (k cliCredentials) run(args ...string) string {
	k.t.Helper()
	out, err := exec.Command(k.bin, args...).CombinedOutput()
	if err != nil {
		k.t.Fatalf("iotprov %s: %v\n%s", args[0], err, out)
	}
	return strings.TrimSpace(string(out))
}

// beam returns SORACOM Beam signed headers for an IMSI, signed now. (credential and the
// sec* security names are the contract test's, in openapi_test.go.)
func (k cliCredentials) beam(imsi string) credential {
	k.t.Helper()
	return credential{header: k.beamHeaders("--imsi", imsi, "--imei", "860000012345678"), security: secBeamIMSI}
}

// beamSIM returns Beam signed headers that carry a SIM ID and no IMSI.
func (k cliCredentials) beamSIM(simID string) credential {
	k.t.Helper()
	return credential{header: k.beamHeaders("--sim-id", simID), security: secBeamSIMID}
}

// beamHeaders runs `iotprov beam` with the stack's PSK and returns the headers it
// prints (one `-H Name:value` a line, for curl), as a fresh map the caller may change.
func (k cliCredentials) beamHeaders(args ...string) map[string]string {
	k.t.Helper()
	h := map[string]string{}
	out := k.run(append([]string{"beam", "--psk-file", k.s.Material.SecretFile(devstack.SecretBeamPSK)}, args...)...)
	for _, line := range strings.Split(out, "\n") {
		name, v, ok := strings.Cut(strings.TrimPrefix(line, "-H "), ":")
		if !ok {
			k.t.Fatalf("iotprov beam printed %q", line)
		}
		h[name] = v
	}
	return h
}

// jwt returns a Bearer token for sub from the stack's dev issuer; args override claims.
func (k cliCredentials) jwt(sub string, args ...string) credential {
	k.t.Helper()
	return credential{header: map[string]string{"Authorization": k.jwtToken(sub, args...)}, security: secJWT}
}

// jwtToken is jwt's Authorization header value ("Bearer <JWT>").
func (k cliCredentials) jwtToken(sub string, args ...string) string {
	k.t.Helper()
	return k.run(append([]string{"jwt", "--key-file", k.s.Material.JWTSigningKeyFile(), "--sub", sub}, args...)...)
}

// bootstrapCert returns a factory certificate with this CN from the stack's manufacturer CA.
func (k cliCredentials) bootstrapCert(cn string) tls.Certificate {
	k.t.Helper()
	cert, err := tls.LoadX509KeyPair(k.bootstrapCertFiles(cn))
	if err != nil {
		k.t.Fatal(err)
	}
	return cert
}

// bootstrapCertFiles writes a factory certificate and its key, as `iotprov
// bootstrap-cert` leaves them for the device, into a temporary folder of the test.
func (k cliCredentials) bootstrapCertFiles(cn string) (certFile, keyFile string) {
	k.t.Helper()
	dir := k.t.TempDir()
	certFile, keyFile = filepath.Join(dir, "boot.pem"), filepath.Join(dir, "boot-key.pem")
	k.run("bootstrap-cert", "--ca-file", k.s.Material.ManufacturerCAFile(), "--cn", cn, "--out-cert", certFile, "--out-key", keyFile)
	return certFile, keyFile
}

// device adds or changes the device's entry in the policy table (`iotprov devices`).
func (k cliCredentials) device(verb, deviceID string) {
	k.t.Helper()
	k.run("devices", verb, "--connection-string", stackStorage(k.t, k.s), "--id", deviceID)
}
