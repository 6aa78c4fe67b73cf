package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// testNow is a fixed clock so validity assertions are exact.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// rootAndIntermediate is the usual hierarchy: a self-signed root and an intermediate
// that signs devices.
func rootAndIntermediate(t testing.TB) (root, inter *Authority) {
	t.Helper()
	root, err := NewRootCA("iotprov test root", 10*365*24*time.Hour, testNow)
	if err != nil {
		t.Fatalf("NewRootCA: %v", err)
	}
	inter, err = NewIntermediateCA(root, "iotprov test devices", 5*365*24*time.Hour, testNow)
	if err != nil {
		t.Fatalf("NewIntermediateCA: %v", err)
	}
	return root, inter
}

// caTemplate returns a CA certificate template; tests adjust it for odd cases.
func caTemplate(cn string, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            -1,
	}
}

// selfSignedCA makes a root with a key of alg, for testing that the signature algorithm
// follows the CA key.
func selfSignedCA(t testing.TB, alg KeyAlgorithm, tmpl *x509.Certificate) *Authority {
	t.Helper()
	key, err := GenerateKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := signWith(nil, key, tmpl, key.Public())
	if err != nil {
		t.Fatalf("self-signing %s CA: %v", alg, err)
	}
	return &Authority{Certificate: cert, Signer: key}
}

// signedBy makes a certificate from tmpl for a fresh P-256 key, signed by parent without
// any clamping, so tests can build certificates the helpers refuse to make.
func signedBy(t testing.TB, parent *Authority, tmpl *x509.Certificate) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	parentCert, parentKey := tmpl, crypto.Signer(key)
	if parent != nil {
		parentCert, parentKey = parent.Certificate, parent.Signer
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func mustRSAKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func pemKey(t testing.TB, k crypto.Signer) []byte {
	t.Helper()
	b, err := MarshalPrivateKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// parseChain reads every certificate in a PEM chain.
func parseChain(t testing.TB, chain []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, chain = pem.Decode(chain)
		if b == nil {
			return out
		}
		if b.Type != "CERTIFICATE" {
			t.Fatalf("chain holds a %q block", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// randReader is crypto/rand for APIs that take an io.Reader, spelt as a type so table
// literals stay short.
type randReader struct{}

func (randReader) Read(p []byte) (int, error) { return rand.Read(p) }
