package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/devstack"
	"github.com/iotprov/iotprov/internal/store"
	"github.com/iotprov/iotprov/internal/testenv"
)

// keyForms returns the ways a PKCS#8 PEM private key could show up in a stored row or
// a log line: PEM lines, base64 and hex of the DER, and base64/hex of the ECDSA scalar.
func keyForms(t *testing.T, keyPEM string) []string {
	t.Helper()
	b, _ := pem.Decode([]byte(keyPEM))
	if b == nil {
		t.Fatalf("not PEM: %q", keyPEM)
	}
	forms := []string{base64.StdEncoding.EncodeToString(b.Bytes), base64.RawURLEncoding.EncodeToString(b.Bytes), hex.EncodeToString(b.Bytes)}
	for _, line := range strings.Split(keyPEM, "\n") {
		if len(line) >= 24 && !strings.HasPrefix(line, "-----") {
			forms = append(forms, line)
		}
	}
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if ec, ok := k.(*ecdsa.PrivateKey); ok {
			if d, err := ec.Bytes(); err == nil {
				forms = append(forms, base64.StdEncoding.EncodeToString(d), hex.EncodeToString(d))
			}
		}
	}
	return forms
}

// TestKeysAtRest reads the operations table raw, as someone with storage access would:
// no private key is there in the clear, only the sealed form; after the retention, purge
// erases even that and the device is told its credentials expired.
func TestKeysAtRest(t *testing.T) {
	s := startStack(t, stackOptions{})
	retention, err := time.ParseDuration(s.Settings()["IOTPROV_KEY_RETENTION"])
	if err != nil {
		t.Fatalf("IOTPROV_KEY_RETENTION: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := newFleet(t, s, "atrest", 3)
	f.registerAll(ctx, t, 3)
	f.awaitAll(ctx, t, 3)
	tables, _ := storageClients(t, s)
	rows := rawOperations(t, tables)
	for _, d := range f.devices {
		if err := checkCredential(s, d); err != nil {
			t.Fatalf("%s: %v", d.id, err)
		}
		raw := string(rows[d.opID])
		if raw == "" {
			t.Fatalf("%s: operation %s not in the table", d.id, d.opID)
		}
		if strings.Contains(raw, "PRIVATE KEY") {
			t.Errorf("%s: a PEM private key is stored in the clear", d.id)
		}
		for _, form := range keyForms(t, d.result["privateKey"].(string)) {
			if strings.Contains(raw, form) {
				t.Errorf("%s: the private key is stored in the clear (%d-character form found)", d.id, len(form))
			}
		}
		var row struct {
			SealedKey string
			KeyErased bool
		}
		if err := json.Unmarshal(rows[d.opID], &row); err != nil {
			t.Fatal(err)
		}
		sealed, err := base64.StdEncoding.DecodeString(row.SealedKey)
		if err != nil || len(sealed) < 32 {
			t.Errorf("%s: no sealed key stored (%d bytes, %v)", d.id, len(sealed), err)
		}
	}

	// Purge (what the timer-triggered function runs) with the stack's retention: before
	// it has passed nothing is erased; a minute past it every key is.
	st := store.New(tables)
	if erased, _, err := st.Purge(ctx, time.Now(), retention, 720*time.Hour); err != nil || erased != 0 {
		t.Fatalf("purge within the retention erased %d keys (%v)", erased, err)
	}
	erased, deleted, err := st.Purge(ctx, time.Now().Add(retention+time.Minute), retention, 720*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if erased < len(f.devices) || deleted != 0 {
		t.Errorf("purge erased %d keys and deleted %d operations, want ≥ %d and 0", erased, deleted, len(f.devices))
	}
	rows = rawOperations(t, tables)
	for _, d := range f.devices {
		var row map[string]any
		if err := json.Unmarshal(rows[d.opID], &row); err != nil {
			t.Fatal(err)
		}
		if _, ok := row["SealedKey"]; ok || row["KeyErased"] != true {
			t.Errorf("%s: after purge the row still has key material: SealedKey present %v, KeyErased %v", d.id, ok, row["KeyErased"])
		}
		status, _, body := f.call(ctx, d, http.MethodGet, "/v1/provisioning/azure/iot/registrations/"+d.opID)
		if e, _ := body["error"].(map[string]any); status != http.StatusGone || e["code"] != "credentials_expired" {
			t.Errorf("%s: after purge the operation answered %d %v, want 410 credentials_expired", d.id, status, body)
		}
		for _, form := range keyForms(t, d.result["privateKey"].(string)) {
			if strings.Contains(string(rows[d.opID]), form) {
				t.Errorf("%s: private key material after purge", d.id)
			}
		}
	}
}

// logSecrets is one authentication method's full flow on a stack, returning every secret
// the flow involved: none may appear in the handler's log.
type logSecrets struct {
	name string
	// settings over the sample's (which enables every method); a function so a case can
	// take a free port.
	settings func(t *testing.T) map[string]string
	flow     func(t *testing.T, s *devstack.Stack) []secret
	// refusals is how many refused requests the flow sends: each must have left its line.
	refusals int
	// markers are substrings no log line may hold in this case, beyond the shared ones.
	markers []string
}

type secret struct{ what, value string }

// TestLogsHoldNoSecrets runs a full flow per authentication method at debug level, plus
// refused requests, and fails on any key, token, signature, PSK, group key or PEM in the
// handler's log. The beam, jwt and x509 cases run with that method alone enabled, so
// their refusals also show that such a deployment still answers 401 with a
// WWW-Authenticate naming the method (DESIGN.md §2).
func TestLogsHoldNoSecrets(t *testing.T) {
	only := func(method string) func(*testing.T) map[string]string {
		return func(*testing.T) map[string]string { return map[string]string{"IOTPROV_AUTH_METHODS": method} }
	}
	cases := []logSecrets{
		{name: "sas", flow: sasFlowSecrets, refusals: 2},
		{name: "beam", settings: only("beam"), flow: beamFlowSecrets, refusals: 2},
		// Every JWT begins with a base64url `{"` (eyJ), header and claims alike.
		{name: "jwt", settings: only("jwt"), flow: jwtFlowSecrets, refusals: 3, markers: []string{"eyJ", "Bearer "}},
		{name: "x509", settings: func(t *testing.T) map[string]string {
			return map[string]string{"IOTPROV_AUTH_METHODS": "x509",
				"IOTPROV_TLS_LISTEN_ADDR": fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}
		}, flow: x509FlowSecrets, refusals: 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			settings := map[string]string{"IOTPROV_LOG_LEVEL": "debug"}
			if tc.settings != nil {
				for k, v := range tc.settings(t) {
					settings[k] = v
				}
			}
			s := startStack(t, stackOptions{Settings: settings})
			secrets := append(tc.flow(t, s), stackSecrets(t, s)...)
			// Stop first: the handler's output reaches the capture through a pipe, so
			// reading it while the handler runs can miss the last lines (the refusals).
			// Stop waits for the process and its output; the cleanup's Stop is then a no-op.
			s.Stop()
			logs := s.Output("handler")
			if countLines(logs, `"operationId"`) == 0 {
				t.Fatalf("the handler logged no operation line: is the log captured?\n%s", logs)
			}
			// Debug lines (DPS registration, secret fetches, invocations) must be there
			// too, or this proves nothing about what debug level writes.
			for _, msg := range []string{"provision: DPS registration done", "secret fetched from the source", "localrun: provision invoked"} {
				if countLines(logs, `"level":"DEBUG"`, `"msg":"`+msg+`"`) == 0 {
					t.Fatalf("no debug line %q at IOTPROV_LOG_LEVEL=debug\n%s", msg, logs)
				}
			}
			// The refusals must have left their lines, or their clean logs prove nothing.
			if n := countLines(logs, "request refused", `"status":401`); n < tc.refusals {
				t.Fatalf("the handler logged %d refused requests, want %d: is the log captured?\n%s", n, tc.refusals, logs)
			}
			for _, sec := range secrets {
				if len(sec.value) < 8 {
					t.Fatalf("secret %s too short to search for", sec.what)
				}
				if strings.Contains(logs, sec.value) {
					t.Errorf("the handler log holds %s", sec.what)
				}
			}
			markers := append([]string{"-----BEGIN", "PRIVATE KEY", "SharedAccessSignature", "sig="}, tc.markers...)
			for _, marker := range markers {
				if strings.Contains(logs, marker) {
					t.Errorf("the handler log holds %q", marker)
				}
			}
		})
	}
}

// stackSecrets are the stack's own secrets: the data key, the CA key, the group key, the
// PSK, and the private keys of the dev JWT issuer and the dev manufacturer CA.
func stackSecrets(t *testing.T, s *devstack.Stack) []secret {
	t.Helper()
	var out []secret
	for _, name := range []string{devstack.SecretDataKey, devstack.SecretSASGroupKey, devstack.SecretBeamPSK, devstack.SecretCA} {
		b, err := os.ReadFile(s.Material.SecretFile(name))
		if err != nil {
			continue // not every stack has every secret
		}
		text := strings.TrimSpace(string(b))
		if strings.Contains(text, "-----BEGIN") {
			for _, line := range strings.Split(text, "\n") {
				if len(line) >= 24 && !strings.HasPrefix(line, "-----") {
					out = append(out, secret{"a line of secret " + name, line})
				}
			}
			continue
		}
		out = append(out, secret{"secret " + name, text})
		if raw, err := base64.StdEncoding.DecodeString(text); err == nil && len(raw) >= 8 {
			out = append(out, secret{"secret " + name + " (hex)", hex.EncodeToString(raw)})
		}
	}
	for what, file := range map[string]string{
		"the dev JWT signing key":       s.Material.JWTSigningKeyFile(),
		"the dev manufacturer CA's key": s.Material.ManufacturerCAFile(),
	} {
		if key, ok := privateKeyPEM(t, file); ok {
			for _, form := range keyForms(t, key) {
				out = append(out, secret{what, form})
			}
		}
	}
	return out
}

// privateKeyPEM returns the private-key block of a PEM file (which may also hold
// certificates), re-encoded alone; false when the file or the block is absent.
func privateKeyPEM(t *testing.T, file string) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		return "", false
	}
	for rest := b; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			return "", false
		}
		if strings.Contains(blk.Type, "PRIVATE KEY") {
			return string(pem.EncodeToMemory(blk)), true
		}
	}
}

// sasFlowSecrets registers and polls a SAS device to assignment, then sends a token with
// a bad signature and an expired one, and returns the tokens, signatures, the device key
// and the issued private key.
func sasFlowSecrets(t *testing.T, s *devstack.Stack) []secret {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := newFleet(t, s, "logs", 1)
	d := f.devices[0]
	f.registerAll(ctx, t, 1)
	f.awaitAll(ctx, t, 1)
	if err := checkCredential(s, d); err != nil {
		t.Fatal(err)
	}
	sas := newSASKit(t, s)
	deviceKey := sas.deviceKey(d.id)
	expired := sas.token(d.id, time.Now().Add(-time.Hour), "registration")["Authorization"]
	forged := strings.Replace(d.auth, "sig=", "sig=AAAA", 1)
	// The sample enables every method: one challenge each, in the configured order.
	var want []string
	for _, m := range strings.Split(s.Settings()["IOTPROV_AUTH_METHODS"], ",") {
		want = append(want, methodChallenges[strings.TrimSpace(m)])
	}
	for _, tok := range []string{expired, forged} {
		bad := &fleetDevice{id: d.id, auth: tok}
		status, hdr, _ := f.call(ctx, bad, http.MethodPost, "/v1/provisioning/azure/iot/register")
		if status != http.StatusUnauthorized {
			t.Errorf("refused token answered %d, want 401", status)
		}
		if got := hdr.Values("WWW-Authenticate"); !slices.Equal(got, want) {
			t.Errorf("refused token: WWW-Authenticate %q, want %q", got, want)
		}
	}
	out := []secret{
		{"the SAS token", strings.TrimPrefix(d.auth, "SharedAccessSignature ")},
		{"the expired SAS token", strings.TrimPrefix(expired, "SharedAccessSignature ")},
		{"the device key", base64.StdEncoding.EncodeToString(deviceKey)},
		{"the device key (hex)", hex.EncodeToString(deviceKey)},
	}
	for _, tok := range []string{d.auth, expired, forged} {
		q, _ := url.ParseQuery(strings.ReplaceAll(strings.TrimPrefix(tok, "SharedAccessSignature "), " ", "&"))
		if sig := q.Get("sig"); sig != "" {
			out = append(out, secret{"a SAS signature", sig}, secret{"a SAS signature (URL-encoded)", url.QueryEscape(sig)})
		}
	}
	for _, form := range keyForms(t, d.result["privateKey"].(string)) {
		out = append(out, secret{"the issued private key", form})
	}
	return out
}

// methodChallenges is the WWW-Authenticate challenge each method sends (internal/auth).
var methodChallenges = map[string]string{
	"sas": "SharedAccessSignature", "beam": "SoracomBeam", "jwt": "Bearer", "x509": "ClientCertificate",
}

// hygieneRefused sends a register request that must be refused with 401 code and exactly
// the one challenge of the stack's only enabled method.
func hygieneRefused(t *testing.T, client *http.Client, base string, headers map[string]string, code, challenge string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/v1/provisioning/azure/iot/register", nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatalf("refusal is not JSON: %v", err)
	}
	if res.StatusCode != http.StatusUnauthorized || errorCode(body) != code {
		t.Errorf("answered %d %v, want 401 %s", res.StatusCode, body, code)
	}
	if got := res.Header.Values("WWW-Authenticate"); !slices.Equal(got, []string{challenge}) {
		t.Errorf("WWW-Authenticate %q, want [%q]", got, challenge)
	}
}

// issuedKeySecrets are the forms of the private key the service issued in an answer.
func issuedKeySecrets(t *testing.T, res map[string]any) []secret {
	t.Helper()
	key, _ := res["privateKey"].(string)
	if key == "" {
		t.Fatalf("the assigned answer has no private key: %v", res)
	}
	var out []secret
	for _, form := range keyForms(t, key) {
		out = append(out, secret{"the issued private key", form})
	}
	return out
}

// beamFlowSecrets provisions a SIM through Beam-signed headers (minted by `iotprov beam`
// with the stack's PSK), then sends a tampered signature and a tampered IMSI, and returns
// the PSK and every signature.
func beamFlowSecrets(t *testing.T, s *devstack.Stack) []secret {
	const imsi = "295000012345670"
	hdr := stackCLI(t, s).beam(imsi).header
	sig := hdr[auth.BeamHeaderSignature]
	if len(sig) != 64 {
		t.Fatalf("iotprov beam printed no signature: %v", hdr)
	}
	d := &flowDevice{t: t, base: s.BaseURL, client: http.DefaultClient, headers: hdr}
	res := d.flow()
	verifyDeviceChain(t, s, []byte(res["certificate"].(string)), imsi)

	// A tampered signature (last hex digit changed) and a tampered IMSI under the real one.
	tamperedSig := sig[:len(sig)-1] + "0"
	if sig[len(sig)-1] == '0' {
		tamperedSig = sig[:len(sig)-1] + "1"
	}
	bad := maps.Clone(hdr)
	bad[auth.BeamHeaderSignature] = tamperedSig
	hygieneRefused(t, http.DefaultClient, s.BaseURL, bad, "invalid_credential", "SoracomBeam")
	bad = maps.Clone(hdr)
	bad[auth.BeamHeaderIMSI] = "295000012345679"
	hygieneRefused(t, http.DefaultClient, s.BaseURL, bad, "invalid_credential", "SoracomBeam")

	psk, err := os.ReadFile(s.Material.SecretFile(devstack.SecretBeamPSK))
	if err != nil {
		t.Fatal(err)
	}
	out := []secret{
		{"the Beam signature", sig},
		{"the Beam signature (upper case)", strings.ToUpper(sig)},
		{"the tampered Beam signature", tamperedSig},
		{"the Beam PSK", strings.TrimSpace(string(psk))},
	}
	return append(out, issuedKeySecrets(t, res)...)
}

// jwtFlowSecrets provisions a device with a JWT from the dev issuer (`iotprov jwt`), then
// sends a JWT for another audience, an expired one and one with a forged signature, and
// returns every token and signature; the signing key is in stackSecrets.
func jwtFlowSecrets(t *testing.T, s *devstack.Stack) []secret {
	const sub = "hygiene-jwt-1"
	cli := stackCLI(t, s)
	good := cli.jwtToken(sub)
	d := &flowDevice{t: t, base: s.BaseURL, client: http.DefaultClient, headers: map[string]string{"Authorization": good}}
	res := d.flow()
	verifyDeviceChain(t, s, []byte(res["certificate"].(string)), sub)

	otherAud := cli.jwtToken(sub, "--aud", "someone-else")
	expired := cli.jwtToken(sub, "--ttl", "-1h")
	// The claims of the expired token under the good token's signature.
	parts := strings.Split(strings.TrimPrefix(good, "Bearer "), ".")
	expParts := strings.Split(strings.TrimPrefix(expired, "Bearer "), ".")
	if len(parts) != 3 || len(expParts) != 3 {
		t.Fatalf("iotprov jwt printed no JWT: %q", good)
	}
	forged := "Bearer " + expParts[0] + "." + expParts[1] + "." + parts[2]
	for _, tc := range []struct{ tok, code string }{
		{otherAud, "invalid_credential"},
		{expired, "expired_credential"},
		{forged, "invalid_credential"},
	} {
		hygieneRefused(t, http.DefaultClient, s.BaseURL, map[string]string{"Authorization": tc.tok}, tc.code, "Bearer")
	}

	var out []secret
	for what, tok := range map[string]string{"the JWT": good, "the other-audience JWT": otherAud,
		"the expired JWT": expired, "the forged JWT": forged} {
		raw := strings.TrimPrefix(tok, "Bearer ")
		p := strings.Split(raw, ".")
		out = append(out, secret{what, raw}, secret{what + "'s signature", p[2]},
			secret{what + "'s claims segment", p[1]})
	}
	return append(out, issuedKeySecrets(t, res)...)
}

// x509FlowSecrets provisions a device over the handler's TLS listener with a bootstrap
// certificate (`iotprov bootstrap-cert` from the dev manufacturer CA), then sends an
// untrusted X-ARR-ClientCert (the real bootstrap certificate, on the plain listener) and
// a client certificate that does not chain to the manufacturer CA (the issued one), and
// returns the bootstrap client key; the manufacturer CA key is in stackSecrets.
func x509FlowSecrets(t *testing.T, s *devstack.Stack) []secret {
	const cn = "hygiene-factory-1"
	addr := s.Settings()["IOTPROV_TLS_LISTEN_ADDR"]
	if addr == "" {
		t.Fatal("the stack has no TLS listener")
	}
	// The files, not only the loaded pair: the key as written is what must not be logged.
	certFile, keyFile := stackCLI(t, s).bootstrapCertFiles(cn)
	boot, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := s.TrustPool()
	if err != nil {
		t.Fatal(err)
	}
	tlsClient := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12}}}
	}
	base := "https://" + addr
	d := &flowDevice{t: t, base: base, client: tlsClient(boot)}
	res := d.flow()
	verifyDeviceChain(t, s, []byte(res["certificate"].(string)), cn)

	hygieneRefused(t, http.DefaultClient, s.BaseURL,
		map[string]string{"X-ARR-ClientCert": base64.StdEncoding.EncodeToString(boot.Certificate[0])},
		"untrusted_client_cert_header", "ClientCertificate")
	issued, err := tls.X509KeyPair([]byte(res["certificate"].(string)), []byte(res["privateKey"].(string)))
	if err != nil {
		t.Fatal(err)
	}
	hygieneRefused(t, tlsClient(issued), base, nil, "invalid_credential", "ClientCertificate")

	bootKey, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	var out []secret
	for _, form := range keyForms(t, string(bootKey)) {
		out = append(out, secret{"the bootstrap client key", form})
	}
	return append(out, issuedKeySecrets(t, res)...)
}
