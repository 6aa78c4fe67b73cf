package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/iotprov/iotprov/internal/errcode"
)

// makeCSR returns the DER of a CSR signed by key, with any requested extensions.
func makeCSR(t testing.TB, key crypto.Signer, sigAlg x509.SignatureAlgorithm, exts ...pkix.Extension) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: "what the device asked for", Organization: []string{"ignored"}},
		DNSNames:           []string{"ignored.example"},
		SignatureAlgorithm: sigAlg,
		ExtraExtensions:    exts,
	}, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return der
}

func csrPEM(der []byte, typ string) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func mustExt(t testing.TB, oid asn1.ObjectIdentifier, v any) pkix.Extension {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oid, Critical: true, Value: b}
}

// keyUsageBits encodes KeyUsage bits (bit 0 = digitalSignature) as a DER BIT STRING.
func keyUsageBits(bits ...int) asn1.BitString {
	bs := asn1.BitString{Bytes: make([]byte, 1), BitLength: 8}
	for _, b := range bits {
		bs.Bytes[0] |= 0x80 >> b
	}
	return bs
}

type basicConstraints struct {
	IsCA       bool `asn1:"optional"`
	MaxPathLen int  `asn1:"optional,default:-1"`
}

func TestParseCSR(t *testing.T) {
	p256, _ := GenerateKey(ECDSAP256)
	p384, _ := GenerateKey(ECDSAP384)
	rsa2048, _ := GenerateKey(RSA2048)
	rsa1024 := mustRSAKey(t, 1024)
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)

	good := makeCSR(t, p256, 0)
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 0x01 // last byte of the ECDSA signature's s

	wrapped := base64.StdEncoding.EncodeToString(good)
	var lines []string
	for len(wrapped) > 64 {
		lines, wrapped = append(lines, wrapped[:64]), wrapped[64:]
	}
	wrapped = strings.Join(append(lines, wrapped), "\n")

	tests := []struct {
		name     string
		data     []byte
		wantKey  crypto.PublicKey
		wantCode string
	}{
		{"ok/pem", csrPEM(good, "CERTIFICATE REQUEST"), p256.Public(), ""},
		{"ok/pem-new-certificate-request", csrPEM(good, "NEW CERTIFICATE REQUEST"), p256.Public(), ""},
		{"ok/pem-surrounding-whitespace", append(append([]byte("\n  "), csrPEM(good, "CERTIFICATE REQUEST")...), "\n\n"...), p256.Public(), ""},
		{"ok/base64-std", []byte(base64.StdEncoding.EncodeToString(good)), p256.Public(), ""},
		{"ok/base64-std-raw", []byte(base64.RawStdEncoding.EncodeToString(good)), p256.Public(), ""},
		{"ok/base64-url", []byte(base64.URLEncoding.EncodeToString(good)), p256.Public(), ""},
		{"ok/base64-url-raw", []byte(base64.RawURLEncoding.EncodeToString(good)), p256.Public(), ""},
		{"ok/base64-wrapped-lines", []byte(wrapped), p256.Public(), ""},
		{"ok/p384", csrPEM(makeCSR(t, p384, 0), "CERTIFICATE REQUEST"), p384.Public(), ""},
		{"ok/rsa-2048", csrPEM(makeCSR(t, rsa2048, 0), "CERTIFICATE REQUEST"), rsa2048.Public(), ""},
		{"ok/rsa-pss-signature", csrPEM(makeCSR(t, rsa2048, x509.SHA256WithRSAPSS), "CERTIFICATE REQUEST"), rsa2048.Public(), ""},
		{"ok/requests-leaf-extensions", csrPEM(makeCSR(t, p256, 0,
			mustExt(t, oidExtBasicConstraints, basicConstraints{IsCA: false, MaxPathLen: -1}),
			mustExt(t, oidExtKeyUsage, keyUsageBits(0))), "CERTIFICATE REQUEST"), p256.Public(), ""},

		{"fail/bad-signature", csrPEM(badSig, "CERTIFICATE REQUEST"), nil, errcode.CodeInvalidCSR},
		{"fail/rsa-1024", csrPEM(makeCSR(t, rsa1024, 0), "CERTIFICATE REQUEST"), nil, errcode.CodeWeakKey},
		{"fail/p224", csrPEM(makeCSR(t, p224, x509.ECDSAWithSHA256), "CERTIFICATE REQUEST"), nil, errcode.CodeUnsupportedKey},
		{"fail/p521", csrPEM(makeCSR(t, p521, 0), "CERTIFICATE REQUEST"), nil, errcode.CodeUnsupportedKey},
		{"fail/ed25519", csrPEM(makeCSR(t, edKey, 0), "CERTIFICATE REQUEST"), nil, errcode.CodeUnsupportedKey},
		{"fail/requests-ca", csrPEM(makeCSR(t, p256, 0,
			mustExt(t, oidExtBasicConstraints, basicConstraints{IsCA: true, MaxPathLen: 0})), "CERTIFICATE REQUEST"), nil, errcode.CodeInvalidCSR},
		{"fail/requests-cert-sign", csrPEM(makeCSR(t, p256, 0,
			mustExt(t, oidExtKeyUsage, keyUsageBits(0, 5))), "CERTIFICATE REQUEST"), nil, errcode.CodeInvalidCSR},
		{"fail/requests-crl-sign", csrPEM(makeCSR(t, p256, 0,
			mustExt(t, oidExtKeyUsage, keyUsageBits(6))), "CERTIFICATE REQUEST"), nil, errcode.CodeInvalidCSR},
		{"fail/malformed-basic-constraints", csrPEM(makeCSR(t, p256, 0,
			pkix.Extension{Id: oidExtBasicConstraints, Value: []byte{0x04, 0x00}}), "CERTIFICATE REQUEST"), nil, errcode.CodeInvalidCSR},
		{"fail/garbage", []byte("this is not a CSR!"), nil, errcode.CodeInvalidCSR},
		{"fail/base64-garbage", []byte(base64.StdEncoding.EncodeToString([]byte("not DER"))), nil, errcode.CodeInvalidCSR},
		{"fail/empty", nil, nil, errcode.CodeInvalidCSR},
		{"fail/whitespace", []byte(" \n "), nil, errcode.CodeInvalidCSR},
		{"fail/too-large", append(csrPEM(good, "CERTIFICATE REQUEST"), bytes.Repeat([]byte(" "), MaxCSRSize)...), nil, errcode.CodeInvalidCSR},
		{"fail/pem-wrong-type", csrPEM(good, "CERTIFICATE"), nil, errcode.CodeInvalidCSR},
		{"fail/pem-truncated", csrPEM(good, "CERTIFICATE REQUEST")[:60], nil, errcode.CodeInvalidCSR},
		{"fail/der-trailing-data", []byte(base64.StdEncoding.EncodeToString(append(bytes.Clone(good), 0))), nil, errcode.CodeInvalidCSR},
		{"fail/certificate-not-csr", []byte(base64.StdEncoding.EncodeToString(testRootDER(t))), nil, errcode.CodeInvalidCSR},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			csr, err := ParseCSR(tc.data)
			if tc.wantCode != "" {
				if csr != nil {
					t.Fatal("ParseCSR returned a CSR with an error")
				}
				var e *errcode.Error
				if !errors.As(err, &e) {
					t.Fatalf("error = %v; want *errcode.Error %s", err, tc.wantCode)
				}
				if e.Code != tc.wantCode || e.Status != http.StatusBadRequest || e.Message == "" {
					t.Fatalf("error = %d %s %q; want 400 %s", e.Status, e.Code, e.Message, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCSR: %v", err)
			}
			if !publicKeysEqual(tc.wantKey, csr.PublicKey) {
				t.Fatal("CSR public key differs from the signing key")
			}
		})
	}
}

func testRootDER(t testing.TB) []byte {
	t.Helper()
	root, _ := rootAndIntermediate(t)
	return root.Certificate.Raw
}

// TestIssueFromCSR is the device-generated-key path: the CSR's key gets a certificate,
// and nothing else from the CSR (subject, SANs) does.
func TestIssueFromCSR(t *testing.T) {
	root, inter := rootAndIntermediate(t)
	profile := mustProfile(t, ProfileConfig{})
	for _, alg := range []KeyAlgorithm{ECDSAP256, ECDSAP384, RSA2048, RSA3072} {
		t.Run("ok/"+string(alg), func(t *testing.T) {
			key, _ := GenerateKey(alg)
			csr, err := ParseCSR(csrPEM(makeCSR(t, key, 0), "CERTIFICATE REQUEST"))
			if err != nil {
				t.Fatal(err)
			}
			issued, err := profile.Issue(inter, Request{DeviceID: "csr-device", PublicKey: csr.PublicKey}, testNow)
			if err != nil {
				t.Fatal(err)
			}
			checkDeviceCertificate(t, issued, inter, root, "csr-device", key.Public(), profile, testNow)
		})
	}
}

func FuzzParseCSR(f *testing.F) {
	key, err := GenerateKey(ECDSAP256)
	if err != nil {
		f.Fatal(err)
	}
	der := makeCSR(f, key, 0)
	f.Add(csrPEM(der, "CERTIFICATE REQUEST"))
	f.Add([]byte(base64.StdEncoding.EncodeToString(der)))
	f.Add([]byte(base64.RawURLEncoding.EncodeToString(der)))
	f.Add(der)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte("garbage"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := ParseCSR(data)
		if err != nil {
			if csr != nil {
				t.Fatal("CSR returned with an error")
			}
			if e := errcode.As(err); e.Status != http.StatusBadRequest {
				t.Fatalf("error %v is not a 400 *errcode.Error", err)
			}
			return
		}
		// Whatever is accepted is within policy and self-signed.
		if err := CheckKey(csr.PublicKey); err != nil {
			t.Fatalf("accepted CSR with refused key: %v", err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted CSR with bad signature: %v", err)
		}
		if len(data) > MaxCSRSize {
			t.Fatalf("accepted %d bytes", len(data))
		}
	})
}
