package infra_test

import (
	"encoding/base64"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeAz stands in for the Azure CLI: it keeps Key Vault secrets, the DPS certificate and
// the enrollment group as files under $FAKE_STATE and logs every call, so the test can
// check what post-deploy.sh changes on a first run and that a second run changes nothing.
const fakeAz = `#!/usr/bin/env bash
set -eu
S=$FAKE_STATE
echo "az $*" >>"$S/calls"
arg() { local want=$1; shift; while [ $# -gt 0 ]; do [ "$1" = "$want" ] && { echo "$2"; return; }; shift; done; }
query=$(arg --query "$@")
case "$1 $2 $3" in
"deployment group show")
  case "$query" in
  properties.outputs.keyVaultName.value) echo kv1 ;;
  properties.outputs.keyVaultUri.value) echo https://kv1.vault.azure.net/ ;;
  properties.outputs.dpsName.value) echo dps1 ;;
  properties.outputs.iotHubHostName.value) echo hub1.azure-devices.net ;;
  properties.outputs.functionAppName.value) echo func1 ;;
  properties.outputs.caSecretName.value) echo iotprov-ca ;;
  properties.outputs.dataKeySecretName.value) echo iotprov-data-key ;;
  *) exit 3 ;;
  esac ;;
"functionapp config appsettings")
  printf 'IOTPROV_AUTH_METHODS\t%s\nIOTPROV_SAS_GROUP_KEY_SECRET\tsas-group-key\nIOTPROV_SAS_KEY_GROUPS\tfactory-a=sas-key-a, factory-b=sas-key-b\n' "$FAKE_METHODS" ;;
"functionapp show "*) echo func1.azurewebsites.net ;;
"keyvault secret show") [ -f "$S/secret-$(arg --name "$@")" ] ;;
"keyvault secret set") cp "$(arg --file "$@")" "$S/secret-$(arg --name "$@")" ;;
"iot dps certificate")
  case "$4" in
  show)
    [ -f "$S/cert" ] || exit 1
    case "$query" in name) echo iotprov-root-ca ;; properties.isVerified) cat "$S/verified" ;; etag) echo etag1 ;; esac ;;
  create) cp "$(arg --path "$@")" "$S/cert"; echo false >"$S/verified" ;;
  generate-verification-code) [ "$(arg --etag "$@")" = etag1 ] || exit 4; printf 'CODE123\netag2\n' ;;
  verify)
    [ "$(arg --etag "$@")" = etag2 ] || exit 5
    grep -q 'CN=CODE123' "$(arg --path "$@")" || exit 6
    echo true >"$S/verified" ;;
  *) exit 7 ;;
  esac ;;
"iot dps enrollment-group")
  case "$4" in
  show) [ -f "$S/enrollment" ] ;;
  create) [ "$(arg --ca-name "$@")" = iotprov-root-ca ] && [ "$(arg --iot-hubs "$@")" = hub1.azure-devices.net ] && touch "$S/enrollment" ;;
  *) exit 8 ;;
  esac ;;
*) echo "fake az: unexpected: $*" >&2; exit 9 ;;
esac
`

// fakeIotprov stands in for the iotprov CLI's ca commands.
const fakeIotprov = `#!/usr/bin/env bash
set -eu
S=$FAKE_STATE
echo "iotprov $*" >>"$S/calls"
arg() { local want=$1; shift; while [ $# -gt 0 ]; do [ "$1" = "$want" ] && { echo "$2"; return; }; shift; done; }
case "$1 $2" in
"ca init") d=$(arg --dir "$@"); echo root >"$d/root-ca.pem"; echo rootkey >"$d/root-ca.key"; echo bundle >"$d/signing-ca.pem" ;;
"ca upload") cp "$(arg --file "$@")" "$S/secret-$(arg --name "$@")" ;;
"ca verification-cert") echo "CN=$(arg --code "$@")" >"$(arg --out "$@")" ;;
*) exit 9 ;;
esac
`

type postDeploy struct {
	dir, state, home string
}

func newPostDeploy(t *testing.T) *postDeploy {
	t.Helper()
	if testing.Short() {
		t.Skip("runs bash and openssl")
	}
	for _, tool := range []string{"bash", "openssl", "base64", "awk"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	p := &postDeploy{dir: t.TempDir()}
	p.state = filepath.Join(p.dir, "state")
	p.home = filepath.Join(p.dir, "home")
	for _, d := range []string{p.state, p.home} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for name, text := range map[string]string{"az": fakeAz, "iotprov": fakeIotprov} {
		if err := os.WriteFile(filepath.Join(p.dir, name), []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// run runs post-deploy.sh and returns its standard output, and the calls it made.
func (p *postDeploy) run(t *testing.T, methods string, args ...string) (string, []string, error) {
	t.Helper()
	_ = os.Remove(filepath.Join(p.state, "calls"))
	cmd := exec.Command("bash", append([]string{"post-deploy.sh", "-g", "rg1"}, args...)...)
	cmd.Env = append(os.Environ(), "AZ="+filepath.Join(p.dir, "az"), "IOTPROV="+filepath.Join(p.dir, "iotprov"),
		"FAKE_STATE="+p.state, "FAKE_METHODS="+methods, "HOME="+p.home)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	t.Logf("post-deploy.sh stderr:\n%s", stderr.String())
	calls, _ := os.ReadFile(filepath.Join(p.state, "calls"))
	return string(out), strings.Split(strings.TrimSpace(string(calls)), "\n"), err
}

func (p *postDeploy) secret(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.state, "secret-"+name))
	if err != nil {
		t.Fatalf("secret %s not stored: %v", name, err)
	}
	return string(b)
}

var mutating = []string{"ca init", "ca upload", "secret set", "certificate create", "generate-verification-code",
	"certificate verify", "enrollment-group create"}

// A first run creates the CA, stores every secret, proves the CA to DPS and creates the
// enrollment group; a second run finds everything in place and changes nothing.
func TestPostDeployIsIdempotent(t *testing.T) {
	p := newPostDeploy(t)
	out, calls, err := p.run(t, "sas,beam")
	if err != nil {
		t.Fatalf("first run: %v", err)
	}
	if strings.TrimSpace(out) != "https://func1.azurewebsites.net" {
		t.Errorf("stdout = %q, want the device base URL", out)
	}
	joined := strings.Join(calls, "\n")
	for _, verb := range mutating {
		if !strings.Contains(joined, verb) {
			t.Errorf("first run never did %q; calls:\n%s", verb, joined)
		}
	}
	if p.secret(t, "iotprov-ca") != "bundle\n" {
		t.Error("the CA secret is not the signing bundle ca init wrote")
	}
	for name, size := range map[string]int{"iotprov-data-key": 32, "sas-group-key": 64, "sas-key-a": 64, "sas-key-b": 64} {
		v := p.secret(t, name)
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil || len(b) != size {
			t.Errorf("secret %s: want base64 of %d bytes on one line, got %d bytes (%v)", name, size, len(b), err)
		}
	}
	if psk := p.secret(t, "beam-psk"); len(psk) != 64 {
		t.Errorf("beam PSK: want 64 hex digits without newline, got %d characters", len(psk))
	} else if _, err := hex.DecodeString(psk); err != nil {
		t.Errorf("beam PSK not hex: %v", err)
	}
	if v, _ := os.ReadFile(filepath.Join(p.state, "verified")); strings.TrimSpace(string(v)) != "true" {
		t.Error("the DPS certificate was not verified")
	}
	kept := filepath.Join(p.home, ".iotprov", "rg1", "sas-group-key")
	if fi, err := os.Stat(kept); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the generated group key copy %s: %v (mode %v), want 0600", kept, err, fi)
	}
	if strings.Contains(joined, p.secret(t, "sas-group-key")) || strings.Contains(joined, p.secret(t, "beam-psk")) {
		t.Error("a generated secret appeared on a command line")
	}

	_, calls, err = p.run(t, "sas,beam")
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	for _, c := range calls {
		for _, verb := range mutating {
			if strings.Contains(c, verb) {
				t.Errorf("second run changed something: %s", c)
			}
		}
	}
}

// A method whose secret cannot be generated (JWT keys) stops the script with a line that
// names the secret, instead of leaving the app half configured in silence.
func TestPostDeployNeedsJWTKeysFile(t *testing.T) {
	p := newPostDeploy(t)
	_, _, err := p.run(t, "sas,jwt")
	if err == nil {
		t.Fatal("ran without --jwt-keys-file while jwt is enabled")
	}
	keys := filepath.Join(p.dir, "jwks.json")
	if err := os.WriteFile(keys, []byte(`{"keys":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.run(t, "sas,jwt", "--jwt-keys-file", keys); err != nil {
		t.Fatalf("with --jwt-keys-file: %v", err)
	}
	if p.secret(t, "jwt-keys") != `{"keys":[]}` {
		t.Error("jwt-keys is not the file given")
	}
}
