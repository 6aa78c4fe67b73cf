// Package ca is the only code in iotprov that signs. It holds the key policy (which public
// keys a device certificate may carry), CSR parsing, the signing authority read from a
// PEM bundle, and the device certificate profile. It takes the CA key as a plain
// crypto.Signer and knows nothing of Azure: the caller fetches the bundle from Key Vault.
//
// The shape follows boulder: a profile is a config struct turned into a checked value
// (NewProfile), and key checks live apart from issuance (CheckKey, after goodkey).
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"

	"github.com/iotprov/iotprov/internal/errcode"
)

// KeyAlgorithm names a key type the service can generate for a device.
type KeyAlgorithm string

// The key algorithms the service generates. ECDSA P-256 is the default: small, fast, and
// accepted by Azure IoT Hub.
const (
	ECDSAP256 KeyAlgorithm = "ecdsa-p256"
	ECDSAP384 KeyAlgorithm = "ecdsa-p384"
	RSA2048   KeyAlgorithm = "rsa-2048"
	RSA3072   KeyAlgorithm = "rsa-3072"
)

// ParseKeyAlgorithm reads a configured key algorithm; the empty string means ECDSAP256.
func ParseKeyAlgorithm(s string) (KeyAlgorithm, error) {
	switch a := KeyAlgorithm(strings.ToLower(strings.TrimSpace(s))); a {
	case "":
		return ECDSAP256, nil
	case ECDSAP256, ECDSAP384, RSA2048, RSA3072:
		return a, nil
	}
	return "", fmt.Errorf("unknown key algorithm %q: want one of %s, %s, %s, %s",
		s, ECDSAP256, ECDSAP384, RSA2048, RSA3072)
}

// GenerateKey makes a fresh private key of the given algorithm.
func GenerateKey(alg KeyAlgorithm) (crypto.Signer, error) {
	switch alg {
	case ECDSAP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	}
	return nil, fmt.Errorf("unknown key algorithm %q", alg)
}

// PEM block types for private keys.
const (
	pemPKCS8 = "PRIVATE KEY"
	pemSEC1  = "EC PRIVATE KEY"
	pemPKCS1 = "RSA PRIVATE KEY"
)

// MarshalPrivateKeyPEM encodes key as a PKCS#8 "PRIVATE KEY" PEM block, the form devices
// and mosquitto read. Only in-memory keys (ECDSA, RSA, Ed25519) can be marshalled; a key
// held in an HSM cannot.
func MarshalPrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key as PKCS#8: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPKCS8, Bytes: der}), nil
}

// ParsePrivateKeyPEM reads the first private key block in pemBytes: PKCS#8, or the
// legacy SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY") forms that openssl
// still writes. Other blocks (e.g. openssl's "EC PARAMETERS") are skipped.
func ParsePrivateKeyPEM(pemBytes []byte) (crypto.Signer, error) {
	rest := pemBytes
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no private key PEM block found")
		}
		switch block.Type {
		case pemPKCS8, pemSEC1, pemPKCS1:
			return parsePrivateKeyBlock(block)
		}
	}
}

func parsePrivateKeyBlock(block *pem.Block) (crypto.Signer, error) {
	switch block.Type {
	case pemPKCS8:
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing PKCS#8 private key: %w", err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("PKCS#8 private key of type %T cannot sign", k)
		}
		return s, nil
	case pemSEC1:
		k, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing SEC1 EC private key: %w", err)
		}
		return k, nil
	case pemPKCS1:
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing PKCS#1 RSA private key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
}

// RSA modulus bounds. 2048 is the floor every current policy agrees on; 8192 bounds the
// cost of verifying a signature made with a key a device chose.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// smallPrimesProduct is the product of the odd primes below 1000. A modulus sharing a
// factor with it is trivially factorable; boulder's goodkey runs the same check.
var smallPrimesProduct = func() *big.Int {
	p := big.NewInt(1)
	for n := int64(3); n < 1000; n += 2 {
		if big.NewInt(n).ProbablyPrime(0) {
			p.Mul(p, big.NewInt(n))
		}
	}
	return p
}()

// CheckKey is the key policy: ECDSA on P-256 or P-384, or RSA of 2048 to 8192 bits with
// an odd public exponent of at least 65537 (NIST SP 800-89, CA/B Forum BR 6.1.6). Any
// other key is refused with a 400 *errcode.Error: CodeWeakKey for a key of a supported
// type that is too weak, CodeUnsupportedKey for a type or curve the service does not
// issue for (Ed25519 is refused because neither IoT Hub nor DPS accepts it).
func CheckKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return checkECDSA(k)
	case *rsa.PublicKey:
		return checkRSA(k)
	case nil:
		return unsupportedKey("No public key was given.")
	}
	return unsupportedKey(fmt.Sprintf("Key type %s is not supported; use ECDSA P-256 or P-384, or RSA of at least %d bits.", keyTypeName(pub), minRSABits))
}

func checkECDSA(k *ecdsa.PublicKey) error {
	if k == nil || k.Curve == nil {
		return unsupportedKey("The ECDSA key has no curve.")
	}
	if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
		return unsupportedKey(fmt.Sprintf("ECDSA curve %s is not supported; use P-256 or P-384.", curveName(k.Curve)))
	}
	name := k.Curve.Params().Name
	// ECDH validates that the point is on the curve and is not the point at infinity;
	// keys from crypto/x509 already are, but a caller may build one by hand.
	if k.X == nil || k.Y == nil {
		return weakKey("The ECDSA public key has no point.")
	}
	if _, err := k.ECDH(); err != nil {
		return weakKey("The ECDSA public key is not a valid point on " + name + ".")
	}
	return nil
}

func checkRSA(k *rsa.PublicKey) error {
	if k == nil || k.N == nil {
		return weakKey("The RSA public key has no modulus.")
	}
	bits := k.N.BitLen()
	if bits < minRSABits {
		return weakKey(fmt.Sprintf("The RSA key is %d bits; at least %d are required.", bits, minRSABits))
	}
	if bits > maxRSABits {
		return unsupportedKey(fmt.Sprintf("The RSA key is %d bits; at most %d are supported.", bits, maxRSABits))
	}
	if k.E < 65537 || k.E%2 == 0 {
		return weakKey(fmt.Sprintf("The RSA public exponent %d is not allowed; use an odd exponent of at least 65537.", k.E))
	}
	if k.N.Bit(0) == 0 {
		return weakKey("The RSA modulus is even.")
	}
	if new(big.Int).GCD(nil, nil, k.N, smallPrimesProduct).Cmp(big.NewInt(1)) != 0 {
		return weakKey("The RSA modulus has a small prime factor.")
	}
	return nil
}

func weakKey(msg string) *errcode.Error {
	return errcode.New(http.StatusBadRequest, errcode.CodeWeakKey, msg)
}

func unsupportedKey(msg string) *errcode.Error {
	return errcode.New(http.StatusBadRequest, errcode.CodeUnsupportedKey, msg)
}

func curveName(c elliptic.Curve) string {
	if p := c.Params(); p != nil && p.Name != "" {
		return p.Name
	}
	return "(unnamed)"
}

// keyTypeName names a public key type for a device-facing message without %T's package
// paths.
func keyTypeName(pub crypto.PublicKey) string {
	t := fmt.Sprintf("%T", pub)
	switch {
	case strings.Contains(t, "ed25519"):
		return "Ed25519"
	case strings.Contains(t, "ecdh"):
		return "ECDH"
	case strings.Contains(t, "dsa"):
		return "DSA"
	}
	return "unknown"
}
