package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
)

// Device API paths (DESIGN.md §2).
const (
	registerPath      = "/v1/provisioning/azure/iot/register"
	registrationsPath = "/v1/provisioning/azure/iot/registrations/"
)

// The files device register writes: the names of the README's device script, so the
// mosquitto_pub line after it works unchanged.
const (
	certificateFile = "certificate.pem"
	privateKeyFile  = "privatekey.pem"
	rootCAFile      = "rootCaCertificate.pem"
)

// Poll pacing: the service's Retry-After, kept within these bounds so a missing or
// absurd header neither spins nor stalls the device.
const (
	defaultPollDelay = time.Second
	minPollDelay     = 200 * time.Millisecond
	maxPollDelay     = 30 * time.Second
	// maxAnswerSize bounds what is read from the service: an assigned answer with an
	// RSA-3072 key and a chain is a few KiB.
	maxAnswerSize = 1 << 20
)

// headerFlags is a repeatable -H 'Name: value', as curl takes it.
type headerFlags []string

func (h *headerFlags) String() string { return strings.Join(*h, ", ") }

func (h *headerFlags) Set(v string) error {
	name, value, ok := strings.Cut(v, ":")
	name = strings.TrimSpace(name)
	if !ok || name == "" || strings.ContainsAny(name, " \t\r\n") || strings.ContainsAny(value, "\r\n") {
		return fmt.Errorf("want 'Name: value', got %q", v)
	}
	*h = append(*h, v)
	return nil
}

func (h headerFlags) apply(hdr http.Header) {
	for _, v := range h {
		name, value, _ := strings.Cut(v, ":")
		hdr.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
}

func (h headerFlags) has(name string) bool {
	for _, v := range h {
		n, _, _ := strings.Cut(v, ":")
		if strings.EqualFold(strings.TrimSpace(n), name) {
			return true
		}
	}
	return false
}

func deviceRegister(e *env, args []string) error {
	fs := newFlagSet(e, "device register", "[--url BASE] [--out DIR] [--csr] (SAS flags | -H 'Name: value'… | --cert FILE --key FILE)", `
Act as a device: POST register, poll the operation (a progress line on standard
error), then write certificate.pem (device certificate and chain), privatekey.pem and
rootCaCertificate.pem into --out and print OPERATION_ID, DEVICE_ID and HOST as shell
assignments (eval "$(iotprov device register …)").

With --csr the P-256 key is generated here and only a CSR is sent: the service never
sees the private key, and the answer must not carry one.

Authentication: SAS with --group-key-file or --device-key and --id; any other method
with -H, e.g. -H 'Authorization: Bearer <JWT>' or SORACOM Beam's x-soracom-* headers;
an X.509 bootstrap certificate with --cert/--key (mutual TLS, https only).`)
	base := fs.String("url", envOr("IOTPROV_URL", "http://127.0.0.1:7071"), "base URL of the service (default $IOTPROV_URL or the local stack)")
	outDir := fs.String("out", ".", "folder for certificate.pem, privatekey.pem and rootCaCertificate.pem")
	useCSR := fs.Bool("csr", false, "generate the key here (ECDSA P-256) and send only a CSR")
	var sas sasCredential
	addSASFlags(fs, &sas)
	var headers headerFlags
	fs.Var(&headers, "H", "extra request header 'Name: value' (repeatable)")
	certFile := fs.String("cert", "", "client certificate (PEM chain) for mutual TLS")
	keyFile := fs.String("key", "", "private key of --cert")
	caFile := fs.String("cacert", "", "extra PEM roots trusted for the service's TLS certificate")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	baseURL, err := url.Parse(strings.TrimSuffix(*base, "/"))
	if err != nil || (baseURL.Scheme != "http" && baseURL.Scheme != "https") || baseURL.Host == "" {
		return fmt.Errorf("--url %q: want http(s)://host[:port]", *base)
	}
	client, err := deviceHTTPClient(baseURL, *certFile, *keyFile, *caFile)
	if err != nil {
		return err
	}
	hdr := http.Header{}
	headers.apply(hdr)
	if sas.given() {
		if headers.has("Authorization") {
			return errors.New("give SAS flags or -H 'Authorization: …', not both")
		}
		tok, err := sas.token(e.now())
		if err != nil {
			return err
		}
		hdr.Set("Authorization", tok)
	} else if sas.id != "" && len(headers) == 0 && *certFile == "" {
		return errors.New("no credential: --id needs --group-key-file or --device-key (or give -H or --cert)")
	}

	var (
		body    []byte
		csrKey  *ecdsa.PrivateKey
		csrName = sas.id
	)
	if *useCSR {
		if csrName == "" {
			csrName = "device" // the service sets the subject; this is only a placeholder
		}
		if csrKey, body, err = newCSRBody(csrName); err != nil {
			return err
		}
		hdr.Set("Content-Type", "application/json")
	}

	ctx, cancel := context.WithTimeout(e.ctx, *timeout)
	defer cancel()
	d := &deviceClient{http: client, base: baseURL.String(), header: hdr}
	first, err := d.call(ctx, http.MethodPost, registerPath, body)
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if first.transient != nil {
		return fmt.Errorf("register: %w; try again in %s", first.transient, first.retryAfter)
	}
	if first.code != http.StatusAccepted && first.code != http.StatusOK {
		return fmt.Errorf("register: unexpected HTTP %d", first.code)
	}
	opID := first.ans.OperationID
	fmt.Fprintf(e.errOut, "registered: operation %s\n", opID)

	started := e.now()
	prog := newProgress(e.errOut)
	res := first
	for poll := 1; res.ans.Status == statusAssigning; poll++ {
		status := res.ans.Status
		if res.transient != nil {
			status = res.transient.Error() + ", retrying"
		}
		prog.update(fmt.Sprintf("operation %s: %s (poll %d, %s)", opID, status, poll, e.now().Sub(started).Round(time.Second)))
		if err := sleep(ctx, res.retryAfter); err != nil {
			prog.done()
			return fmt.Errorf("operation %s still %s: %w", opID, res.ans.Status, err)
		}
		if res, err = d.call(ctx, http.MethodGet, registrationsPath+url.PathEscape(opID), nil); err != nil {
			prog.done()
			return fmt.Errorf("poll: %w", err)
		}
		if res.transient != nil {
			res.ans = &answer{OperationID: opID, Status: statusAssigning}
		}
		if res.ans.OperationID != opID {
			prog.done()
			return fmt.Errorf("poll: answer is for operation %q, not %q", res.ans.OperationID, opID)
		}
	}
	prog.update(fmt.Sprintf("operation %s: %s (%s)", opID, res.ans.Status, e.now().Sub(started).Round(time.Second)))
	prog.done()
	if res.ans.Status == statusFailed {
		return fmt.Errorf("provisioning failed: %s: %s", res.ans.Error.Code, res.ans.Error.Message)
	}

	keyPEM, err := checkCredentials(res.ans, csrKey)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{certificateFile, []byte(res.ans.Certificate), 0o644},
		{privateKeyFile, keyPEM, 0o600},
		{rootCAFile, []byte(res.ans.RootCACertificate), 0o644},
	} {
		if err := writeFileAtomic(filepath.Join(*outDir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.errOut, "wrote %s, %s and %s in %s\n", certificateFile, privateKeyFile, rootCAFile, *outDir)
	fmt.Fprintf(e.out, "OPERATION_ID=%s\nDEVICE_ID=%s\nHOST=%s\n", shellQuote(opID), shellQuote(res.ans.DeviceID), shellQuote(res.ans.Host))
	return nil
}

// newCSRBody makes the device's key and the register body carrying its CSR.
func newCSRBody(cn string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("making the CSR: %w", err)
	}
	body, err := json.Marshal(map[string]string{"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	return key, body, err
}

// checkCredentials makes sure what the service sent is usable before anything is written,
// and returns the private key PEM to write: the service's (server-generated key) or
// the one made here (CSR), which must match the certificate.
func checkCredentials(a *answer, csrKey *ecdsa.PrivateKey) ([]byte, error) {
	if csrKey == nil {
		if a.PrivateKey == "" {
			return nil, errors.New("the answer has no privateKey (was the key erased after its retention? register again)")
		}
		if _, err := tls.X509KeyPair([]byte(a.Certificate), []byte(a.PrivateKey)); err != nil {
			return nil, fmt.Errorf("the certificate and private key in the answer do not match: %w", err)
		}
		return []byte(a.PrivateKey), nil
	}
	if a.PrivateKey != "" {
		return nil, errors.New("the service returned a private key for a CSR registration; refusing to use it")
	}
	keyPEM, err := ca.MarshalPrivateKeyPEM(csrKey)
	if err != nil {
		return nil, err
	}
	if _, err := tls.X509KeyPair([]byte(a.Certificate), keyPEM); err != nil {
		return nil, fmt.Errorf("the certificate is not for the key generated here: %w", err)
	}
	return keyPEM, nil
}

func deviceHTTPClient(base *url.URL, certFile, keyFile, caFile string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("give --cert and --key together")
	}
	if certFile != "" {
		if base.Scheme != "https" {
			return nil, errors.New("--cert needs an https --url: a client certificate is presented in the TLS handshake")
		}
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		tr.TLSClientConfig.Certificates = []tls.Certificate{pair}
	}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--cacert %s: no PEM certificate", caFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: tr, Timeout: time.Minute}, nil
}

// deviceClient sends the device's requests with its headers.
type deviceClient struct {
	http   *http.Client
	base   string
	header http.Header
}

// result is one answer of the service, parsed.
type result struct {
	code       int
	retryAfter time.Duration
	ans        *answer
	transient  error // set for 503 and 429: ans is empty, ask again after retryAfter
}

func (d *deviceClient) call(ctx context.Context, method, path string, body []byte) (*result, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.base+path, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range d.header {
		if body == nil && k == "Content-Type" {
			continue
		}
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/json")
	resp, err := d.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerSize+1))
	if err != nil {
		return nil, err
	}
	return parseAnswer(resp.StatusCode, resp.Header.Get("Retry-After"), raw)
}

// The statuses of the device API.
const (
	statusAssigning = "assigning"
	statusAssigned  = "assigned"
	statusFailed    = "failed"
)

// answer is the device API's JSON (DESIGN.md §2): an operation in flight, assigned or
// failed, or an error.
type answer struct {
	OperationID       string    `json:"operationId"`
	Status            string    `json:"status"`
	DeviceID          string    `json:"deviceId"`
	Host              string    `json:"host"`
	Certificate       string    `json:"certificate"`
	PrivateKey        string    `json:"privateKey"`
	RootCACertificate string    `json:"rootCaCertificate"`
	Error             *apiError `json:"error"`
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// parseAnswer reads one answer of the service, which the device does not trust: anything
// but a well-formed in-flight, assigned or failed answer, or a 503/429 to wait out, is
// an error naming the status and, when the service sent one, its error code and message. Values that end up in
// file names, URLs or the shell assignments printed at the end are checked here.
func parseAnswer(code int, retryAfter string, body []byte) (*result, error) {
	if len(body) > maxAnswerSize {
		return nil, fmt.Errorf("HTTP %d: answer larger than %d bytes", code, maxAnswerSize)
	}
	var a answer
	jsonErr := json.Unmarshal(body, &a)
	res := &result{code: code, retryAfter: parseRetryAfter(retryAfter), ans: &a}
	switch {
	case code == http.StatusAccepted && jsonErr == nil && a.Status == statusAssigning:
	case code == http.StatusOK && jsonErr == nil && (a.Status == statusAssigned || a.Status == statusFailed):
	case code == http.StatusServiceUnavailable || code == http.StatusTooManyRequests && retryAfter != "":
		// A dependency is down, or the device is throttled: a poll waits and asks again.
		res.transient = serviceError(code, jsonErr, &a)
		res.ans = &answer{}
		return res, nil
	default:
		return nil, serviceError(code, jsonErr, &a)
	}
	if !validOperationID(a.OperationID) {
		return nil, fmt.Errorf("HTTP %d: the answer has no valid operationId", code)
	}
	switch a.Status {
	case statusAssigned:
		if !printable(a.DeviceID) || !printable(a.Host) {
			return nil, errors.New("the assigned answer has no usable deviceId or host")
		}
		if !strings.Contains(a.Certificate, "-----BEGIN CERTIFICATE-----") || !strings.Contains(a.RootCACertificate, "-----BEGIN CERTIFICATE-----") {
			return nil, errors.New("the assigned answer lacks a PEM certificate or rootCaCertificate")
		}
	case statusFailed:
		if a.Error == nil {
			a.Error = &apiError{Code: "unknown", Message: "The service gave no reason."}
		}
	}
	return res, nil
}

func serviceError(code int, jsonErr error, a *answer) error {
	if jsonErr == nil && a.Error != nil && a.Error.Code != "" {
		return fmt.Errorf("HTTP %d %s: %s", code, clean(a.Error.Code, 64), clean(a.Error.Message, 300))
	}
	return fmt.Errorf("HTTP %d (%s) with no device API answer", code, http.StatusText(code))
}

// clean keeps a service-supplied string to one printable line of at most n bytes before
// it reaches the terminal.
func clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

// validOperationID accepts what the service makes (UUIDs) and the same alphabet, so the ID
// is safe in a URL path and in a shell assignment.
func validOperationID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// printable: non-empty printable ASCII of at most 255 bytes (a hostname's limit; device
// IDs are at most 64).
func printable(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// parseRetryAfter reads delay-seconds (the service never sends an HTTP date), bounded to
// [minPollDelay, maxPollDelay]; anything else means the default.
func parseRetryAfter(v string) time.Duration {
	secs, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || secs < 0 {
		return defaultPollDelay
	}
	d := time.Duration(min(secs, int(maxPollDelay/time.Second))) * time.Second
	return max(d, minPollDelay)
}

// shellQuote makes s one single-quoted shell word.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// progress is the poll's progress line: rewritten in place on a terminal, one line per
// poll otherwise (logs, CI).
type progress struct {
	w        io.Writer
	terminal bool
	dirty    bool
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.terminal = true
		}
	}
	return p
}

func (p *progress) update(line string) {
	if p.terminal {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.dirty = true
		return
	}
	fmt.Fprintln(p.w, line)
}

func (p *progress) done() {
	if p.dirty {
		fmt.Fprintln(p.w)
		p.dirty = false
	}
}
