package e2e

// The device API's contract, docs/openapi.yaml, checked two ways so that the document and
// the code cannot drift:
//
//   - TestOpenAPIContract drives the real handler on a local stack through every case the
//     document describes and validates each request and each answer against it with
//     kin-openapi's validator (JSON Schema 2020-12 for an OpenAPI 3.1 document).
//   - TestOpenAPIErrorCodes reads the Go source with go/parser and compares the error
//     codes the code can emit with the codes the document enumerates, both ways.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/iotprov/iotprov/internal/api"
	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/devstack"
	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/store"
	"github.com/iotprov/iotprov/internal/testenv"
)

const (
	registerPath      = "/v1/provisioning/azure/iot/register"
	registrationsPath = "/v1/provisioning/azure/iot/registrations/"
)

// trackedHeaders are the headers the document must describe exactly: the validator
// checks that a documented header is present and well-formed, and contract.check adds
// that one of these present on an answer must be documented for that answer.
var trackedHeaders = []string{"Retry-After", "Location", "WWW-Authenticate", "Allow", "Cache-Control"}

// loadContract loads and validates docs/openapi.yaml.
func loadContract(t *testing.T) *openapi3.T {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(filepath.Join(testenv.ModuleRoot(), "docs", "openapi.yaml"))
	if err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("docs/openapi.yaml is OpenAPI %s, want 3.1", doc.OpenAPI)
	}
	if err := doc.Validate(loader.Context, openapi3.EnableExamplesValidation()); err != nil {
		t.Fatalf("docs/openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	return doc
}

// contract validates exchanges with one running service against the document.
type contract struct {
	doc    *openapi3.T
	router routers.Router
	base   string
}

// newContract routes against base, and against more bases of the same service (the
// local runner's TLS listener for x509 devices).
func newContract(t *testing.T, base string, more ...string) *contract {
	t.Helper()
	doc := loadContract(t)
	// The document's servers are Azure's and the default local port; the stack under
	// test listens on free ports, so route against those instead.
	doc.Servers = openapi3.Servers{{URL: base}}
	for _, b := range more {
		doc.Servers = append(doc.Servers, &openapi3.Server{URL: b})
	}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &contract{doc: doc, router: router, base: base}
}

// tlsDevice is a device that calls the TLS listener, with a bootstrap client certificate
// or none.
type tlsDevice struct {
	base   string
	client *http.Client
	leaf   *x509.Certificate // nil: the TLS handshake presents no client certificate
}

// newTLSDevice trusts roots for the listener and presents cert when not nil.
func newTLSDevice(base string, roots *x509.CertPool, cert *tls.Certificate) *tlsDevice {
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	d := &tlsDevice{base: base}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
		d.leaf = cert.Leaf
	}
	d.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	return d
}

// exchange is one request to the service and its answer.
type exchange struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (x exchange) errorCode() string {
	e, _ := x.body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// request is what a test device sends.
type request struct {
	method, path string
	header       map[string]string
	body         string
	// docValid says whether the document accepts the request. Requests the service
	// refuses for reasons the document states in its schemas (no credential, not JSON,
	// too long, a malformed operation ID) must be refused by the validator too.
	docValid bool
	// security is the one alternative of the document's security requirements that the
	// request satisfies, its scheme names sorted and joined by "+" (sas, jwt,
	// beamImsi+beamSignature+beamTimestamp, x509, x509Forwarded); empty when it
	// carries no credential the document describes.
	security string
	// via sends the request over the TLS listener; nil: the plain HTTP base.
	via *tlsDevice
}

// Security requirement alternatives of docs/openapi.yaml, as request.security names them.
const (
	secSAS       = "sas"
	secJWT       = "jwt"
	secBeamIMSI  = "beamImsi+beamSignature+beamTimestamp"
	secBeamSIMID = "beamSignature+beamSimId+beamTimestamp"
	secX509      = "x509"
	secForwarded = "x509Forwarded"
)

// do sends r, validates request and answer against the document, and returns the answer.
func (c *contract) do(t *testing.T, r request) exchange {
	t.Helper()
	newReq := func() *http.Request {
		var body io.Reader
		if r.body != "" {
			body = bytes.NewReader([]byte(r.body))
		}
		base := c.base
		if r.via != nil {
			base = r.via.base
		}
		req, err := http.NewRequest(r.method, base+r.path, body)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range r.header {
			req.Header.Set(k, v)
		}
		return req
	}
	// asServed is the request as the service sees it: over TLS, with the client
	// certificate the handshake presented, so that mutualTLS can be judged.
	asServed := func() *http.Request {
		req := newReq()
		if r.via != nil {
			req.TLS = &tls.ConnectionState{HandshakeComplete: true}
			if r.via.leaf != nil {
				req.TLS.PeerCertificates = []*x509.Certificate{r.via.leaf}
			}
		}
		return req
	}

	client := http.DefaultClient
	if r.via != nil {
		client = r.via.client
	}
	res, err := client.Do(newReq())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	x := exchange{status: res.StatusCode, header: res.Header, raw: raw}
	if err := json.Unmarshal(raw, &x.body); err != nil {
		t.Fatalf("%s %s: answer is not a JSON object (%d): %q", r.method, r.path, res.StatusCode, raw)
	}

	// The request, as the document sees it.
	ctx := context.Background()
	req := asServed()
	route, params, routeErr := c.router.FindRoute(req)
	opts := &openapi3filter.Options{
		IncludeResponseStatus: true, // an undocumented status is a failure, not a pass
		MultiError:            true,
		AuthenticationFunc:    presentCredential,
	}
	// Schema errors quote the offending value; keep key material out of test logs.
	opts.WithCustomSchemaErrorFunc(func(err *openapi3.SchemaError) string { return err.Reason })
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: opts}
	switch {
	case routeErr == nil:
		err := openapi3filter.ValidateRequest(ctx, in)
		if r.docValid && err != nil {
			t.Errorf("%s %s: the document refuses a request the service accepts as valid: %v", r.method, r.path, err)
		}
		if !r.docValid && err == nil {
			t.Errorf("%s %s: the document accepts a request it should refuse", r.method, r.path)
		}
		c.checkSecurity(t, r, route, params, opts, asServed)
	case errors.Is(routeErr, routers.ErrMethodNotAllowed):
		// The answer to a wrong method is documented on the path's operation.
		if r.docValid {
			t.Errorf("%s %s: no such operation in the document", r.method, r.path)
		}
		other := asServed()
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			other.Method = m
			if route, params, err := c.router.FindRoute(other); err == nil {
				in = &openapi3filter.RequestValidationInput{Request: other, PathParams: params, Route: route, Options: opts}
				break
			}
		}
		if in.Route == nil {
			t.Fatalf("%s %s: no operation of the document documents this path's 405", r.method, r.path)
		}
	default:
		// A path outside the document: the document promises the one error shape.
		if r.docValid {
			t.Errorf("%s %s: path not in the document: %v", r.method, r.path, routeErr)
		}
		c.checkOutsideDocument(t, r, x)
		return x
	}

	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: x.status, Header: x.header, Options: opts}
	out.SetBodyBytes(x.raw)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		t.Errorf("%s %s → %d: the answer does not match the document: %v", r.method, r.path, x.status, err)
	}
	documented := in.Route.Operation.Responses.Status(x.status)
	for _, h := range trackedHeaders {
		if x.header.Get(h) == "" || documented == nil || documented.Value == nil {
			continue
		}
		if _, ok := documented.Value.Headers[h]; !ok {
			t.Errorf("%s %s → %d: header %s is sent but not documented for this answer", r.method, r.path, x.status, h)
		}
	}
	return x
}

// checkSecurity checks which of the document's security alternatives the request
// satisfies, each judged alone (the validator stops at the first): exactly the one the
// test names, or none. A credential the document cannot tell apart from another method's
// would make the document ambiguous for clients.
func (c *contract) checkSecurity(t *testing.T, r request, route *routers.Route, params map[string]string,
	opts *openapi3filter.Options, newReq func() *http.Request) {
	t.Helper()
	reqs := c.doc.Security
	if route.Operation.Security != nil {
		reqs = *route.Operation.Security
	}
	var satisfied []string
	for _, sr := range reqs {
		in := &openapi3filter.RequestValidationInput{Request: newReq(), PathParams: params, Route: route, Options: opts}
		if openapi3filter.ValidateSecurityRequirements(context.Background(), in, openapi3.SecurityRequirements{sr}) == nil {
			satisfied = append(satisfied, strings.Join(slices.Sorted(maps.Keys(sr)), "+"))
		}
	}
	var want []string
	if r.security != "" {
		want = []string{r.security}
	}
	if !slices.Equal(satisfied, want) {
		t.Errorf("%s %s: satisfies the document's security alternatives %q, want %q", r.method, r.path, satisfied, want)
	}
}

// checkOutsideDocument checks an answer to a path the document does not have: the one
// error shape, with a documented code.
func (c *contract) checkOutsideDocument(t *testing.T, r request, x exchange) {
	t.Helper()
	schema := c.doc.Components.Schemas["Error"].Value
	if err := schema.VisitJSON(toJSONValue(t, x.raw), openapi3.EnableJSONSchema2020()); err != nil {
		t.Errorf("%s %s → %d: not the document's Error shape: %v", r.method, r.path, x.status, err)
	}
	if x.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("%s %s → %d: no X-Content-Type-Options: nosniff", r.method, r.path, x.status)
	}
}

func toJSONValue(t *testing.T, raw []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// presentCredential is the validator's view of authentication: the document can only
// say which headers (or TLS) carry a credential; whether it verifies is the service's job.
func presentCredential(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	s, r := in.SecurityScheme, in.RequestValidationInput.Request
	switch {
	case s.Type == "apiKey" && s.In == "header":
		if r.Header.Get(s.Name) == "" {
			return fmt.Errorf("no %s header", s.Name)
		}
		if s.Name == "Authorization" && in.SecuritySchemeName == "sas" &&
			!strings.HasPrefix(r.Header.Get("Authorization"), "SharedAccessSignature ") {
			return errors.New("Authorization is not a SharedAccessSignature")
		}
		return nil
	case s.Type == "http" && strings.EqualFold(s.Scheme, "bearer"):
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			return errors.New("no bearer token")
		}
		return nil
	case s.Type == "mutualTLS":
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			return errors.New("no client certificate")
		}
		return nil
	}
	return fmt.Errorf("security scheme %q of type %q is not understood by this test", in.SecuritySchemeName, s.Type)
}

func withJSON(h map[string]string) map[string]string {
	out := map[string]string{"Content-Type": "application/json"}
	for k, v := range h {
		out[k] = v
	}
	return out
}

// csrPEM returns a PEM CSR signed by key.
func csrPEM(t *testing.T, key crypto.Signer, cn string) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func csrBody(t *testing.T, pemText string) string {
	t.Helper()
	b, err := json.Marshal(map[string]string{"csr": pemText})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// credential is how a test device authenticates: the headers it sends, the document's
// security alternative they satisfy, and, for x509, the TLS listener it calls.
type credential struct {
	header   map[string]string
	security string
	via      *tlsDevice
}

// request is a documented request with this credential.
func (cr credential) request(method, path, body string) request {
	h := cr.header
	if body != "" {
		h = withJSON(h)
	}
	return request{method: method, path: path, header: h, body: body, docValid: true, security: cr.security, via: cr.via}
}

// with returns the credential with one header changed (a tampered or forged credential).
func (cr credential) with(name, value string) credential {
	h := map[string]string{}
	for k, v := range cr.header {
		h[k] = v
	}
	h[name] = value
	cr.header = h
	return cr
}

// TestOpenAPIContract drives the real handler through each case of docs/openapi.yaml,
// with every authentication method enabled. It starts two stacks (the second, in
// allow-list mode, for about 3 s) and takes about 11 s in all.
func TestOpenAPIContract(t *testing.T) {
	tlsPort := testenv.FreePort(t)
	s := startStack(t, stackOptions{
		Settings: map[string]string{
			"IOTPROV_REGISTRATION_MIN_INTERVAL": "1h",
			"IOTPROV_AUTH_METHODS":              "sas,beam,jwt,x509",
			// The x509 devices call this listener with their bootstrap certificates.
			"IOTPROV_TLS_LISTEN_ADDR": fmt.Sprintf("127.0.0.1:%d", tlsPort),
			"IOTPROV_DEVICE_POLICY":   "open",
			// Short, so the outage cases below take effect after a second.
			"IOTPROV_SECRET_CACHE_TTL": "1s",
			// A prefix, so that a valid 64-character registration ID makes an invalid
			// device ID (invalid_device_id); the SAS parser refuses invalid IDs itself.
			"IOTPROV_DEVICE_ID_TEMPLATE": "d-{id}",
		},
		// Operations stay assigning for a while, so the first poll is always in flight.
		DPSEnv: []string{"DPSEMU_ASSIGN_DELAY=1500ms", "DPSEMU_DISABLED=d-disabled-1"},
	})
	tlsBase := fmt.Sprintf("https://127.0.0.1:%d", tlsPort)
	c := newContract(t, s.BaseURL, tlsBase)
	sas := newSASKit(t, s)
	cli := cliCredentials{t: t, bin: filepath.Join(os.Getenv("E2E_BIN"), "iotprov"), s: s}
	sasCred := func(id string) credential { return credential{header: sas.valid(id), security: secSAS} }

	pool, err := s.TrustPool()
	if err != nil {
		t.Fatal(err)
	}
	boot := cli.bootstrapCert("factory-1")
	x509Cred := credential{security: secX509, via: newTLSDevice(tlsBase, pool, &boot)}

	register := func(t *testing.T, cr credential, body string) exchange {
		t.Helper()
		x := c.do(t, cr.request("POST", registerPath, body))
		if x.status != http.StatusAccepted || x.body["status"] != "assigning" {
			t.Fatalf("register: %d %s", x.status, x.raw)
		}
		return x
	}
	poll := func(t *testing.T, cr credential, opID string) exchange {
		t.Helper()
		return c.do(t, cr.request("GET", registrationsPath+opID, ""))
	}
	await := func(t *testing.T, cr credential, opID string) exchange {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			x := poll(t, cr, opID)
			if x.status != http.StatusAccepted {
				return x
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Fatalf("operation %s still assigning after 60s", opID)
		return exchange{}
	}

	// Start every operation first, so their DPS delays overlap.
	deviceKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	devices := map[string]credential{
		"server-key-1": sasCred("server-key-1"),
		"csr-1":        sasCred("csr-1"),
		"disabled-1":   sasCred("disabled-1"),
		"beam":         cli.beam("295000012345678"),
		"jwt":          cli.jwt("jwt-1"),
		"x509":         x509Cred,
	}
	ops := map[string]string{}
	for name, cr := range devices {
		body := ""
		if name == "csr-1" {
			body = csrBody(t, csrPEM(t, deviceKey, "whatever the device asks"))
		}
		ops[name] = register(t, cr, body).body["operationId"].(string)
	}

	t.Run("ok/register-again-while-in-flight", func(t *testing.T) {
		if x := register(t, devices["server-key-1"], ""); x.body["operationId"] != ops["server-key-1"] {
			t.Errorf("second register gave %v, want the in-flight %s", x.body["operationId"], ops["server-key-1"])
		}
	})
	t.Run("ok/assigning", func(t *testing.T) {
		x := poll(t, devices["server-key-1"], ops["server-key-1"])
		if x.status != http.StatusAccepted || x.body["status"] != "assigning" {
			t.Errorf("first poll: %d %s, want 202 assigning", x.status, x.raw)
		}
	})
	// Each method's device ends assigned with a server-generated key, for the device ID
	// its identity makes.
	for _, tc := range []struct{ name, device, deviceID string }{
		{"ok/assigned-server-key", "server-key-1", "d-server-key-1"},
		{"ok/assigned-beam", "beam", "d-295000012345678"},
		{"ok/assigned-jwt", "jwt", "d-jwt-1"},
		{"ok/assigned-x509", "x509", "d-factory-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := await(t, devices[tc.device], ops[tc.device])
			if x.status != http.StatusOK || x.body["status"] != "assigned" || x.body["privateKey"] == nil {
				t.Fatalf("got %d %s, want 200 assigned with a privateKey", x.status, x.body["status"])
			}
			if x.body["deviceId"] != tc.deviceID || x.body["host"] != "localhost" {
				t.Errorf("deviceId %v host %v, want %s on localhost", x.body["deviceId"], x.body["host"], tc.deviceID)
			}
			verifyDeviceChain(t, s, []byte(x.body["certificate"].(string)), tc.deviceID)
		})
	}
	t.Run("ok/assigned-csr", func(t *testing.T) {
		x := await(t, devices["csr-1"], ops["csr-1"])
		if x.status != http.StatusOK || x.body["status"] != "assigned" {
			t.Fatalf("got %d %s, want 200 assigned", x.status, x.body["status"])
		}
		if _, ok := x.body["privateKey"]; ok {
			t.Error("a CSR device got a privateKey")
		}
		block, _ := pem.Decode([]byte(x.body["certificate"].(string)))
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !deviceKey.PublicKey.Equal(cert.PublicKey) {
			t.Error("the certificate is not for the CSR's key")
		}
		verifyDeviceChain(t, s, []byte(x.body["certificate"].(string)), "d-csr-1")
	})
	t.Run("ok/failed", func(t *testing.T) {
		x := await(t, devices["disabled-1"], ops["disabled-1"])
		if x.status != http.StatusOK || x.body["status"] != "failed" {
			t.Fatalf("got %d %s, want 200 failed", x.status, x.raw)
		}
		if e, _ := x.body["error"].(map[string]any); e["code"] != "dps_registration_failed" {
			t.Errorf("error %v, want dps_registration_failed", e)
		}
	})

	seen := map[int]bool{}
	expect := func(t *testing.T, x exchange, status int, code string) {
		t.Helper()
		if x.status != status || x.errorCode() != code {
			t.Errorf("got %d %s, want %d %s", x.status, x.raw, status, code)
		}
		seen[x.status] = true
	}

	rsaWeak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	bob := sas.valid("bob-1")
	tooLongID := strings.Repeat("a", 64) // a valid registration ID; "d-" + it is 66 characters
	beam := devices["beam"]
	sig := beam.header["X-Soracom-Signature"]
	tampered := beam.with("X-Soracom-Signature", strings.Repeat("0", len(sig)))
	if sig == "" || tampered.header["X-Soracom-Signature"] == sig {
		t.Fatalf("cannot tamper with the Beam signature %q", sig)
	}
	forged := credential{security: secForwarded,
		header: map[string]string{"X-ARR-ClientCert": base64.StdEncoding.EncodeToString(boot.Leaf.Raw)}}
	noClientCert := newTLSDevice(tlsBase, pool, nil)
	errorCases := []struct {
		name   string
		req    request
		status int
		code   string
	}{
		{"fail/malformed-json", request{method: "POST", path: registerPath, header: withJSON(bob), body: `{"csr":`, security: secSAS}, 400, "malformed_json"},
		{"fail/invalid-csr", request{method: "POST", path: registerPath, header: withJSON(bob), body: `{"csr":"bm90IGEgY3Ny"}`, docValid: true, security: secSAS}, 400, "invalid_csr"},
		{"fail/weak-key", request{method: "POST", path: registerPath, header: withJSON(bob), body: csrBody(t, csrPEM(t, rsaWeak, "x")), docValid: true, security: secSAS}, 400, "weak_key"},
		{"fail/unsupported-key", request{method: "POST", path: registerPath, header: withJSON(bob), body: csrBody(t, csrPEM(t, edKey, "x")), docValid: true, security: secSAS}, 400, "unsupported_key"},
		{"fail/invalid-device-id", request{method: "POST", path: registerPath, header: sas.valid(tooLongID), docValid: true, security: secSAS}, 400, "invalid_device_id"},
		{"fail/invalid-device-id-poll", request{method: "GET", path: registrationsPath + ops["csr-1"], header: sas.valid(tooLongID), docValid: true, security: secSAS}, 400, "invalid_device_id"},
		{"fail/missing-credential", request{method: "POST", path: registerPath}, 401, "missing_credential"},
		{"fail/missing-credential-poll", request{method: "GET", path: registrationsPath + ops["csr-1"]}, 401, "missing_credential"},
		// The TLS listener asks for a client certificate but does not require one.
		{"fail/missing-credential-tls", request{method: "POST", path: registerPath, via: noClientCert}, 401, "missing_credential"},
		{"fail/invalid-credential", request{method: "POST", path: registerPath, docValid: true, security: secSAS,
			header: map[string]string{"Authorization": strings.Replace(bob["Authorization"], "sig=", "sig=AAAA", 1)}}, 401, "invalid_credential"},
		{"fail/expired-credential", request{method: "POST", path: registerPath, header: sas.token("bob-1", time.Now().Add(-time.Minute), ""), docValid: true, security: secSAS}, 401, "expired_credential"},
		{"fail/unknown-key-group", request{method: "POST", path: registerPath, header: sas.token("bob-1", time.Now().Add(time.Hour), "other-group"), docValid: true, security: secSAS}, 401, "unknown_key_group"},
		{"fail/beam-tampered-signature", tampered.request("POST", registerPath, ""), 401, "invalid_credential"},
		{"fail/beam-tampered-signature-poll", tampered.request("GET", registrationsPath+ops["beam"], ""), 401, "invalid_credential"},
		{"fail/jwt-wrong-audience", cli.jwt("jwt-2", "--aud", "someone-else").request("POST", registerPath, ""), 401, "invalid_credential"},
		{"fail/jwt-wrong-audience-poll", cli.jwt("jwt-1", "--aud", "someone-else").request("GET", registrationsPath+ops["jwt"], ""), 401, "invalid_credential"},
		// IOTPROV_X509_TRUST_FORWARDED_CERT is false: even a genuine bootstrap
		// certificate in the header is refused, since anyone can send the header.
		{"fail/untrusted-forwarded-cert", forged.request("POST", registerPath, ""), 401, "untrusted_client_cert_header"},
		{"fail/other-devices-operation", request{method: "GET", path: registrationsPath + ops["csr-1"], header: bob, docValid: true, security: secSAS}, 404, "operation_not_found"},
		// The operation is bound to the method as well as the subject.
		{"fail/same-subject-other-method", sasCred("jwt-1").request("GET", registrationsPath+ops["jwt"], ""), 404, "operation_not_found"},
		{"fail/other-devices-operation-x509", x509Cred.request("GET", registrationsPath+ops["jwt"], ""), 404, "operation_not_found"},
		{"fail/unknown-operation", request{method: "GET", path: registrationsPath + "0e8e5b9c-2d7a-4d6e-9f65-3f0a3c1f2b11", header: bob, docValid: true, security: secSAS}, 404, "operation_not_found"},
		{"fail/malformed-operation-id", request{method: "GET", path: registrationsPath + "not-an-id", header: bob, security: secSAS}, 404, "operation_not_found"},
		{"fail/unknown-path", request{method: "GET", path: "/v1/nothing", header: bob}, 404, "not_found"},
		{"fail/method-register", request{method: "PUT", path: registerPath, header: bob}, 405, "method_not_allowed"},
		{"fail/method-registration", request{method: "DELETE", path: registrationsPath + ops["csr-1"], header: sas.valid("csr-1")}, 405, "method_not_allowed"},
		{"fail/too-large", request{method: "POST", path: registerPath, header: withJSON(bob), body: `{"csr":"` + strings.Repeat("A", 17<<10) + `"}`, security: secSAS}, 413, "body_too_large"},
		{"fail/not-json", request{method: "POST", path: registerPath, header: map[string]string{"Authorization": bob["Authorization"], "Content-Type": "text/plain"}, body: "hello", security: secSAS}, 415, "unsupported_media_type"},
		// server-key-1 finished above, and the stack's minimum interval is 1h.
		{"fail/too-many-registrations", request{method: "POST", path: registerPath, header: sas.valid("server-key-1"), docValid: true, security: secSAS}, 429, "too_many_registrations"},
	}
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			expect(t, c.do(t, tc.req), tc.status, tc.code)
		})
	}

	// The device policy (IOTPROV_DEVICE_POLICY=open here): the operator disables the JWT
	// device, which can then start nothing new but still collects what it was issued.
	t.Run("fail/device-disabled", func(t *testing.T) {
		jwt := devices["jwt"]
		cli.device("disable", "d-jwt-1")
		expect(t, c.do(t, jwt.request("POST", registerPath, "")), 403, "device_disabled")
		// Disabled whatever the method: the policy is keyed by device ID.
		expect(t, c.do(t, sasCred("jwt-1").request("POST", registerPath, "")), 403, "device_disabled")
		if x := poll(t, jwt, ops["jwt"]); x.status != http.StatusOK || x.body["status"] != "assigned" {
			t.Errorf("poll of a disabled device's operation: %d %s, want 200 assigned", x.status, x.raw)
		}
		// Enabled again, it is past the policy and meets the minimum interval (1h).
		cli.device("enable", "d-jwt-1")
		expect(t, c.do(t, jwt.request("POST", registerPath, "")), 429, "too_many_registrations")
	})

	// Allow-list mode, Beam identified by SIM ID and a trusted X-ARR-ClientCert (as behind
	// App Service) are start-time settings, so they need their own handler: a second
	// stack, about 3 s. Its listed devices register through the two security alternatives
	// the first stack cannot accept (beamSimId, x509Forwarded).
	t.Run("fail/device-not-allowed", func(t *testing.T) {
		s2 := startStack(t, stackOptions{Settings: map[string]string{
			"IOTPROV_AUTH_METHODS":              "sas,beam,jwt,x509",
			"IOTPROV_DEVICE_POLICY":             "allowlist",
			"IOTPROV_DEVICE_ID_TEMPLATE":        "d-{id}",
			"IOTPROV_BEAM_IDENTITY":             "sim-id",
			"IOTPROV_X509_TRUST_FORWARDED_CERT": "true",
		}})
		c2 := newContract(t, s2.BaseURL)
		sas2 := newSASKit(t, s2)
		cli2 := cliCredentials{t: t, bin: cli.bin, s: s2}
		const simID = "8981100005819480001"
		boot2 := cli2.bootstrapCert("factory-2")
		forwarded := credential{security: secForwarded,
			header: map[string]string{"X-ARR-ClientCert": base64.StdEncoding.EncodeToString(boot2.Leaf.Raw)}}
		for _, id := range []string{"d-listed-1", "d-" + simID, "d-factory-2"} {
			cli2.device("add", id)
		}
		for name, cr := range map[string]credential{
			"sas":                  {header: sas2.valid("listed-1"), security: secSAS},
			"beam-sim-id":          cli2.beamSIM(simID),
			"x509-forwarded-trust": forwarded,
		} {
			if x := c2.do(t, cr.request("POST", registerPath, "")); x.status != http.StatusAccepted || x.body["status"] != "assigning" {
				t.Errorf("listed %s device: %d %s, want 202 assigning", name, x.status, x.raw)
			}
		}
		unlisted := credential{header: sas2.valid("unlisted-1"), security: secSAS}
		expect(t, c2.do(t, unlisted.request("POST", registerPath, "")), 403, "device_not_allowed")
		expect(t, c2.do(t, cli2.beamSIM("8981100005819480002").request("POST", registerPath, "")), 403, "device_not_allowed")
		// Identified by SIM ID here: Beam headers with an IMSI alone carry no identity.
		expect(t, c2.do(t, cli2.beam("295000000000001").request("POST", registerPath, "")), 401, "invalid_credential")
		// Listed but disabled: disabled wins over listed.
		cli2.device("disable", "d-listed-1")
		expect(t, c2.do(t, cli2.jwt("listed-1").request("POST", registerPath, "")), 403, "device_disabled")
	})

	// Outages last: they take the SAS group key away from every device. The secret is
	// cached for 1s, so each change is seen after that.
	keyFile := s.Material.SecretFile(devstack.SecretSASGroupKey)
	keyText, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(keyFile, keyText, 0o600) })
	outages := []struct {
		name   string
		key    []byte // nil: the secret is gone, as when Key Vault cannot be read
		req    request
		status int
		code   string
	}{
		{"fail/key-store-unavailable", nil, request{method: "POST", path: registerPath, header: bob, docValid: true, security: secSAS}, 503, "service_unavailable"},
		{"fail/key-store-unavailable-poll", nil, request{method: "GET", path: registrationsPath + ops["csr-1"], header: sas.valid("csr-1"), docValid: true, security: secSAS}, 503, "service_unavailable"},
		{"fail/empty-group-key", []byte{}, request{method: "POST", path: registerPath, header: bob, docValid: true, security: secSAS}, 500, "internal_error"},
	}
	for _, tc := range outages {
		t.Run(tc.name, func(t *testing.T) {
			if tc.key == nil {
				if err := os.Remove(keyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(keyFile, tc.key, 0o600); err != nil {
				t.Fatal(err)
			}
			time.Sleep(1100 * time.Millisecond)
			expect(t, c.do(t, tc.req), tc.status, tc.code)
		})
	}

	// Every error status the document lists was driven here, except those no stack knob
	// can produce yet.
	notDriven := map[string]string{
		"410": "credentials_expired: the purge timer runs every 15 min on the local runner; TestOpenAPIGone covers it",
	}
	for _, pi := range c.doc.Paths.Map() {
		for _, op := range pi.Operations() {
			for status := range op.Responses.Map() {
				n, _ := strconv.Atoi(status)
				if n < 400 || seen[n] {
					continue
				}
				if _, ok := notDriven[status]; !ok {
					t.Errorf("the document lists status %s, which this test never drove", status)
				}
			}
		}
	}
}

// notDeviceVisible are codes the source defines that no device ever sees, each with why.
var notDeviceVisible = map[string]string{
	"ca_unavailable":       "transient: recorded on an operation still in flight, which devices see as assigning",
	"data_key_unavailable": "transient: recorded on an operation still in flight, which devices see as assigning",
	"dps_unavailable":      "transient: recorded on an operation still in flight, which devices see as assigning",
}

// documentedNotInSource are codes the document lists that no Go constant or literal
// emits, each with why. Empty: the document lists what the code does.
var documentedNotInSource = map[string]string{}

// codePackages are where codes are defined: errcode's shared ones, and each package's
// own next to the code that returns them. A new package that defines codes joins here.
var codePackages = []string{"internal/errcode", "internal/api", "internal/auth", "internal/ca", "internal/provision", "internal/store", "internal/policy"}

// sourceCodes returns every error code the packages can emit, with where it is defined:
// string constants named Code…, `Code: "…"` fields of composite literals (the worker's
// permanent and transient errors), and literal codes passed to errcode.New / errcode.Wrap.
func sourceCodes(t *testing.T) map[string]string {
	t.Helper()
	root := testenv.ModuleRoot()
	fset := token.NewFileSet()
	codes := map[string]string{}
	add := func(lit ast.Expr) {
		b, ok := lit.(*ast.BasicLit)
		if !ok || b.Kind != token.STRING {
			return
		}
		v, err := strconv.Unquote(b.Value)
		if err != nil {
			t.Fatal(err)
		}
		p := fset.Position(b.Pos())
		rel, _ := filepath.Rel(root, p.Filename)
		if _, dup := codes[v]; !dup {
			codes[v] = fmt.Sprintf("%s:%d", rel, p.Line)
		}
	}
	for _, dir := range codePackages {
		files, err := filepath.Glob(filepath.Join(root, dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatalf("%s has no Go files: update codePackages", dir)
		}
		for _, path := range files {
			if strings.HasSuffix(path, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.ValueSpec:
					for i, name := range n.Names {
						if strings.HasPrefix(name.Name, "Code") && i < len(n.Values) {
							add(n.Values[i])
						}
					}
				case *ast.KeyValueExpr:
					if k, ok := n.Key.(*ast.Ident); ok && k.Name == "Code" {
						add(n.Value)
					}
				case *ast.CallExpr:
					sel, ok := n.Fun.(*ast.SelectorExpr)
					if !ok {
						return true
					}
					pkg, _ := sel.X.(*ast.Ident)
					isErrcode := pkg != nil && pkg.Name == "errcode"
					switch {
					case isErrcode && sel.Sel.Name == "New" && len(n.Args) >= 2:
						add(n.Args[1])
					case isErrcode && sel.Sel.Name == "Wrap" && len(n.Args) >= 3:
						add(n.Args[2])
					}
				}
				return true
			})
		}
	}
	return codes
}

// documentedCodes returns the enums of the ErrorCode and OperationErrorCode schemas.
func documentedCodes(t *testing.T, doc *openapi3.T) (errorCodes, operationCodes []string) {
	t.Helper()
	enum := func(name string) []string {
		ref := doc.Components.Schemas[name]
		if ref == nil || ref.Value == nil || len(ref.Value.Enum) == 0 {
			t.Fatalf("docs/openapi.yaml: components.schemas.%s has no enum", name)
		}
		var out []string
		for _, v := range ref.Value.Enum {
			s, ok := v.(string)
			if !ok {
				t.Fatalf("%s enum holds %v, not a string", name, v)
			}
			out = append(out, s)
		}
		return out
	}
	return enum("ErrorCode"), enum("OperationErrorCode")
}

// narrowedCodes returns the codes a response schema allows: the const or enum that an
// allOf branch puts on error.code.
func narrowedCodes(s *openapi3.Schema) []string {
	var out []string
	for _, branch := range s.AllOf {
		if branch.Value == nil {
			continue
		}
		out = append(out, narrowedCodes(branch.Value)...)
		e := branch.Value.Properties["error"]
		if e == nil || e.Value == nil {
			continue
		}
		code := e.Value.Properties["code"]
		if code == nil || code.Value == nil || code.Ref != "" {
			continue
		}
		if c, ok := code.Value.Const.(string); ok {
			out = append(out, c)
		}
		for _, v := range code.Value.Enum {
			if c, ok := v.(string); ok {
				out = append(out, c)
			}
		}
	}
	return out
}

// TestOpenAPIErrorCodes: every code the source can emit is in the document, and the
// document lists nothing the source does not emit. Needs no external process.
func TestOpenAPIErrorCodes(t *testing.T) {
	doc := loadContract(t)
	src := sourceCodes(t)
	errorCodes, opCodes := documentedCodes(t, doc)
	documented := map[string]bool{}
	for _, c := range append(slices.Clone(errorCodes), opCodes...) {
		documented[c] = true
	}

	var undocumented []string
	for code, where := range src {
		if _, internal := notDeviceVisible[code]; internal {
			continue
		}
		if !documented[code] {
			undocumented = append(undocumented, fmt.Sprintf("%s (%s)", code, where))
		}
	}
	sort.Strings(undocumented)
	for _, u := range undocumented {
		t.Errorf("error code %s is not in docs/openapi.yaml: add it to components.schemas.ErrorCode "+
			"(and to the response of its status) or OperationErrorCode, and to README's table", u)
	}
	for code := range documented {
		if _, ok := src[code]; !ok {
			if _, excused := documentedNotInSource[code]; !excused {
				t.Errorf("docs/openapi.yaml lists %q, which no source in %v emits", code, codePackages)
			}
		}
	}
	for code := range notDeviceVisible {
		if _, ok := src[code]; !ok {
			t.Errorf("notDeviceVisible lists %q, which the source no longer defines", code)
		}
		if documented[code] {
			t.Errorf("%q is documented but listed in notDeviceVisible", code)
		}
	}

	// Each code of ErrorCode is answered with exactly the status the document says:
	// every response narrows error.code, and together they cover the whole enum.
	byStatus := map[string]bool{}
	for path, pi := range doc.Paths.Map() {
		for method, op := range pi.Operations() {
			for status, ref := range op.Responses.Map() {
				if n, _ := strconv.Atoi(status); n < 400 {
					continue
				}
				mt := ref.Value.Content.Get("application/json")
				if mt == nil || mt.Schema == nil || mt.Schema.Value == nil {
					t.Errorf("%s %s %s: no JSON schema", method, path, status)
					continue
				}
				narrowed := narrowedCodes(mt.Schema.Value)
				if len(narrowed) == 0 {
					t.Errorf("%s %s %s: the schema does not narrow error.code to this status's codes", method, path, status)
				}
				for _, c := range narrowed {
					if !slices.Contains(errorCodes, c) {
						t.Errorf("%s %s %s: code %q is not in ErrorCode", method, path, status, c)
					}
					byStatus[c] = true
				}
			}
		}
	}
	byStatus["not_found"] = true // answered to paths outside the document, in the Error shape
	for _, c := range errorCodes {
		if !byStatus[c] {
			t.Errorf("ErrorCode %q is answered under no documented status", c)
		}
	}
}

// fixedAuth accepts any request that carries an Authorization header as one identity.
type fixedAuth struct{ identity auth.Identity }

var _ api.Authenticator = fixedAuth{}

func (a fixedAuth) Authenticate(_ context.Context, r *http.Request) (auth.Identity, error) {
	if r.Header.Get("Authorization") == "" {
		return auth.Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeMissingCredential, "No credential.")
	}
	return a.identity, nil
}

func (fixedAuth) Challenges() []string { return []string{"SharedAccessSignature"} }

type sameDeviceID struct{}

func (sameDeviceID) DeviceID(subject string) (string, error) { return subject, nil }

// oneOperation is a store holding one operation.
type oneOperation struct{ op store.Operation }

var _ api.Operations = (*oneOperation)(nil)

func (o *oneOperation) GetCurrent(context.Context, string) (*store.Current, error) {
	return nil, store.ErrNotFound
}

func (o *oneOperation) CreateOperation(context.Context, *store.Operation, *store.Current) error {
	return errors.New("oneOperation: read-only")
}

func (o *oneOperation) GetOperation(_ context.Context, deviceID, operationID string) (*store.Operation, error) {
	if deviceID != o.op.DeviceID || operationID != o.op.ID {
		return nil, store.ErrNotFound
	}
	op := o.op
	return &op, nil
}

func (o *oneOperation) UpdateOperation(context.Context, *store.Operation) error {
	return errors.New("oneOperation: read-only")
}

// TestOpenAPIGone checks the one answer no stack knob can produce in a few seconds —
// 410 once the purge has erased a server-generated key (the purge timer runs every
// 15 min) — with the real api.Server over HTTP and a store holding such an operation.
func TestOpenAPIGone(t *testing.T) {
	op := store.Operation{ID: "0e8e5b9c-2d7a-4d6e-9f65-3f0a3c1f2b11", DeviceID: "dev-1", Identity: "sas:dev-1",
		Status: store.StatusAssigned, CertificatePEM: "-----BEGIN CERTIFICATE-----\n", Host: "hub", AssignedDeviceID: "dev-1",
		KeyErased: true, CreatedAt: time.Now().Add(-48 * time.Hour)}
	srv := &api.Server{Auth: fixedAuth{auth.Identity{Method: "sas", Subject: "dev-1"}}, DeviceIDs: sameDeviceID{},
		Ops: &oneOperation{op: op}, RootCAPEM: "-----BEGIN CERTIFICATE-----\n", RetryAfter: time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	mux := http.NewServeMux()
	srv.Routes(mux)
	ts := httptest.NewServer(mux)
	defer ts.Close()

	c := newContract(t, ts.URL)
	x := c.do(t, request{method: "GET", path: registrationsPath + op.ID, docValid: true, security: secSAS,
		header: map[string]string{"Authorization": "SharedAccessSignature sr=dev-1&sig=x&se=1"}})
	if x.status != http.StatusGone || x.errorCode() != "credentials_expired" {
		t.Errorf("got %d %s, want 410 credentials_expired", x.status, x.raw)
	}
}
