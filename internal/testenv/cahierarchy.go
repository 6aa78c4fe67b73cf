package testenv

import (
	"crypto"
	"crypto/x509"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
)

// CAHierarchy is a test CA as the local stack has it: a root, the issuing CA below it
// that signs devices, a pool trusting the root, and a one-hour device profile.
type CAHierarchy struct {
	Root, Issuing *ca.Authority
	Roots         *x509.CertPool
	Profile       *ca.Profile
}

// NewCAHierarchy makes a fresh CAHierarchy valid from now for a day.
func NewCAHierarchy(t testing.TB) *CAHierarchy {
	t.Helper()
	now := time.Now()
	root, err := ca.NewRootCA("test root", 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	issuing, err := ca.NewIntermediateCA(root, "test issuing", 12*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	profile, err := ca.NewProfile(ca.ProfileConfig{Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root.Certificate)
	return &CAHierarchy{Root: root, Issuing: issuing, Roots: roots, Profile: profile}
}

// NewDeviceKey makes a server-style device key: a P-256 key and its PKCS#8 PEM.
func NewDeviceKey(t testing.TB) (crypto.Signer, string) {
	t.Helper()
	k, err := ca.GenerateKey(ca.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.MarshalPrivateKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, string(p)
}
