// Package dpsemutest starts the DPS emulator in-process for tests, with a throwaway PKI
// (root → intermediate → device certificates, and a server certificate for 127.0.0.1)
// made with crypto/x509 directly, so tests need no files and no other iotprov package.
package dpsemutest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/dpsemu"
)

// PKI is a two-level test CA: Root signs Intermediate, Intermediate signs devices.
type PKI struct {
	Root         *x509.Certificate
	Intermediate *x509.Certificate
	Roots        *x509.CertPool // just Root: the enrollment group's trust, and the client's trust in the server

	rootKey, interKey crypto.Signer
}

// NewPKI makes a fresh root and intermediate.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	p := &PKI{rootKey: newKey(t), interKey: newKey(t)}
	p.Root = sign(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "dpsemutest root"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil, p.rootKey.Public(), p.rootKey)
	p.Intermediate = sign(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "dpsemutest intermediate"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, p.Root, p.interKey.Public(), p.rootKey)
	p.Roots = x509.NewCertPool()
	p.Roots.AddCert(p.Root)
	return p
}

// Device returns a device chain (leaf, intermediate) and key with CN cn and the
// clientAuth EKU, as iotprov issues them.
func (p *PKI) Device(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	return p.DeviceWithEKU(t, cn, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

// DeviceWithEKU is Device with the given extended key usages.
func (p *PKI) DeviceWithEKU(t testing.TB, cn string, eku []x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key := newKey(t)
	leaf := sign(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: eku,
	}, p.Intermediate, key.Public(), p.interKey)
	return tls.Certificate{Certificate: [][]byte{leaf.Raw, p.Intermediate.Raw}, PrivateKey: key, Leaf: leaf}
}

// Server returns a server certificate for 127.0.0.1 and localhost, issued by Root.
func (p *PKI) Server(t testing.TB) tls.Certificate {
	t.Helper()
	key := newKey(t)
	leaf := sign(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, p.Intermediate, key.Public(), p.interKey)
	return tls.Certificate{Certificate: [][]byte{leaf.Raw, p.Intermediate.Raw}, PrivateKey: key, Leaf: leaf}
}

// Start runs an emulator trusting a fresh PKI (unless cfg.TrustedRoots is set) behind
// an httptest TLS server on 127.0.0.1, closed when the test ends. The endpoint for a
// dps.Config is srv.Listener.Addr().String(); its RootCAs are pki.Roots.
func Start(t testing.TB, cfg dpsemu.Config) (*dpsemu.Server, *httptest.Server, *PKI) {
	t.Helper()
	pki := NewPKI(t)
	if cfg.TrustedRoots == nil {
		cfg.TrustedRoots = pki.Roots
	}
	if cfg.IDScope == "" {
		cfg.IDScope = "0ne00000000"
	}
	emu := dpsemu.New(cfg)
	srv := httptest.NewUnstartedServer(emu.Handler())
	srv.TLS = emu.TLSConfig(pki.Server(t))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return emu, srv, pki
}

func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sign issues tmpl with parent (self-signed when parent is nil).
func sign(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	tmpl.NotBefore = time.Now().Add(-5 * time.Minute)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
