package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/deviceclient"
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
	minPollDelay = 200 * time.Millisecond
	maxPollDelay = 30 * time.Second
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
		csrPEM  []byte
		csrKey  *ecdsa.PrivateKey
		csrName = sas.id
	)
	if *useCSR {
		if csrName == "" {
			csrName = "device" // the service sets the subject; this is only a placeholder
		}
		if csrKey, csrPEM, err = deviceclient.NewCSR(csrName); err != nil {
			return err
		}
	}

	ctx, cancel := context.WithTimeout(e.ctx, *timeout)
	defer cancel()
	d := &deviceclient.Client{BaseURL: baseURL.String(), HTTP: client, Authorize: func(r *http.Request) error {
		for k, v := range hdr {
			r.Header[k] = slices.Clone(v)
		}
		return nil
	}}
	var started time.Time
	prog := newProgress(e.errOut)
	res, err := d.Provision(ctx, csrPEM, deviceclient.ProvisionOptions{MinPoll: minPollDelay, MaxWait: maxPollDelay,
		Progress: func(ev deviceclient.Event) {
			// The line names the poll about to be made, or how the operation ended.
			switch {
			case ev.OperationID == "":
				// register's error answer: returned below
			case ev.Poll == 0:
				fmt.Fprintf(e.errOut, "registered: operation %s\n", ev.OperationID)
				started = e.now()
				prog.update(fmt.Sprintf("operation %s: %s (poll 1, 0s)", ev.OperationID, ev.Status))
			case ev.Err != nil && ev.Wait > 0:
				prog.update(fmt.Sprintf("operation %s: %s, retrying (poll %d, %s)", ev.OperationID, ev.Err, ev.Poll+1, e.now().Sub(started).Round(time.Second)))
			case ev.Status == deviceclient.StatusAssigning:
				prog.update(fmt.Sprintf("operation %s: %s (poll %d, %s)", ev.OperationID, ev.Status, ev.Poll+1, e.now().Sub(started).Round(time.Second)))
			case ev.Err == nil:
				prog.update(fmt.Sprintf("operation %s: %s (%s)", ev.OperationID, ev.Status, e.now().Sub(started).Round(time.Second)))
			}
		}})
	prog.done()
	if err != nil {
		// Only register's temporary answers come back: Provision waits out those of polls.
		if ae := (*deviceclient.APIError)(nil); errors.As(err, &ae) && ae.Temporary() {
			return fmt.Errorf("%w; try again in %s", err, min(max(ae.RetryAfter, minPollDelay), maxPollDelay))
		}
		return err
	}
	if res.Status == deviceclient.StatusFailed {
		return fmt.Errorf("provisioning failed: %s: %s", res.Failure.Code, res.Failure.Message)
	}

	var (
		keyPEM []byte
		signer crypto.Signer // nil unless a CSR was sent: an untyped nil, not a nil *ecdsa.PrivateKey
	)
	if csrKey != nil {
		signer = csrKey
		if keyPEM, err = ca.MarshalPrivateKeyPEM(csrKey); err != nil {
			return err
		}
	} else {
		keyPEM = []byte(res.Credentials.PrivateKey)
	}
	// The device knows neither its CA nor, with -H methods, its ID: the chain and the CN
	// are the IoT Hub's to check; the key must be the certificate's.
	if err := deviceclient.VerifyCredentials(res, "", nil, signer); err != nil {
		return err
	}
	creds := res.Credentials
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{certificateFile, []byte(creds.Certificate), 0o644},
		{privateKeyFile, keyPEM, 0o600},
		{rootCAFile, []byte(creds.RootCACertificate), 0o644},
	} {
		if err := writeFileAtomic(filepath.Join(*outDir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.errOut, "wrote %s, %s and %s in %s\n", certificateFile, privateKeyFile, rootCAFile, *outDir)
	fmt.Fprintf(e.out, "OPERATION_ID=%s\nDEVICE_ID=%s\nHOST=%s\n", shellQuote(res.OperationID), shellQuote(creds.DeviceID), shellQuote(creds.Host))
	return nil
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

// shellQuote makes s one single-quoted shell word.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
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
