package provision

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"testing"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/ca/catest"
	"github.com/iotprov/iotprov/internal/store"
)

// chainOf parses every certificate of a PEM chain.
func chainOf(t *testing.T, chainPEM string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := []byte(chainPEM); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// checkDeviceChain asserts DESIGN.md §2's certificate field: the device certificate, then
// the intermediates up to but not including root, verifying to root for clientAuth; and
// that the device certificate passes zlint.
func checkDeviceChain(t *testing.T, chainPEM string, root *ca.Authority, deviceID string) *x509.Certificate {
	t.Helper()
	chain := chainOf(t, chainPEM)
	if len(chain) != 2 {
		t.Fatalf("chain has %d certificates, want the device certificate and the issuing CA", len(chain))
	}
	for _, c := range chain[1:] {
		if bytes.Equal(c.RawIssuer, c.RawSubject) {
			t.Fatalf("chain carries the self-signed root %q", c.Subject)
		}
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root.Certificate)
	inters.AddCert(chain[1])
	// Verified as of issuance (NotBefore is backdated by the profile): tests move the
	// worker's clock, not the system's.
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters,
		CurrentTime: chain[0].NotBefore.Add(ca.DefaultBackdate),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("device chain does not verify: %v", err)
	}
	if chain[0].Subject.CommonName != deviceID || len(chain[0].Subject.Names) != 1 {
		t.Fatalf("subject %v, want CN=%s only", chain[0].Subject, deviceID)
	}
	catest.LintDeviceCertificate(t, chain[0].Raw)
	return chain[0]
}

// TestWorkerIssuesEveryKeyAlgorithm: for each configured algorithm the worker generates
// the key, seals it as PKCS#8 PEM, issues a linted certificate for it and registers
// with DPS using exactly that certificate.
func TestWorkerIssuesEveryKeyAlgorithm(t *testing.T) {
	tests := []struct {
		alg  ca.KeyAlgorithm
		want func(crypto.PublicKey) bool
	}{
		{ca.ECDSAP256, func(k crypto.PublicKey) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P256() }},
		{ca.ECDSAP384, func(k crypto.PublicKey) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P384() }},
		{ca.RSA2048, func(k crypto.PublicKey) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 2048 }},
		{ca.RSA3072, func(k crypto.PublicKey) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 3072 }},
	}
	for _, tc := range tests {
		t.Run("ok/"+string(tc.alg), func(t *testing.T) {
			op := queued("k-" + string(tc.alg))
			f := newFixture(t, op)
			f.worker.KeyAlgorithm = tc.alg
			if err := f.worker.Provision(context.Background(), msgFor(op), 1); err != nil {
				t.Fatal(err)
			}
			got := f.ops.get(t, op.DeviceID, op.ID)
			if got.Status != store.StatusAssigned || got.KeyAlgorithm != string(tc.alg) {
				t.Fatalf("status %s, key algorithm %q", got.Status, got.KeyAlgorithm)
			}
			keyPEM, err := f.sealer.Open(context.Background(), got.SealedKey, got.ID, got.DeviceID)
			if err != nil {
				t.Fatal(err)
			}
			if block, _ := pem.Decode(keyPEM); block == nil || block.Type != "PRIVATE KEY" {
				t.Fatal("the key the device gets is not PKCS#8 PEM")
			}
			if _, err := tls.X509KeyPair([]byte(got.CertificatePEM), keyPEM); err != nil {
				t.Fatalf("key and certificate do not match: %v", err)
			}
			leaf := checkDeviceChain(t, got.CertificatePEM, f.root, op.DeviceID)
			if !tc.want(leaf.PublicKey) {
				t.Fatalf("certificate key is %T, want %s", leaf.PublicKey, tc.alg)
			}
			if len(f.dps.calls) != 1 || !f.dps.calls[0].Equal(leaf) {
				t.Fatal("DPS was not registered with the device's own certificate")
			}
		})
	}
}

// TestWorkerIssuesForCSR: the CSR path for every key type the policy accepts, from the
// CSR as register stores it (ca.ParseCSR's Raw). The certificate is for the device's
// key, with the subject the service sets; no key is stored; DPS gets a separate
// short-lived certificate for the same device ID, linted like any device certificate.
func TestWorkerIssuesForCSR(t *testing.T) {
	for _, alg := range []ca.KeyAlgorithm{ca.ECDSAP256, ca.ECDSAP384, ca.RSA2048, ca.RSA3072} {
		t.Run("ok/csr-"+string(alg), func(t *testing.T) {
			key, err := ca.GenerateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
				Subject:  pkix.Name{CommonName: "someone-else", Organization: []string{"Not Copied"}},
				DNSNames: []string{"evil.example"},
			}, key)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := ca.ParseCSR(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
			if err != nil {
				t.Fatal(err)
			}
			op := queued("c-" + string(alg))
			op.CSR = csr.Raw
			f := newFixture(t, op)
			if err := f.worker.Provision(context.Background(), msgFor(op), 1); err != nil {
				t.Fatal(err)
			}
			got := f.ops.get(t, op.DeviceID, op.ID)
			if got.Status != store.StatusAssigned || got.SealedKey != nil || got.KeyAlgorithm != "" {
				t.Fatalf("status %s, sealed key %v, key algorithm %q", got.Status, got.SealedKey != nil, got.KeyAlgorithm)
			}
			leaf := checkDeviceChain(t, got.CertificatePEM, f.root, op.DeviceID)
			if !publicKeyEqual(leaf.PublicKey, key.Public()) {
				t.Fatal("certificate is not for the CSR's key")
			}
			if len(leaf.DNSNames) != 0 || len(leaf.Subject.Organization) != 0 {
				t.Fatal("requested subject or SANs were copied")
			}
			if len(f.dps.calls) != 1 {
				t.Fatalf("%d DPS calls", len(f.dps.calls))
			}
			reg := f.dps.calls[0]
			if reg.Subject.CommonName != op.DeviceID || publicKeyEqual(reg.PublicKey, key.Public()) {
				t.Fatal("DPS registration certificate should be the service's own, for the same device ID")
			}
			catest.LintDeviceCertificate(t, reg.Raw)
		})
	}
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
