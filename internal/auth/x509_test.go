package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/errcode"
)

var x509Now = time.Unix(1_800_000_000, 0)

type x509Fixture struct {
	root, inter, other *ca.Authority
	// leaf chains (leaf first) from the intermediate
	good, expired, notYet, server, untrustedCA []*x509.Certificate
	fromRoot                                   []*x509.Certificate
}

var x509Fixtures = sync.OnceValue(func() *x509Fixture {
	must := func(a *ca.Authority, err error) *ca.Authority {
		if err != nil {
			panic(err)
		}
		return a
	}
	f := &x509Fixture{}
	f.root = must(ca.NewRootCA("manufacturer root", 0, x509Now.Add(-30*24*time.Hour)))
	f.inter = must(ca.NewIntermediateCA(f.root, "manufacturer factory CA", 0, x509Now.Add(-30*24*time.Hour)))
	f.other = must(ca.NewRootCA("someone else's root", 0, x509Now.Add(-30*24*time.Hour)))
	client := func(issuer *ca.Authority, cn string, at time.Time, validity time.Duration) []*x509.Certificate {
		chain, _, err := ca.NewClientCertificate(issuer, cn, validity, at)
		if err != nil {
			panic(err)
		}
		return parseChain(chain)
	}
	f.good = client(f.inter, "factory-0001", x509Now.Add(-time.Hour), 24*time.Hour)
	f.fromRoot = client(f.root, "factory-0002", x509Now.Add(-time.Hour), 24*time.Hour)
	f.expired = client(f.inter, "factory-0001", x509Now.Add(-72*time.Hour), 24*time.Hour)
	f.notYet = client(f.inter, "factory-0001", x509Now.Add(time.Hour), 24*time.Hour)
	f.untrustedCA = client(f.other, "factory-0001", x509Now.Add(-time.Hour), 24*time.Hour)
	chain, _, err := ca.NewServerCertificate(f.inter, "factory-0001", []string{"factory-0001"}, nil, 24*time.Hour, x509Now.Add(-time.Hour))
	if err != nil {
		panic(err)
	}
	f.server = parseChain(chain)
	return f
})

func parseChain(chain []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for rest := chain; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			panic(err)
		}
		out = append(out, c)
	}
}

func headerOf(c *x509.Certificate) string { return base64.StdEncoding.EncodeToString(c.Raw) }

// TestX509Challenge: TLS asks for the certificate, but a 401 must still name the method
// (DESIGN.md §2), so the challenge is never empty, trusted header or not.
func TestX509Challenge(t *testing.T) {
	for _, trust := range []bool{false, true} {
		if got := NewX509(X509Config{TrustForwardedHeader: trust}).Challenge(); got != "ClientCertificate" {
			t.Fatalf("Challenge() (trust X-ARR-ClientCert %v) = %q, want ClientCertificate", trust, got)
		}
	}
}

func TestX509Authenticate(t *testing.T) {
	f := x509Fixtures()
	rootOnly := f.root.CertificatePEM()
	rootAndInter := append(f.root.CertificatePEM(), f.inter.CertificatePEM()...)
	pemOf := func(c *x509.Certificate) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	tests := []struct {
		name       string
		tlsChain   []*x509.Certificate
		header     []string
		trust      bool
		bundle     []byte
		rootsErr   error
		wantNoCred bool
		wantID     string
		wantStatus int
		wantCode   string
	}{
		{name: "ok/tls-leaf-and-intermediate", tlsChain: f.good, bundle: rootOnly, wantID: "factory-0001"},
		{name: "ok/tls-leaf-only-bundle-has-intermediate", tlsChain: f.good[:1], bundle: rootAndInter, wantID: "factory-0001"},
		{name: "ok/tls-leaf-from-root", tlsChain: f.fromRoot, bundle: rootOnly, wantID: "factory-0002"},
		{name: "ok/trusted-header-base64-der", header: []string{headerOf(f.good[0])}, trust: true, bundle: rootAndInter, wantID: "factory-0001"},
		{name: "ok/trusted-header-pem", header: []string{pemOf(f.good[0])}, trust: true, bundle: rootAndInter, wantID: "factory-0001"},
		{name: "ok/trusted-header-escaped-pem", header: []string{url.QueryEscape(pemOf(f.good[0]))}, trust: true, bundle: rootAndInter, wantID: "factory-0001"},
		{name: "ok/intermediate-as-anchor", tlsChain: f.good[:1], bundle: f.inter.CertificatePEM(), wantID: "factory-0001"},
		{name: "fail/missing", wantNoCred: true},
		{name: "fail/untrusted-header", header: []string{headerOf(f.good[0])}, trust: false, bundle: rootAndInter, wantStatus: 401, wantCode: CodeUntrustedClientCertHeader},
		{name: "fail/malformed-header", header: []string{"bm90IGEgY2VydA=="}, trust: true, bundle: rootAndInter, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/malformed-header-not-base64", header: []string{"%%%"}, trust: true, bundle: rootAndInter, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/two-headers", header: []string{headerOf(f.good[0]), headerOf(f.good[0])}, trust: true, bundle: rootAndInter, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/tampered", header: []string{func() string {
			raw := append([]byte(nil), f.good[0].Raw...)
			raw[len(raw)-10] ^= 0xff // inside the signature
			return base64.StdEncoding.EncodeToString(raw)
		}()}, trust: true, bundle: rootAndInter, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/expired", tlsChain: f.expired, bundle: rootOnly, wantStatus: 401, wantCode: errcode.CodeExpiredCredential},
		{name: "fail/not-yet-valid", tlsChain: f.notYet, bundle: rootOnly, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/wrong-ca", tlsChain: f.untrustedCA, bundle: rootOnly, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/self-signed-claims-trusted-intermediate", tlsChain: []*x509.Certificate{f.other.Certificate, f.inter.Certificate}, bundle: rootOnly, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/no-client-auth-eku", tlsChain: f.server, bundle: rootOnly, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/ca-cert-as-leaf", tlsChain: []*x509.Certificate{f.inter.Certificate}, bundle: rootOnly, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/header-leaf-intermediate-unknown", header: []string{headerOf(f.good[0])}, trust: true, bundle: rootOnly, wantStatus: 401, wantCode: errcode.CodeInvalidCredential},
		{name: "fail/trust-store-down", tlsChain: f.good, rootsErr: errors.New("vault down"), wantStatus: 503, wantCode: errcode.CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := NewX509(X509Config{
				Roots:                func(context.Context) ([]byte, error) { return tt.bundle, tt.rootsErr },
				TrustForwardedHeader: tt.trust,
				Now:                  func() time.Time { return x509Now },
			})
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			if tt.tlsChain != nil {
				r.TLS = &tls.ConnectionState{PeerCertificates: tt.tlsChain}
			}
			for _, h := range tt.header {
				r.Header.Add("X-ARR-ClientCert", h)
			}
			id, err := a.Authenticate(context.Background(), r)
			checkAuth(t, "x509", id, err, authWant{NoCred: tt.wantNoCred, ID: tt.wantID, Status: tt.wantStatus, Code: tt.wantCode})
		})
	}
}

func TestParseCABundle(t *testing.T) {
	f := x509Fixtures()
	if _, err := ParseCABundle(f.root.CertificatePEM()); err != nil {
		t.Fatal(err)
	}
	leafOnly := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.good[0].Raw})
	for name, raw := range map[string][]byte{"fail/empty": nil, "fail/leaf-only": leafOnly, "fail/garbage": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseCABundle(raw); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func FuzzParseClientCertHeader(f *testing.F) {
	fx := x509Fixtures()
	f.Add(headerOf(fx.good[0]))
	f.Add(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fx.good[0].Raw})))
	f.Add(url.QueryEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fx.good[0].Raw}))))
	f.Add("MIIB")
	f.Add("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----")
	f.Add("%2D%2D%2D%2D%2DBEGIN%zz")
	f.Add("")
	a := NewX509(X509Config{
		Roots:                func(context.Context) ([]byte, error) { return fx.root.CertificatePEM(), nil },
		TrustForwardedHeader: true,
		Now:                  func() time.Time { return x509Now },
	})
	bundle := append(fx.root.CertificatePEM(), fx.inter.CertificatePEM()...)
	b := NewX509(X509Config{
		Roots:                func(context.Context) ([]byte, error) { return bundle, nil },
		TrustForwardedHeader: true,
		Now:                  func() time.Time { return x509Now },
	})
	f.Fuzz(func(t *testing.T, header string) {
		c, err := ParseClientCertHeader(header)
		if err == nil && c == nil {
			t.Fatal("nil certificate without error")
		}
		for _, auth := range []*X509{a, b} {
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			r.Header["X-Arr-Clientcert"] = []string{header}
			id, err := auth.Authenticate(context.Background(), r)
			if err != nil {
				if errcode.As(err).Status != 401 {
					t.Fatalf("unexpected error %v", err)
				}
				continue
			}
			// Only the fixture's good certificate (or another the fixture CA issued) can pass.
			if c == nil || !strings.HasPrefix(id.Subject, "factory-") {
				t.Fatalf("accepted %q as %+v", header, id)
			}
		}
	})
}
