package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/errcode"
)

func mustProfile(t testing.TB, cfg ProfileConfig) *Profile {
	t.Helper()
	p, err := NewProfile(cfg)
	if err != nil {
		t.Fatalf("NewProfile: %v", err)
	}
	return p
}

func TestNewProfile(t *testing.T) {
	tests := []struct {
		name         string
		cfg          ProfileConfig
		wantValidity time.Duration
		wantBackdate time.Duration
		wantErr      string
	}{
		{"ok/defaults", ProfileConfig{}, 365 * 24 * time.Hour, 5 * time.Minute, ""},
		{"ok/explicit", ProfileConfig{Validity: 90 * 24 * time.Hour, Backdate: time.Hour}, 90 * 24 * time.Hour, time.Hour, ""},
		{"ok/30-years", ProfileConfig{Validity: 30 * 365 * 24 * time.Hour}, 30 * 365 * 24 * time.Hour, 5 * time.Minute, ""},
		{"fail/negative-validity", ProfileConfig{Validity: -time.Hour}, 0, 0, "negative"},
		{"fail/negative-backdate", ProfileConfig{Backdate: -time.Minute}, 0, 0, "negative"},
		{"fail/absurd-validity", ProfileConfig{Validity: 31 * 365 * 24 * time.Hour}, 0, 0, "over 30 years"},
		{"fail/absurd-backdate", ProfileConfig{Backdate: 48 * time.Hour}, 0, 0, "over 24h"},
		{"fail/backdate-not-shorter", ProfileConfig{Validity: time.Hour, Backdate: time.Hour}, 0, 0, "not shorter"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewProfile(tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewProfile error = %v; want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.validity != tc.wantValidity || p.backdate != tc.wantBackdate {
				t.Fatalf("profile = %v/%v; want %v/%v", p.validity, p.backdate, tc.wantValidity, tc.wantBackdate)
			}
		})
	}
}

// checkDeviceCertificate asserts everything the profile promises about a device
// certificate, then verifies it the way IoT Hub would and lints it.
func checkDeviceCertificate(t *testing.T, issued *Issued, a, root *Authority, deviceID string, pub crypto.PublicKey, profile *Profile, now time.Time) {
	t.Helper()
	c := issued.Certificate

	// Chain: leaf first, then what lies between it and the root, never the root.
	chain := parseChain(t, issued.ChainPEM)
	wantChain := append([]*x509.Certificate{c}, a.chainAbove()...)
	if len(chain) != len(wantChain) {
		t.Fatalf("chain has %d certificates; want %d", len(chain), len(wantChain))
	}
	for i := range chain {
		if !chain[i].Equal(wantChain[i]) {
			t.Fatalf("chain[%d] = %q; want %q", i, chain[i].Subject, wantChain[i].Subject)
		}
		if isSelfSigned(chain[i]) {
			t.Fatalf("chain[%d] is a self-signed root", i)
		}
	}

	roots := x509.NewCertPool()
	roots.AddCert(root.Certificate)
	inters := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inters.AddCert(ic)
	}
	if _, err := c.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inters, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Fatalf("Verify: %v", err)
	}

	if !publicKeysEqual(pub, c.PublicKey) {
		t.Fatal("certificate public key does not match the request's")
	}
	if c.Subject.CommonName != deviceID {
		t.Fatalf("CN = %q; want %q", c.Subject.CommonName, deviceID)
	}
	if n := len(c.Subject.Names); n != 1 {
		t.Fatalf("subject has %d attributes (%v); want only CN", n, c.Subject)
	}
	if s := c.SerialNumber; s.Sign() <= 0 || s.BitLen() > 127 || s.BitLen() < 96 {
		t.Fatalf("serial %x: want positive with at most 127 bits (and almost surely over 96)", s)
	}
	wantNB := now.Add(-profile.backdate).Truncate(time.Second)
	if !c.NotBefore.Equal(wantNB) {
		t.Fatalf("NotBefore = %v; want %v", c.NotBefore, wantNB)
	}
	wantNA := now.Add(profile.validity).Truncate(time.Second)
	if wantNA.After(a.Certificate.NotAfter) {
		wantNA = a.Certificate.NotAfter
	}
	if !c.NotAfter.Equal(wantNA) {
		t.Fatalf("NotAfter = %v; want %v", c.NotAfter, wantNA)
	}
	// digitalSignature only, RSA included: see the KeyUsage comment in Issue.
	wantKU := x509.KeyUsageDigitalSignature
	if c.KeyUsage != wantKU {
		t.Fatalf("KeyUsage = %b; want %b", c.KeyUsage, wantKU)
	}
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || len(c.UnknownExtKeyUsage) != 0 {
		t.Fatalf("ExtKeyUsage = %v %v; want clientAuth only", c.ExtKeyUsage, c.UnknownExtKeyUsage)
	}
	if !c.BasicConstraintsValid || c.IsCA {
		t.Fatal("want BasicConstraints CA:false")
	}
	for _, ext := range c.Extensions {
		if ext.Id.Equal(oidExtBasicConstraints) && !ext.Critical {
			t.Fatal("basicConstraints is not critical")
		}
	}
	ski, err := subjectKeyID(pub)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.SubjectKeyId) != 20 || !bytes.Equal(c.SubjectKeyId, ski) {
		t.Fatalf("SubjectKeyId = %x; want %x", c.SubjectKeyId, ski)
	}
	if len(a.Certificate.SubjectKeyId) == 0 || !bytes.Equal(c.AuthorityKeyId, a.Certificate.SubjectKeyId) {
		t.Fatalf("AuthorityKeyId = %x; want CA SKI %x", c.AuthorityKeyId, a.Certificate.SubjectKeyId)
	}
	if len(c.DNSNames)+len(c.IPAddresses)+len(c.EmailAddresses)+len(c.URIs) != 0 {
		t.Fatal("device certificate carries SANs")
	}
	lintCertificate(t, c.Raw, notApplicableToPrivateClientCerts)
}

func TestIssueEachKeyAlgorithm(t *testing.T) {
	root, inter := rootAndIntermediate(t)
	profile := mustProfile(t, ProfileConfig{})
	for _, alg := range []KeyAlgorithm{ECDSAP256, ECDSAP384, RSA2048, RSA3072} {
		t.Run("ok/"+string(alg), func(t *testing.T) {
			key, err := GenerateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			issued, err := profile.Issue(inter, Request{DeviceID: "device-" + string(alg), PublicKey: key.Public()}, testNow)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			checkDeviceCertificate(t, issued, inter, root, "device-"+string(alg), key.Public(), profile, testNow)
			if issued.Certificate.SignatureAlgorithm != x509.ECDSAWithSHA256 {
				t.Fatalf("signature algorithm %v; want ECDSA-SHA256 from the P-256 CA", issued.Certificate.SignatureAlgorithm)
			}
		})
	}
}

func TestIssueSignatureFollowsCAKey(t *testing.T) {
	profile := mustProfile(t, ProfileConfig{})
	tests := []struct {
		caAlg KeyAlgorithm
		want  x509.SignatureAlgorithm
	}{
		{ECDSAP256, x509.ECDSAWithSHA256},
		{ECDSAP384, x509.ECDSAWithSHA384},
		{RSA2048, x509.SHA256WithRSA},
		{RSA3072, x509.SHA256WithRSA},
	}
	for _, tc := range tests {
		t.Run("ok/"+string(tc.caAlg), func(t *testing.T) {
			root := selfSignedCA(t, tc.caAlg, caTemplate("root "+string(tc.caAlg), testNow.Add(-time.Hour), testNow.Add(20*365*24*time.Hour)))
			lintLoosely(t, root.Certificate.Raw)
			key, err := GenerateKey(ECDSAP256)
			if err != nil {
				t.Fatal(err)
			}
			issued, err := profile.Issue(root, Request{DeviceID: "dev1", PublicKey: key.Public()}, testNow)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if got := issued.Certificate.SignatureAlgorithm; got != tc.want {
				t.Fatalf("signature algorithm = %v; want %v", got, tc.want)
			}
			// Signed straight by a root: the chain is the leaf alone.
			checkDeviceCertificate(t, issued, root, root, "dev1", key.Public(), profile, testNow)
		})
	}
}

func TestIssueClampsToCA(t *testing.T) {
	root, _ := rootAndIntermediate(t)
	shortCA, err := NewIntermediateCA(root, "short-lived CA", 30*24*time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	profile := mustProfile(t, ProfileConfig{})
	key, _ := GenerateKey(ECDSAP256)
	issued, err := profile.Issue(shortCA, Request{DeviceID: "dev", PublicKey: key.Public()}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if !issued.Certificate.NotAfter.Equal(shortCA.Certificate.NotAfter) {
		t.Fatalf("NotAfter = %v; want the CA's %v", issued.Certificate.NotAfter, shortCA.Certificate.NotAfter)
	}
	checkDeviceCertificate(t, issued, shortCA, root, "dev", key.Public(), profile, testNow)
}

func TestIssueSerialsDiffer(t *testing.T) {
	_, inter := rootAndIntermediate(t)
	profile := mustProfile(t, ProfileConfig{})
	key, _ := GenerateKey(ECDSAP256)
	seen := map[string]bool{}
	for range 50 {
		issued, err := profile.Issue(inter, Request{DeviceID: "dev", PublicKey: key.Public()}, testNow)
		if err != nil {
			t.Fatal(err)
		}
		s := issued.Certificate.SerialNumber.String()
		if seen[s] {
			t.Fatalf("serial %s issued twice", s)
		}
		seen[s] = true
	}
}

func TestIssueFailures(t *testing.T) {
	root, inter := rootAndIntermediate(t)
	profile := mustProfile(t, ProfileConfig{})
	good, _ := GenerateKey(ECDSAP256)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), randReader{})
	rsa1024 := mustRSAKey(t, 1024)
	tests := []struct {
		name       string
		a          *Authority
		req        Request
		now        time.Time
		wantCode   string // "" for a plain (internal) error
		wantSubstr string
	}{
		{"fail/empty-device-id", inter, Request{DeviceID: "", PublicKey: good.Public()}, testNow, errcode.CodeInvalidDeviceID, "empty"},
		{"fail/long-device-id", inter, Request{DeviceID: strings.Repeat("a", 65), PublicKey: good.Public()}, testNow, errcode.CodeInvalidDeviceID, "longer"},
		{"fail/control-char-device-id", inter, Request{DeviceID: "dev\n1", PublicKey: good.Public()}, testNow, errcode.CodeInvalidDeviceID, "printable"},
		{"fail/weak-rsa", inter, Request{DeviceID: "dev", PublicKey: rsa1024.Public()}, testNow, errcode.CodeWeakKey, "1024"},
		{"fail/p224", inter, Request{DeviceID: "dev", PublicKey: p224.Public()}, testNow, errcode.CodeUnsupportedKey, "P-224"},
		{"fail/no-key", inter, Request{DeviceID: "dev"}, testNow, errcode.CodeUnsupportedKey, "No public key"},
		{"fail/nil-authority", nil, Request{DeviceID: "dev", PublicKey: good.Public()}, testNow, "", "no certificate or key"},
		{"fail/authority-without-key", &Authority{Certificate: inter.Certificate}, Request{DeviceID: "dev", PublicKey: good.Public()}, testNow, "", "no certificate or key"},
		{"fail/ca-expired", inter, Request{DeviceID: "dev", PublicKey: good.Public()}, inter.Certificate.NotAfter.Add(time.Second), "", "not valid now"},
		{"fail/ca-not-yet-valid", inter, Request{DeviceID: "dev", PublicKey: good.Public()}, inter.Certificate.NotBefore.Add(-time.Second), "", "not valid now"},
		{"fail/signer-does-not-match-ca", &Authority{Certificate: inter.Certificate, Signer: root.Signer}, Request{DeviceID: "dev", PublicKey: good.Public()}, testNow, "", "doesn't match"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			issued, err := profile.Issue(tc.a, tc.req, tc.now)
			if err == nil {
				t.Fatalf("Issue succeeded: %v", issued.Certificate.Subject)
			}
			if issued != nil {
				t.Fatal("Issue returned a certificate with an error")
			}
			var e *errcode.Error
			isCoded := errors.As(err, &e)
			if tc.wantCode == "" {
				if isCoded {
					t.Fatalf("error %v is coded %q; want a plain internal error", err, e.Code)
				}
			} else {
				if !isCoded || e.Code != tc.wantCode || e.Status != http.StatusBadRequest {
					t.Fatalf("error = %#v; want 400 %s", err, tc.wantCode)
				}
			}
			if !strings.Contains(err.Error(), tc.wantSubstr) {
				t.Fatalf("error %q does not mention %q", err, tc.wantSubstr)
			}
		})
	}
}

func TestSubjectKeyIDIsRFC7093Method1(t *testing.T) {
	key, _ := GenerateKey(ECDSAP256)
	ecKey := key.Public().(*ecdsa.PublicKey)
	point, err := ecKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	// For EC keys the subjectPublicKey BIT STRING holds the uncompressed point.
	sum := sha256.Sum256(point)
	got, err := subjectKeyID(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sum[:20]) {
		t.Fatalf("SKI = %x; want %x", got, sum[:20])
	}
}
