package ca

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/http"

	"github.com/iotprov/iotprov/internal/errcode"
)

// MaxCSRSize bounds a CSR as the device sends it (PEM or base64). Real requests are under
// 2 KiB even with an RSA-8192 key; the bound keeps parsing cheap.
const MaxCSRSize = 16 << 10

var (
	oidExtBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
)

// ParseCSR reads a device's PKCS#10 request: PEM ("CERTIFICATE REQUEST" or the older
// "NEW CERTIFICATE REQUEST"), or DER in base64 (standard or URL alphabet, padded or
// not). It verifies the self-signature (proof that the device holds the key), applies
// CheckKey, and refuses a request that asks to be a CA. Nothing else in the request is
// trusted: Issue sets the subject and extensions itself.
//
// Errors are 400 *errcode.Error with CodeInvalidCSR, or CheckKey's codes.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) > MaxCSRSize {
		return nil, invalidCSR(nil, fmt.Sprintf("The CSR is larger than %d bytes.", MaxCSRSize))
	}
	der, err := csrDER(bytes.TrimSpace(data))
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, invalidCSR(err, "The CSR is not a valid PKCS#10 request.")
	}
	// The key is checked before the signature so that a weak or exotic key gets the
	// precise error, and so no signature is verified with a key we would refuse anyway.
	if err := CheckKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, invalidCSR(err, "The CSR signature does not verify with its public key, or uses an insecure algorithm such as SHA-1.")
	}
	if err := checkRequestedExtensions(csr); err != nil {
		return nil, err
	}
	return csr, nil
}

func csrDER(data []byte) ([]byte, error) {
	if len(data) == 0 {
		return nil, invalidCSR(nil, "The CSR is empty.")
	}
	if bytes.HasPrefix(data, []byte("-----BEGIN")) {
		block, _ := pem.Decode(data)
		if block == nil {
			return nil, invalidCSR(nil, "The CSR PEM could not be decoded.")
		}
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, invalidCSR(nil, fmt.Sprintf("The PEM block is %q; want \"CERTIFICATE REQUEST\".", truncate(block.Type, 40)))
		}
		return block.Bytes, nil
	}
	// Base64 sent in JSON is often wrapped at 64 columns; drop the line breaks and any
	// padding so one decoder per alphabet covers padded and unpadded forms.
	compact := bytes.Map(func(r rune) rune {
		switch r {
		case '\n', '\r', ' ', '\t', '=':
			return -1
		}
		return r
	}, data)
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
		if der, err := enc.DecodeString(string(compact)); err == nil {
			return der, nil
		}
	}
	return nil, invalidCSR(nil, "The CSR is neither PEM nor base64-encoded DER.")
}

// checkRequestedExtensions refuses requests for CA powers. Issue never copies requested
// extensions, so this is not what keeps a device from becoming a CA; it tells a device
// that asked for one that it will not get it, instead of silently issuing something else.
func checkRequestedExtensions(csr *x509.CertificateRequest) error {
	for _, ext := range csr.Extensions {
		switch {
		case ext.Id.Equal(oidExtBasicConstraints):
			var bc struct {
				IsCA       bool `asn1:"optional"`
				MaxPathLen int  `asn1:"optional,default:-1"`
			}
			rest, err := asn1.Unmarshal(ext.Value, &bc)
			if err != nil || len(rest) != 0 {
				return invalidCSR(err, "The CSR's requested basicConstraints extension is malformed.")
			}
			if bc.IsCA {
				return invalidCSR(nil, "The CSR requests a CA certificate (basicConstraints CA:TRUE); only device certificates are issued.")
			}
		case ext.Id.Equal(oidExtKeyUsage):
			var ku asn1.BitString
			rest, err := asn1.Unmarshal(ext.Value, &ku)
			if err != nil || len(rest) != 0 {
				return invalidCSR(err, "The CSR's requested keyUsage extension is malformed.")
			}
			// Bits 5 and 6 of KeyUsage (RFC 5280 4.2.1.3).
			if ku.At(5) == 1 || ku.At(6) == 1 {
				return invalidCSR(nil, "The CSR requests keyCertSign or cRLSign key usage; only device certificates are issued.")
			}
		}
	}
	return nil
}

func invalidCSR(cause error, msg string) *errcode.Error {
	return errcode.Wrap(cause, http.StatusBadRequest, errcode.CodeInvalidCSR, msg)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
