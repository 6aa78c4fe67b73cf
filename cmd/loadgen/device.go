package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/ca"
)

// Device API paths (the Krypton-compatible contract).
const (
	registerPath      = "/v1/provisioning/azure/iot/register"
	registrationsPath = "/v1/provisioning/azure/iot/registrations/"
)

// maxRetryAfter bounds what a server can make a simulated device wait.
const maxRetryAfter = 5 * time.Minute

// maxBodyBytes bounds what a device reads from the service.
const maxBodyBytes = 1 << 20

// fleet is what every simulated device shares: the service, the SAS group key the
// devices' keys derive from, and the device CA root that their certificates must chain to.
type fleet struct {
	base        string
	hc          *http.Client
	groupKey    []byte
	deviceRoots *x509.CertPool
	minPoll     time.Duration // a device never polls faster than this, whatever Retry-After says
}

// outcome is one device's provisioning as the device saw it.
type outcome struct {
	DeviceID, OperationID string
	Start                 time.Time     // just before the register POST
	Latency               time.Duration // register sent → "assigned" received; 0 unless assigned
	Polls                 int           // registration GETs
	Throttled             int           // 429 answers (register or poll)
	Unavailable           int           // 503 answers
	Err                   string        // "" when assigned and verified; else a short code
}

// provision runs one device: register (with a CSR when csr), poll honouring Retry-After
// until assigned or failed, and verify what it got. It returns when done or ctx ends.
func (f *fleet) provision(ctx context.Context, id string, csr bool) outcome {
	out := outcome{DeviceID: id, Start: time.Now()}
	deviceKey := auth.DeriveDeviceKey(f.groupKey, id)
	token := auth.NewSASToken(deviceKey, url.QueryEscape(id), time.Now().Add(time.Hour).Unix(), "registration")

	var key crypto.Signer
	var body []byte
	if csr {
		k, der, err := newCSR(id)
		if err != nil {
			out.Err = "csr: " + err.Error()
			return out
		}
		key = k
		body, _ = json.Marshal(map[string]string{"csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	}

	// Register, again after a 429/503 as a device would.
	var opID string
	for opID == "" {
		status, hdr, b, err := f.do(ctx, http.MethodPost, registerPath, token, body)
		if err != nil {
			out.Err = errCode(ctx, err)
			return out
		}
		switch status {
		case http.StatusAccepted:
			var r struct {
				OperationID string `json:"operationId"`
			}
			if json.Unmarshal(b, &r) != nil || r.OperationID == "" {
				out.Err = "register: no operationId"
				return out
			}
			opID = r.OperationID
			if !sleepCtx(ctx, max(parseRetryAfter(hdr.Get("Retry-After")), f.minPoll)) {
				out.Err = errCode(ctx, ctx.Err())
				return out
			}
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			out.count(status)
			if !sleepCtx(ctx, max(parseRetryAfter(hdr.Get("Retry-After")), time.Second)) {
				out.Err = errCode(ctx, ctx.Err())
				return out
			}
		default:
			out.Err = fmt.Sprintf("register: %d %s", status, apiErrorCode(b))
			return out
		}
	}
	out.OperationID = opID

	for {
		status, hdr, b, err := f.do(ctx, http.MethodGet, registrationsPath+url.PathEscape(opID), token, nil)
		if err != nil {
			out.Err = errCode(ctx, err)
			return out
		}
		out.Polls++
		wait := max(parseRetryAfter(hdr.Get("Retry-After")), f.minPoll)
		switch status {
		case http.StatusOK:
			res, err := decodeAssigned(b)
			if err != nil {
				out.Err = "registration: " + err.Error()
				return out
			}
			if res.Status == "failed" {
				out.Err = "failed: " + res.Error.Code
				return out
			}
			if res.Status != "assigned" {
				break // keep polling: 200 is only for finished operations, but be lenient
			}
			out.Latency = time.Since(out.Start)
			if err := verifyAssigned(res, id, f.deviceRoots, key); err != nil {
				out.Err = "verify: " + err.Error()
			}
			return out
		case http.StatusAccepted:
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			out.count(status)
			wait = max(wait, time.Second)
		default:
			out.Err = fmt.Sprintf("registration: %d %s", status, apiErrorCode(b))
			return out
		}
		if !sleepCtx(ctx, wait) {
			out.Err = errCode(ctx, ctx.Err())
			return out
		}
	}
}

func (o *outcome) count(status int) {
	if status == http.StatusTooManyRequests {
		o.Throttled++
	} else {
		o.Unavailable++
	}
}

// do sends one request with the device's SAS token.
func (f *fleet) do(ctx context.Context, method, path, token string, body []byte) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, f.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := f.hc.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, maxBodyBytes))
	if err != nil {
		return 0, nil, nil, err
	}
	return res.StatusCode, res.Header, b, nil
}

// errCode names a transport failure without its details (which may hold the URL).
func errCode(ctx context.Context, err error) string {
	switch {
	case ctx.Err() != nil:
		return "deadline: still in flight when the scenario ended"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	default:
		return "transport: " + err.Error()
	}
}

// apiErrorCode is the stable code of an API error body, or "" when there is none.
func apiErrorCode(b []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	return e.Error.Code
}

// assigned is the registration answer once the operation has finished.
type assigned struct {
	OperationID       string `json:"operationId"`
	Status            string `json:"status"`
	DeviceID          string `json:"deviceId"`
	Host              string `json:"host"`
	Certificate       string `json:"certificate"`
	PrivateKey        string `json:"privateKey"`
	RootCACertificate string `json:"rootCaCertificate"`
	Error             struct {
		Code string `json:"code"`
	} `json:"error"`
}

func decodeAssigned(b []byte) (*assigned, error) {
	var a assigned
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, errors.New("answer is not JSON")
	}
	return &a, nil
}

// verifyAssigned checks the credentials a device received: a certificate for its device
// ID chaining to the device root for client authentication, the key that goes with it
// (ours when we sent a CSR, else the one in the answer), a hub and roots to verify it.
func verifyAssigned(a *assigned, deviceID string, roots *x509.CertPool, csrKey crypto.Signer) error {
	if a.DeviceID != deviceID {
		return fmt.Errorf("deviceId %q, want %q", a.DeviceID, deviceID)
	}
	if a.Host == "" {
		return errors.New("no host")
	}
	if !x509.NewCertPool().AppendCertsFromPEM([]byte(a.RootCACertificate)) {
		return errors.New("no rootCaCertificate")
	}
	var certs []*x509.Certificate
	for rest := []byte(a.Certificate); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("certificate chain holds a %q block", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return errors.New("certificate does not parse")
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return errors.New("no certificate")
	}
	leaf := certs[0]
	if leaf.Subject.CommonName != deviceID {
		return fmt.Errorf("certificate CN %q, want %q", leaf.Subject.CommonName, deviceID)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return errors.New("certificate does not chain to the device root")
	}
	key := csrKey
	if key == nil {
		if a.PrivateKey == "" {
			return errors.New("no privateKey for a server-generated key")
		}
		k, err := ca.ParsePrivateKeyPEM([]byte(a.PrivateKey))
		if err != nil {
			return errors.New("privateKey does not parse")
		}
		key = k
	} else if a.PrivateKey != "" {
		return errors.New("privateKey sent although the device sent a CSR")
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return errors.New("certificate key does not match the private key")
	}
	return nil
}

// newCSR makes a device's own P-256 key and a CSR for it.
func newCSR(id string) (crypto.Signer, []byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, k)
	return k, der, err
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date, bounded by
// maxRetryAfter; anything else is 0 (the caller's own minimum applies).
func parseRetryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return min(time.Duration(min(n, int64(maxRetryAfter/time.Second)))*time.Second, maxRetryAfter)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(t), 0), maxRetryAfter)
	}
	return 0
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
