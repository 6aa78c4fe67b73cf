package ca

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"time"
)

// The helpers below make CA hierarchies and auxiliary certificates for the dev-material
// generator, the CLI and tests. They are not the device hot path (that is Issue), and
// their keys are always fresh ECDSA P-256.

// Helper defaults: a zero validity means these.
const (
	defaultRootValidity         = 20 * 365 * 24 * time.Hour
	defaultIntermediateValidity = 10 * 365 * 24 * time.Hour
	defaultLeafValidity         = 365 * 24 * time.Hour
	// verificationValidity: the operator uploads the proof right after making it.
	verificationValidity = 24 * time.Hour
	caKeyUsage           = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
)

func helperValidity(v, def time.Duration) (time.Duration, error) {
	switch {
	case v == 0:
		return def, nil
	case v < 0:
		return 0, fmt.Errorf("validity %s is negative", v)
	case v > maxValidity:
		return 0, fmt.Errorf("validity %s is over 30 years", v)
	}
	return v, nil
}

// NewRootCA makes a self-signed root CA with a fresh ECDSA P-256 key and pathlen 1 (room
// for one intermediate). A zero validity means 20 years.
func NewRootCA(commonName string, validity time.Duration, now time.Time) (*Authority, error) {
	return newCA("root CA", nil, commonName, validity, defaultRootValidity, 1, now)
}

// NewIntermediateCA makes an intermediate CA signed by parent, with a fresh ECDSA P-256
// key and pathlen 0 (it may sign only end-entity certificates). Its Intermediates are
// parent's Intermediates plus parent's certificate when parent is not a self-signed root.
// A zero validity means 10 years; it never outlives parent.
func NewIntermediateCA(parent *Authority, commonName string, validity time.Duration, now time.Time) (*Authority, error) {
	if parent == nil {
		return nil, errors.New("intermediate CA: no parent authority")
	}
	return newCA("intermediate CA", parent, commonName, validity, defaultIntermediateValidity, 0, now)
}

// newCA makes a CA certificate with a fresh P-256 key: self-signed when parent is nil,
// else signed by parent. what names it in errors.
func newCA(what string, parent *Authority, commonName string, validity, defaultValidity time.Duration, maxPathLen int, now time.Time) (*Authority, error) {
	if commonName == "" {
		return nil, fmt.Errorf("%s: common name is empty", what)
	}
	validity, err := helperValidity(validity, defaultValidity)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	key, err := GenerateKey(ECDSAP256)
	if err != nil {
		return nil, fmt.Errorf("%s: generating key: %w", what, err)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-DefaultBackdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              caKeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}
	if parent == nil {
		cert, err := signWith(nil, key, tmpl, key.Public())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return &Authority{Certificate: cert, Signer: key}, nil
	}
	cert, err := sign(parent, tmpl, key.Public(), now)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return &Authority{Certificate: cert, Intermediates: parent.chainAbove(), Signer: key}, nil
}

// NewServerCertificate issues a TLS server certificate (serverAuth, SANs from dnsNames
// and ips) with a fresh P-256 key, e.g. for the DPS emulator or mosquitto. It returns the
// chain PEM (leaf, then the issuer's certificate and intermediates, never a self-signed
// root) and the PKCS#8 key PEM. A zero validity means one year.
func NewServerCertificate(issuer *Authority, commonName string, dnsNames []string, ips []net.IP, validity time.Duration, now time.Time) (chainPEM, keyPEM []byte, err error) {
	if len(dnsNames) == 0 && len(ips) == 0 {
		return nil, nil, errors.New("server certificate: no DNS names or IP addresses")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		DNSNames:    dnsNames,
		IPAddresses: ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	cert, keyPEM, err := newLeaf("server certificate", issuer, tmpl, validity, now)
	if err != nil {
		return nil, nil, err
	}
	return encodeChain(cert, issuer), keyPEM, nil
}

// NewClientCertificate issues a TLS client certificate (clientAuth, subject CN only) with
// a fresh P-256 key, for bootstrap and test clients. Returns chain PEM and key PEM as
// NewServerCertificate does.
func NewClientCertificate(issuer *Authority, commonName string, validity time.Duration, now time.Time) (chainPEM, keyPEM []byte, err error) {
	if commonName == "" {
		return nil, nil, errors.New("client certificate: common name is empty")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	cert, keyPEM, err := newLeaf("client certificate", issuer, tmpl, validity, now)
	if err != nil {
		return nil, nil, err
	}
	return encodeChain(cert, issuer), keyPEM, nil
}

// NewVerificationCertificate makes the DPS / IoT Hub proof-of-possession certificate:
// subject CN = the verification code the portal shows, signed by issuer, valid for a
// day. Uploading it proves the operator holds the CA key. Returns the certificate PEM;
// its own key is thrown away because nothing ever uses it.
func NewVerificationCertificate(issuer *Authority, code string, now time.Time) ([]byte, error) {
	if code == "" {
		return nil, errors.New("verification certificate: verification code is empty")
	}
	if len(code) > maxDeviceIDLen {
		return nil, fmt.Errorf("verification certificate: verification code is longer than %d characters", maxDeviceIDLen)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: code},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	cert, _, err := newLeaf("verification certificate", issuer, tmpl, verificationValidity, now)
	if err != nil {
		return nil, err
	}
	// Only the leaf: DPS wants exactly the one certificate.
	return certPEM(cert), nil
}

func newLeaf(what string, issuer *Authority, tmpl *x509.Certificate, validity time.Duration, now time.Time) (cert *x509.Certificate, keyPEM []byte, err error) {
	validity, err = helperValidity(validity, defaultLeafValidity)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	key, err := GenerateKey(ECDSAP256)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: generating key: %w", what, err)
	}
	tmpl.NotBefore = now.Add(-DefaultBackdate)
	tmpl.NotAfter = now.Add(validity)
	tmpl.BasicConstraintsValid = true
	cert, err = sign(issuer, tmpl, key.Public(), now)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	keyPEM, err = MarshalPrivateKeyPEM(key)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	return cert, keyPEM, nil
}
