package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"
)

func TestParseAuthority(t *testing.T) {
	root, inter := rootAndIntermediate(t)
	interKeyPEM := pemKey(t, inter.Signer)

	// A three-level hierarchy (root → issuing-1 → issuing-2) for Intermediates ordering.
	deepRoot := selfSignedCA(t, ECDSAP256, caTemplate("deep root", testNow.Add(-time.Hour), testNow.Add(10*365*24*time.Hour)))
	mid, midKey := signedBy(t, deepRoot, caTemplate("deep mid", testNow.Add(-time.Hour), testNow.Add(5*365*24*time.Hour)))
	midCA := &Authority{Certificate: mid, Signer: midKey}
	issuing, issuingKey := signedBy(t, midCA, caTemplate("deep issuing", testNow.Add(-time.Hour), testNow.Add(2*365*24*time.Hour)))

	// SEC1 and PKCS#1 forms of keys.
	ecDER, err := x509.MarshalECPrivateKey(inter.Signer.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	sec1 := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})
	rsaCA := selfSignedCA(t, RSA2048, caTemplate("rsa root", testNow.Add(-time.Hour), testNow.Add(365*24*time.Hour)))
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaCA.Signer.(*rsa.PrivateKey))})

	// Certificates the parser must refuse.
	expired, expiredKey := signedBy(t, root, caTemplate("expired", testNow.Add(-48*time.Hour), testNow.Add(-24*time.Hour)))
	future, futureKey := signedBy(t, root, caTemplate("future", testNow.Add(24*time.Hour), testNow.Add(48*time.Hour)))
	leafTmpl := caTemplate("not a CA", testNow.Add(-time.Hour), testNow.Add(24*time.Hour))
	leafTmpl.IsCA, leafTmpl.KeyUsage, leafTmpl.MaxPathLen = false, x509.KeyUsageDigitalSignature, 0
	leaf, leafKey := signedBy(t, root, leafTmpl)
	noCertSignTmpl := caTemplate("no certSign", testNow.Add(-time.Hour), testNow.Add(24*time.Hour))
	noCertSignTmpl.KeyUsage = x509.KeyUsageCRLSign
	noCertSign, noCertSignKey := signedBy(t, root, noCertSignTmpl)

	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	tests := []struct {
		name      string
		bundle    []byte
		wantCert  *x509.Certificate
		wantInter []*x509.Certificate
		wantErr   string
	}{
		{"ok/intermediate-with-root", cat(pemCert(inter.Certificate), pemCert(root.Certificate), interKeyPEM), inter.Certificate, nil, ""},
		{"ok/intermediate-without-root", cat(pemCert(inter.Certificate), interKeyPEM), inter.Certificate, nil, ""},
		{"ok/key-first", cat(interKeyPEM, pemCert(inter.Certificate)), inter.Certificate, nil, ""},
		{"ok/sec1-key", cat(pemCert(inter.Certificate), sec1), inter.Certificate, nil, ""},
		{"ok/sec1-key-with-ec-parameters", cat(pemCert(inter.Certificate), []byte("-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"), sec1), inter.Certificate, nil, ""},
		{"ok/pkcs1-rsa-root", cat(pemCert(rsaCA.Certificate), pkcs1), rsaCA.Certificate, nil, ""},
		{"ok/root-signs-directly", cat(pemCert(root.Certificate), pemKey(t, root.Signer)), root.Certificate, nil, ""},
		{"ok/three-levels-with-root", cat(pemCert(issuing), pemCert(mid), pemCert(deepRoot.Certificate), pemKey(t, issuingKey)), issuing, []*x509.Certificate{mid}, ""},
		{"ok/three-levels-without-root", cat(pemCert(issuing), pemCert(mid), pemKey(t, issuingKey)), issuing, []*x509.Certificate{mid}, ""},

		{"fail/empty", nil, nil, nil, "no CERTIFICATE"},
		{"fail/garbage", []byte("not PEM at all"), nil, nil, "no CERTIFICATE"},
		{"fail/no-key", cat(pemCert(inter.Certificate), pemCert(root.Certificate)), nil, nil, "no private key"},
		{"fail/no-cert", interKeyPEM, nil, nil, "no CERTIFICATE"},
		{"fail/two-keys", cat(pemCert(inter.Certificate), interKeyPEM, interKeyPEM), nil, nil, "more than one private key"},
		{"fail/key-mismatch", cat(pemCert(inter.Certificate), pemKey(t, root.Signer)), nil, nil, "does not match the first certificate"},
		{"fail/root-first", cat(pemCert(root.Certificate), pemCert(inter.Certificate), interKeyPEM), nil, nil, "does not match the first certificate"},
		{"fail/expired", cat(pemCert(expired), pemKey(t, expiredKey)), nil, nil, "expired"},
		{"fail/not-yet-valid", cat(pemCert(future), pemKey(t, futureKey)), nil, nil, "not valid until"},
		{"fail/not-ca", cat(pemCert(leaf), pemKey(t, leafKey)), nil, nil, "not a CA"},
		{"fail/no-cert-sign", cat(pemCert(noCertSign), pemKey(t, noCertSignKey)), nil, nil, "keyCertSign"},
		{"fail/chain-out-of-order", cat(pemCert(issuing), pemCert(deepRoot.Certificate), pemCert(mid), pemKey(t, issuingKey)), nil, nil, "is not signed by certificate 2"},
		{"fail/bad-certificate", cat([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), interKeyPEM), nil, nil, "cannot be parsed"},
		{"fail/bad-key", cat(pemCert(inter.Certificate), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")), nil, nil, "private key cannot be parsed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := ParseAuthority(tc.bundle, testNow)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatal("ParseAuthority succeeded")
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %q does not contain %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "PRIVATE KEY-----") {
					t.Fatal("error repeats key PEM")
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAuthority: %v", err)
			}
			if !a.Certificate.Equal(tc.wantCert) {
				t.Fatalf("Certificate = %q; want %q", a.Certificate.Subject, tc.wantCert.Subject)
			}
			if len(a.Intermediates) != len(tc.wantInter) {
				t.Fatalf("Intermediates has %d; want %d", len(a.Intermediates), len(tc.wantInter))
			}
			for i := range tc.wantInter {
				if !a.Intermediates[i].Equal(tc.wantInter[i]) {
					t.Fatalf("Intermediates[%d] = %q; want %q", i, a.Intermediates[i].Subject, tc.wantInter[i].Subject)
				}
			}
			if !publicKeysEqual(a.Signer.Public(), a.Certificate.PublicKey) {
				t.Fatal("Signer does not match Certificate")
			}
		})
	}

	// A deep authority issues certificates whose chain carries the middle CA.
	t.Run("ok/three-levels-issue", func(t *testing.T) {
		a, err := ParseAuthority(cat(pemCert(issuing), pemCert(mid), pemCert(deepRoot.Certificate), pemKey(t, issuingKey)), testNow)
		if err != nil {
			t.Fatal(err)
		}
		profile := mustProfile(t, ProfileConfig{})
		key, _ := GenerateKey(ECDSAP256)
		issued, err := profile.Issue(a, Request{DeviceID: "deep", PublicKey: key.Public()}, testNow)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(parseChain(t, issued.ChainPEM)); n != 3 {
			t.Fatalf("chain has %d certificates; want leaf, issuing, mid", n)
		}
		checkDeviceCertificate(t, issued, a, deepRoot, "deep", key.Public(), profile, testNow)
	})
}

func TestAuthorityMarshalPEMRoundTrip(t *testing.T) {
	root, inter := rootAndIntermediate(t)
	tests := []struct {
		name string
		a    *Authority
	}{
		{"ok/root", root},
		{"ok/intermediate", inter},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.a.MarshalPEM()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, []byte("-----BEGIN PRIVATE KEY-----")) {
				t.Fatal("bundle does not hold a PKCS#8 key")
			}
			got, err := ParseAuthority(b, testNow)
			if err != nil {
				t.Fatalf("ParseAuthority(MarshalPEM()): %v", err)
			}
			if !got.Certificate.Equal(tc.a.Certificate) || len(got.Intermediates) != len(tc.a.Intermediates) {
				t.Fatal("round trip changed the authority")
			}
			if !publicKeysEqual(got.Signer.Public(), tc.a.Signer.Public()) {
				t.Fatal("round trip changed the key")
			}
			if got := tc.a.CertificatePEM(); !bytes.HasPrefix(b, got) || bytes.Count(got, []byte("BEGIN")) != 1 {
				t.Fatal("CertificatePEM is not the bundle's first block")
			}
		})
	}
	if _, err := (&Authority{}).MarshalPEM(); err == nil {
		t.Fatal("MarshalPEM of an empty authority succeeded")
	}
}
