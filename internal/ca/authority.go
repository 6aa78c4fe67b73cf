package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// Authority is a signing CA: its certificate, the intermediates above it (not the
// self-signed root), and its key.
type Authority struct {
	Certificate   *x509.Certificate
	Intermediates []*x509.Certificate // between Certificate and the root, excluding any self-signed root
	Signer        crypto.Signer
}

// ParseAuthority reads the CA bundle an operator stores in Key Vault: PEM certificates,
// the signing CA first and then its issuers in order (a self-signed root may be included
// and is dropped), and exactly one private key (PKCS#8, SEC1 or PKCS#1). It refuses a
// bundle with no certificate or no key, a key that does not match the first certificate,
// a first certificate that is not a CA allowed to sign certificates, or one that is not
// valid at now. Errors are sentences for the operator who stored the bundle.
func ParseAuthority(bundle []byte, now time.Time) (*Authority, error) {
	var (
		certs  []*x509.Certificate
		signer crypto.Signer
		rest   = bundle
	)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch block.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("CA bundle: certificate %d cannot be parsed: %w", len(certs)+1, err)
			}
			certs = append(certs, c)
		case pemPKCS8, pemSEC1, pemPKCS1:
			if signer != nil {
				return nil, errors.New("CA bundle: holds more than one private key; keep only the signing CA's key")
			}
			k, err := parsePrivateKeyBlock(block)
			if err != nil {
				// The parse error names a format problem, never key bytes.
				return nil, fmt.Errorf("CA bundle: private key cannot be parsed: %w", err)
			}
			signer = k
		}
		// Other blocks (openssl's "EC PARAMETERS", "TRUSTED CERTIFICATE", …) carry
		// nothing we need.
	}
	if len(certs) == 0 {
		return nil, errors.New("CA bundle: no CERTIFICATE PEM block found")
	}
	if signer == nil {
		return nil, errors.New("CA bundle: no private key PEM block found (want PKCS#8 \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\")")
	}
	ca := certs[0]
	if !publicKeysEqual(signer.Public(), ca.PublicKey) {
		return nil, fmt.Errorf("CA bundle: the private key does not match the first certificate (%q); put the signing CA's certificate first", ca.Subject.String())
	}
	if !ca.BasicConstraintsValid || !ca.IsCA {
		return nil, fmt.Errorf("CA bundle: the first certificate (%q) is not a CA (basicConstraints CA:TRUE missing)", ca.Subject.String())
	}
	if ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("CA bundle: the first certificate (%q) lacks the keyCertSign key usage", ca.Subject.String())
	}
	if now.Before(ca.NotBefore) {
		return nil, fmt.Errorf("CA bundle: the CA certificate (%q) is not valid until %s", ca.Subject.String(), ca.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(ca.NotAfter) {
		return nil, fmt.Errorf("CA bundle: the CA certificate (%q) expired at %s", ca.Subject.String(), ca.NotAfter.UTC().Format(time.RFC3339))
	}
	if err := CheckKey(ca.PublicKey); err != nil {
		return nil, fmt.Errorf("CA bundle: the CA key is not acceptable: %w", err)
	}
	// Certificates must form a chain in order, so what Issue hands devices verifies.
	for i := 0; i+1 < len(certs); i++ {
		if err := certs[i].CheckSignatureFrom(certs[i+1]); err != nil {
			return nil, fmt.Errorf("CA bundle: certificate %d (%q) is not signed by certificate %d (%q); list the signing CA first, then each issuer in order: %w",
				i+1, certs[i].Subject.String(), i+2, certs[i+1].Subject.String(), err)
		}
	}
	a := &Authority{Certificate: ca, Signer: signer}
	for _, c := range certs[1:] {
		if !isSelfSigned(c) {
			a.Intermediates = append(a.Intermediates, c)
		}
	}
	return a, nil
}

// MarshalPEM returns the authority as a bundle ParseAuthority reads back: certificate,
// intermediates, then the PKCS#8 key.
func (a *Authority) MarshalPEM() ([]byte, error) {
	if a == nil || a.Certificate == nil || a.Signer == nil {
		return nil, errors.New("authority has no certificate or key")
	}
	keyPEM, err := MarshalPrivateKeyPEM(a.Signer)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.Write(a.CertificatePEM())
	for _, c := range a.Intermediates {
		b.Write(certPEM(c))
	}
	b.Write(keyPEM)
	return b.Bytes(), nil
}

// CertificatePEM returns just the authority's certificate as PEM, e.g. a root to hand
// out as a trust anchor.
func (a *Authority) CertificatePEM() []byte {
	return certPEM(a.Certificate)
}

// chainAbove returns the certificates a leaf signed by a must be sent with: a's own
// certificate unless it is a self-signed root, then its intermediates.
func (a *Authority) chainAbove() []*x509.Certificate {
	var chain []*x509.Certificate
	if !isSelfSigned(a.Certificate) {
		chain = append(chain, a.Certificate)
	}
	for _, c := range a.Intermediates {
		if !isSelfSigned(c) {
			chain = append(chain, c)
		}
	}
	return chain
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// isSelfSigned reports whether c is a root: it names itself as issuer and, when it says
// which key signed it, that key is its own. Relying parties already hold roots, so
// chains never carry them. The self-signature itself is not checked: crypto/x509 refuses
// SHA-1, with which many long-lived roots are self-signed, and a root's self-signature
// carries no trust anyway.
func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) &&
		(len(c.AuthorityKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, c.SubjectKeyId))
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
