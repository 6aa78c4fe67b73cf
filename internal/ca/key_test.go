package ca

import (
	"crypto"
	"crypto/dsa" //nolint:staticcheck // only to show DSA keys are refused
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"testing"

	"github.com/iotprov/iotprov/internal/errcode"
)

func TestParseKeyAlgorithm(t *testing.T) {
	tests := []struct {
		in      string
		want    KeyAlgorithm
		wantErr bool
	}{
		{"", ECDSAP256, false},
		{"ecdsa-p256", ECDSAP256, false},
		{"ecdsa-p384", ECDSAP384, false},
		{"rsa-2048", RSA2048, false},
		{"rsa-3072", RSA3072, false},
		{" RSA-3072 ", RSA3072, false},
		{"rsa-1024", "", true},
		{"ed25519", "", true},
		{"p256", "", true},
	}
	for _, tc := range tests {
		name := "ok/" + tc.in
		if tc.wantErr {
			name = "fail/" + tc.in
		}
		t.Run(name, func(t *testing.T) {
			got, err := ParseKeyAlgorithm(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ParseKeyAlgorithm(%q) = %q, %v; want %q, err %v", tc.in, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestGenerateKeyAndPEM(t *testing.T) {
	tests := []struct {
		alg  KeyAlgorithm
		want func(crypto.PublicKey) bool
	}{
		{ECDSAP256, func(p crypto.PublicKey) bool { k, ok := p.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P256() }},
		{ECDSAP384, func(p crypto.PublicKey) bool { k, ok := p.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P384() }},
		{RSA2048, func(p crypto.PublicKey) bool { k, ok := p.(*rsa.PublicKey); return ok && k.N.BitLen() == 2048 }},
		{RSA3072, func(p crypto.PublicKey) bool { k, ok := p.(*rsa.PublicKey); return ok && k.N.BitLen() == 3072 }},
	}
	for _, tc := range tests {
		t.Run("ok/"+string(tc.alg), func(t *testing.T) {
			key, err := GenerateKey(tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(key.Public()) {
				t.Fatalf("GenerateKey(%s) made %T", tc.alg, key.Public())
			}
			if err := CheckKey(key.Public()); err != nil {
				t.Fatalf("CheckKey refuses a generated key: %v", err)
			}
			b, err := MarshalPrivateKeyPEM(key)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b), "-----BEGIN PRIVATE KEY-----\n") {
				t.Fatalf("not a PKCS#8 PEM block: %.30q", b)
			}
			back, err := ParsePrivateKeyPEM(b)
			if err != nil {
				t.Fatal(err)
			}
			if !publicKeysEqual(back.Public(), key.Public()) {
				t.Fatal("PEM round trip changed the key")
			}
		})
	}
	if _, err := GenerateKey("dsa-1024"); err == nil {
		t.Fatal("GenerateKey accepted an unknown algorithm")
	}
}

func TestParsePrivateKeyPEM(t *testing.T) {
	ec, _ := GenerateKey(ECDSAP256)
	ecDER, _ := x509.MarshalECPrivateKey(ec.(*ecdsa.PrivateKey))
	rk := mustRSAKey(t, 2048)
	tests := []struct {
		name    string
		pem     string
		want    crypto.PublicKey
		wantErr string
	}{
		{"ok/sec1", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})), ec.Public(), ""},
		{"ok/sec1-after-ec-parameters", "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n" +
			string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})), ec.Public(), ""},
		{"ok/pkcs1", string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)})), rk.Public(), ""},
		{"fail/empty", "", nil, "no private key"},
		{"fail/certificate-only", string(pemCert(testRootCert(t))), nil, "no private key"},
		{"fail/bad-pkcs8", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", nil, "PKCS#8"},
		{"fail/bad-sec1", "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n", nil, "SEC1"},
		{"fail/bad-pkcs1", "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", nil, "PKCS#1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParsePrivateKeyPEM([]byte(tc.pem))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v; want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !publicKeysEqual(k.Public(), tc.want) {
				t.Fatal("parsed key differs")
			}
		})
	}
}

func testRootCert(t testing.TB) *x509.Certificate {
	t.Helper()
	root, _ := rootAndIntermediate(t)
	return root.Certificate
}

func TestCheckKey(t *testing.T) {
	p256, _ := GenerateKey(ECDSAP256)
	p384, _ := GenerateKey(ECDSAP384)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	rsa2048 := mustRSAKey(t, 2048)
	rsa3072, _ := GenerateKey(RSA3072)
	rsa1024 := mustRSAKey(t, 1024)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	x25519, _ := ecdh.X25519().GenerateKey(rand.Reader)

	withE := func(e int) *rsa.PublicKey { return &rsa.PublicKey{N: rsa2048.N, E: e} }
	// A 2048-bit odd modulus with the factor 3.
	smallFactor := new(big.Int).Mul(big.NewInt(3), new(big.Int).Lsh(big.NewInt(1), 2046))
	smallFactor.Add(smallFactor, big.NewInt(3))
	even := new(big.Int).Lsh(big.NewInt(1), 2047)
	huge := new(big.Int).Lsh(big.NewInt(1), 8192) // 8193 bits
	huge.Add(huge, big.NewInt(1))
	offCurve := &ecdsa.PublicKey{Curve: elliptic.P256(), X: big.NewInt(1), Y: big.NewInt(1)}

	tests := []struct {
		name     string
		pub      crypto.PublicKey
		wantCode string
	}{
		{"ok/ecdsa-p256", p256.Public(), ""},
		{"ok/ecdsa-p384", p384.Public(), ""},
		{"ok/rsa-2048", rsa2048.Public(), ""},
		{"ok/rsa-3072", rsa3072.Public(), ""},
		{"fail/rsa-1024", rsa1024.Public(), errcode.CodeWeakKey},
		{"fail/rsa-exponent-3", withE(3), errcode.CodeWeakKey},
		{"fail/rsa-exponent-even", withE(65538), errcode.CodeWeakKey},
		{"fail/rsa-exponent-1", withE(1), errcode.CodeWeakKey},
		{"fail/rsa-even-modulus", &rsa.PublicKey{N: even, E: 65537}, errcode.CodeWeakKey},
		{"fail/rsa-small-factor", &rsa.PublicKey{N: smallFactor, E: 65537}, errcode.CodeWeakKey},
		{"fail/rsa-too-large", &rsa.PublicKey{N: huge, E: 65537}, errcode.CodeUnsupportedKey},
		{"fail/rsa-no-modulus", &rsa.PublicKey{E: 65537}, errcode.CodeWeakKey},
		{"fail/ecdsa-p224", p224.Public(), errcode.CodeUnsupportedKey},
		{"fail/ecdsa-p521", p521.Public(), errcode.CodeUnsupportedKey},
		{"fail/ecdsa-off-curve", offCurve, errcode.CodeWeakKey},
		{"fail/ecdsa-no-point", &ecdsa.PublicKey{Curve: elliptic.P256()}, errcode.CodeWeakKey},
		{"fail/ecdsa-no-curve", &ecdsa.PublicKey{}, errcode.CodeUnsupportedKey},
		{"fail/ed25519", edPub, errcode.CodeUnsupportedKey},
		{"fail/x25519", x25519.PublicKey(), errcode.CodeUnsupportedKey},
		{"fail/dsa", &dsa.PublicKey{}, errcode.CodeUnsupportedKey},
		{"fail/nil", nil, errcode.CodeUnsupportedKey},
		{"fail/ecdsa-by-value", *(p256.Public().(*ecdsa.PublicKey)), errcode.CodeUnsupportedKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckKey(tc.pub)
			if tc.wantCode == "" {
				if err != nil {
					t.Fatalf("CheckKey: %v", err)
				}
				return
			}
			var e *errcode.Error
			if !errors.As(err, &e) {
				t.Fatalf("CheckKey = %v; want *errcode.Error %s", err, tc.wantCode)
			}
			if e.Code != tc.wantCode || e.Status != http.StatusBadRequest || e.Message == "" {
				t.Fatalf("CheckKey = %d %s %q; want 400 %s", e.Status, e.Code, e.Message, tc.wantCode)
			}
		})
	}
}
