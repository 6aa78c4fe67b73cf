package auth

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/iotprov/iotprov/internal/errcode"
)

// ClientCertHeader is where Azure App Service (and so Azure Functions) forwards the TLS
// client certificate it terminated: base64 DER of the leaf.
const ClientCertHeader = "X-Arr-Clientcert"

// CodeUntrustedClientCertHeader: the request carries X-ARR-ClientCert but this service is
// not configured to believe it (anyone can send that header to a listener that is not
// behind App Service's front end).
const CodeUntrustedClientCertHeader = "untrusted_client_cert_header"

// maxClientCertHeader bounds an untrusted header; a device certificate is ~1-2 KiB.
const maxClientCertHeader = 16 << 10

// X509Config configures the x509 authenticator.
type X509Config struct {
	// Roots returns the manufacturer CA bundle (PEM): each CA certificate in it is a trust
	// anchor. Parsed once per distinct content.
	Roots SecretFunc
	// TrustForwardedHeader believes X-ARR-ClientCert. Only set it when the platform's
	// front end sets (and strips client-sent copies of) the header.
	TrustForwardedHeader bool
	Now                  func() time.Time
}

// X509 verifies a bootstrap (factory / IDevID / claim) client certificate against the
// manufacturer CA: from the TLS handshake on the local runner's TLS listener, or from
// X-ARR-ClientCert behind App Service when trusted.
type X509 struct {
	cfg X509Config

	mu    sync.Mutex
	raw   []byte
	roots *x509.CertPool // nil until the bundle is first parsed
}

var _ Authenticator = (*X509)(nil)

// NewX509 returns the x509 authenticator.
func NewX509(cfg X509Config) *X509 {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &X509{cfg: cfg}
}

// Method returns "x509".
func (a *X509) Method() string { return "x509" }

// x509Scheme names client-certificate authentication in WWW-Authenticate. TLS, not HTTP,
// asks for the certificate, so there is no registered scheme; but DESIGN.md §2 wants every
// 401 to say how to authenticate, and a deployment with only x509 enabled would otherwise
// answer 401 with no header at all. "ClientCertificate" is what the device must present
// (in the handshake, or via App Service's X-ARR-ClientCert), as an RFC 9110 auth-scheme token.
const x509Scheme = "ClientCertificate"

// Challenge returns the WWW-Authenticate challenge naming a TLS client certificate.
func (a *X509) Challenge() string { return x509Scheme }

// ParseClientCertHeader decodes X-ARR-ClientCert (untrusted: fuzz it): base64 DER as App
// Service sends it, or a PEM certificate, possibly URL-escaped as some proxies send it.
func ParseClientCertHeader(v string) (*x509.Certificate, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, errors.New("empty")
	}
	if len(v) > maxClientCertHeader {
		return nil, errors.New("too long")
	}
	if strings.HasPrefix(v, "-----BEGIN") && !strings.Contains(v, "\n") {
		// A PEM on one line can only be URL-escaped (nginx's $ssl_client_escaped_cert).
		u, err := url.QueryUnescape(v)
		if err != nil {
			return nil, errors.New("bad URL-escaping")
		}
		v = u
	}
	if strings.HasPrefix(v, "-----BEGIN") {
		b, rest := pem.Decode([]byte(v))
		if b == nil || b.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
			return nil, errors.New("not one PEM certificate")
		}
		return x509.ParseCertificate(b.Bytes)
	}
	der, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, errors.New("not base64 DER")
	}
	return x509.ParseCertificate(der)
}

// Authenticate verifies the client certificate of r.
func (a *X509) Authenticate(ctx context.Context, r *http.Request) (Identity, error) {
	var leaf *x509.Certificate
	var presented []*x509.Certificate
	header, hasHeader := r.Header[ClientCertHeader]
	switch {
	case r.TLS != nil && len(r.TLS.PeerCertificates) > 0:
		leaf, presented = r.TLS.PeerCertificates[0], r.TLS.PeerCertificates[1:]
	case hasHeader && !a.cfg.TrustForwardedHeader:
		return Identity{}, errcode.New(http.StatusUnauthorized, CodeUntrustedClientCertHeader,
			"The X-ARR-ClientCert header is not trusted by this service; present the certificate in the TLS handshake.")
	case hasHeader:
		if len(header) != 1 {
			return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
				"The request carries more than one X-ARR-ClientCert header.")
		}
		c, err := ParseClientCertHeader(header[0])
		if err != nil {
			return Identity{}, errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential,
				"The X-ARR-ClientCert header does not hold a certificate.")
		}
		leaf = c
	default:
		return Identity{}, ErrNoCredential
	}

	// Validity first, with its own code, and before the trust store is read.
	now := a.cfg.Now()
	if now.After(leaf.NotAfter) {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeExpiredCredential,
			"The client certificate has expired.")
	}
	if now.Before(leaf.NotBefore) {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The client certificate is not valid yet.")
	}
	if leaf.IsCA || !hasClientAuth(leaf) {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The client certificate is not a client-authentication certificate (extended key usage clientAuth).")
	}
	roots, err := a.rootPool(ctx)
	if err != nil {
		return Identity{}, err
	}
	opts := x509.VerifyOptions{Roots: roots, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if len(presented) > 0 {
		// The device may send its own intermediates; they still must chain to a root.
		opts.Intermediates = x509.NewCertPool()
		for _, c := range presented {
			opts.Intermediates.AddCert(c)
		}
	}
	if _, err := leaf.Verify(opts); err != nil {
		return Identity{}, errcode.Wrap(err, http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The client certificate does not chain to a trusted manufacturer CA.")
	}
	cn := leaf.Subject.CommonName
	if cn == "" {
		return Identity{}, errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential,
			"The client certificate has no subject common name.")
	}
	return Identity{Method: a.Method(), Subject: cn}, nil
}

func hasClientAuth(c *x509.Certificate) bool {
	for _, u := range c.ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth {
			return true
		}
	}
	return false
}

// rootPool returns the trust anchors, re-parsed only when the bundle changed.
func (a *X509) rootPool(ctx context.Context) (*x509.CertPool, error) {
	if a.cfg.Roots == nil {
		// A plain error: errcode.As renders it as internal_error and logs this reason.
		return nil, errors.New("auth: x509: no CA bundle source configured")
	}
	raw, err := a.cfg.Roots(ctx)
	if err != nil {
		return nil, errcode.Unavailable(err,
			"The service cannot verify credentials right now; retry later.")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.roots != nil && bytes.Equal(raw, a.raw) {
		return a.roots, nil
	}
	roots, err := ParseCABundle(raw)
	if err != nil {
		return nil, errcode.Wrap(err, http.StatusInternalServerError, errcode.CodeInternal, "The service could not complete the request.")
	}
	a.raw, a.roots = bytes.Clone(raw), roots
	return roots, nil
}

// ParseCABundle reads the manufacturer CA bundle: every CA certificate in it is a trust
// anchor (an operator may trust one manufacturer sub-CA without its root). There is no
// intermediates pool: devices may present their own intermediates. No CA certificate is
// an error.
func ParseCABundle(raw []byte) (*x509.CertPool, error) {
	roots := x509.NewCertPool()
	n := 0
	for rest := raw; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		if !c.IsCA {
			continue
		}
		roots.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("auth: the manufacturer CA bundle holds no CA certificate")
	}
	return roots, nil
}
