package deviceclient

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/testenv"
)

// testCA is a root and the issuing CA below it, as on the local stack.
type testCA struct {
	root, issuing *ca.Authority
	roots         *x509.CertPool
	profile       *ca.Profile
}

func newTestCA(t testing.TB) *testCA {
	h := testenv.NewCAHierarchy(t)
	return &testCA{root: h.Root, issuing: h.Issuing, roots: h.Roots, profile: h.Profile}
}

// answer is the assigned answer for id's certificate on pub; keyPEM empty for a CSR.
func (c *testCA) answer(t testing.TB, id string, pub crypto.PublicKey, keyPEM string) Answer {
	t.Helper()
	issued, err := c.profile.Issue(c.issuing, ca.Request{DeviceID: id, PublicKey: pub}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return Answer{OperationID: opID, Status: StatusAssigned, DeviceID: id, Host: "localhost",
		Certificate: string(issued.ChainPEM), PrivateKey: keyPEM, RootCACertificate: string(c.root.CertificatePEM())}
}

func result(a Answer) *Result {
	return &Result{OperationID: a.OperationID, Status: a.Status, Credentials: &Credentials{DeviceID: a.DeviceID, Host: a.Host,
		Certificate: a.Certificate, PrivateKey: a.PrivateKey, RootCACertificate: a.RootCACertificate}}
}

func TestVerifyCredentials(t *testing.T) {
	c := newTestCA(t)
	other := newTestCA(t)
	key, keyPEM := testenv.NewDeviceKey(t)
	otherKey, otherKeyPEM := testenv.NewDeviceKey(t)
	with := func(a Answer, change func(*Answer)) Answer { change(&a); return a }
	good := c.answer(t, "dev-1", key.Public(), keyPEM)
	tests := []struct {
		name     string
		result   *Result
		deviceID string
		roots    *x509.CertPool
		csrKey   crypto.Signer
		wantErr  string // "" for ok
	}{
		{"ok/server-generated-key", result(good), "dev-1", c.roots, nil, ""},
		{"ok/csr", result(c.answer(t, "dev-1", key.Public(), "")), "dev-1", c.roots, key, ""},
		{"ok/device-that-knows-neither-id-nor-ca", result(good), "", nil, nil, ""},
		{"ok/without-roots-another-ca-is-not-checked", result(other.answer(t, "dev-1", key.Public(), keyPEM)), "dev-1", nil, nil, ""},
		{"fail/not-assigned", &Result{OperationID: opID, Status: StatusAssigning}, "dev-1", c.roots, nil, "not an assignment"},
		{"fail/other-device", result(c.answer(t, "dev-2", key.Public(), keyPEM)), "dev-1", c.roots, nil, `deviceId "dev-2"`},
		{"fail/cn-is-another-device", result(with(c.answer(t, "dev-2", key.Public(), keyPEM), func(a *Answer) { a.DeviceID = "dev-1" })), "dev-1", c.roots, nil, `certificate CN "dev-2"`},
		{"fail/other-root", result(other.answer(t, "dev-1", key.Public(), keyPEM)), "dev-1", c.roots, nil, "does not chain"},
		{"fail/key-does-not-match", result(c.answer(t, "dev-1", key.Public(), otherKeyPEM)), "dev-1", c.roots, nil, "do not match"},
		{"fail/csr-key-does-not-match", result(c.answer(t, "dev-1", otherKey.Public(), "")), "dev-1", c.roots, key, "not for the key generated here"},
		{"fail/private-key-sent-for-a-csr", result(good), "dev-1", c.roots, key, "returned a private key"},
		{"fail/no-private-key", result(c.answer(t, "dev-1", key.Public(), "")), "dev-1", c.roots, nil, "no privateKey"},
		{"fail/private-key-does-not-parse", result(with(good, func(a *Answer) { a.PrivateKey = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" })), "dev-1", c.roots, nil, "does not parse"},
		{"fail/no-host", result(with(good, func(a *Answer) { a.Host = "" })), "dev-1", c.roots, nil, "no host"},
		{"fail/no-roots", result(with(good, func(a *Answer) { a.RootCACertificate = "" })), "dev-1", c.roots, nil, "rootCaCertificate"},
		{"fail/no-certificate", result(with(good, func(a *Answer) { a.Certificate = "" })), "dev-1", c.roots, nil, "no certificate"},
		{"fail/key-in-the-chain", result(with(good, func(a *Answer) { a.Certificate += keyPEM })), "dev-1", c.roots, nil, `"PRIVATE KEY" block`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyCredentials(tc.result, tc.deviceID, tc.roots, tc.csrKey)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("VerifyCredentials = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestNewCSR(t *testing.T) {
	key, csrPEM, err := NewCSR("dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if key.Curve != elliptic.P256() {
		t.Errorf("curve %s, want P-256", key.Curve.Params().Name)
	}
	// The service's own parser accepts it, and it is for the key returned.
	csr, err := ca.ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) || csr.Subject.CommonName != "dev-1" {
		t.Errorf("CSR for %T, CN %q", csr.PublicKey, csr.Subject.CommonName)
	}
	if b, _ := pem.Decode(csrPEM); b == nil || b.Type != "CERTIFICATE REQUEST" {
		t.Errorf("not a PEM CSR: %q", csrPEM)
	}
}
