package deviceclient

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/iotprov/iotprov/internal/ca"
)

// NewCSR makes a device's own ECDSA P-256 key and a PEM CSR for it. cn is only a
// placeholder as far as the service goes: it sets the subject (CN = device ID) itself.
func NewCSR(cn string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("making the CSR: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// VerifyChain parses a PEM certificate chain (device certificate first) and checks it:
// only CERTIFICATE blocks, at least one; when deviceID is not empty the device
// certificate's CN is it; when roots is not nil the device certificate verifies to them,
// through the rest of the chain, for client authentication. It returns the chain.
func VerifyChain(chainPEM, deviceID string, roots *x509.CertPool) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := []byte(chainPEM); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("the certificate chain holds a %q block", clean(b.Type, 40))
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, errors.New("the certificate does not parse")
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("the answer has no certificate")
	}
	leaf := certs[0]
	if deviceID != "" && leaf.Subject.CommonName != deviceID {
		return nil, fmt.Errorf("certificate CN %q, want %q", clean(leaf.Subject.CommonName, 80), deviceID)
	}
	if roots != nil {
		inter := x509.NewCertPool()
		for _, cert := range certs[1:] {
			inter.AddCert(cert)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			return nil, errors.New("the certificate does not chain to the device root")
		}
	}
	return certs, nil
}

// VerifyCredentials checks what an assigned device received before it uses any of it:
//   - the certificate chain parses, and when roots is not nil the device certificate
//     verifies to them for client authentication (a device that does not know its CA
//     passes nil: the IoT Hub checks the chain anyway);
//   - when deviceID is not empty, the answer's deviceId and the certificate's CN are it;
//   - rootCaCertificate holds at least one certificate;
//   - the certificate is for the key the device will use: the answer's PKCS#8 key, or
//     csrKey when the device sent a CSR — in which case the answer must carry no key.
func VerifyCredentials(r *Result, deviceID string, roots *x509.CertPool, csrKey crypto.Signer) error {
	if r == nil || r.Status != StatusAssigned || r.Credentials == nil {
		return errors.New("the answer is not an assignment")
	}
	c := r.Credentials
	if deviceID != "" && c.DeviceID != deviceID {
		return fmt.Errorf("deviceId %q, want %q", clean(c.DeviceID, 80), deviceID)
	}
	if c.Host == "" {
		return errors.New("the answer has no host")
	}
	if !x509.NewCertPool().AppendCertsFromPEM([]byte(c.RootCACertificate)) {
		return errors.New("the answer's rootCaCertificate holds no certificate")
	}
	certs, err := VerifyChain(c.Certificate, deviceID, roots)
	if err != nil {
		return err
	}
	leaf := certs[0]
	key := csrKey
	if key == nil {
		if c.PrivateKey == "" {
			return errors.New("the answer has no privateKey (was the key erased after its retention? register again)")
		}
		k, err := ca.ParsePrivateKeyPEM([]byte(c.PrivateKey))
		if err != nil {
			return errors.New("the privateKey in the answer does not parse")
		}
		key = k
	} else if c.PrivateKey != "" {
		return errors.New("the service returned a private key for a CSR registration; refusing to use it")
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		if csrKey != nil {
			return errors.New("the certificate is not for the key generated here")
		}
		return errors.New("the certificate and private key in the answer do not match")
	}
	return nil
}
