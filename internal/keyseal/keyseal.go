// Package keyseal encrypts server-generated device private keys at rest with AES-256-GCM
// under a data key held in Key Vault. The operation ID and device ID are bound in as
// associated data, so a sealed key copied onto another operation or device row cannot be
// opened there.
package keyseal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
)

// KeySize is the size of an AES-256 data key in bytes.
const KeySize = 32

// version is the first byte of every sealed blob, so the format can change later
// without guessing what an old row holds.
const version byte = 1

// adLabel starts the associated data; it separates this use of the data key from any
// other use it might be put to in the future.
const adLabel = "iotprov/keyseal/v1"

// ErrOpen is returned for every failure to open a sealed blob. One error for all causes
// (tamper, wrong IDs, wrong key, truncation) because the caller can do nothing different
// with the detail and the detail is no business of anyone reading logs.
var ErrOpen = errors.New("keyseal: sealed key cannot be opened (corrupt, truncated, or sealed for another operation, device or key)")

// ParseKey decodes a data key secret: standard base64 of exactly 32 bytes, surrounding
// whitespace ignored (secrets stored in files often end in a newline). The error never
// repeats the secret.
func ParseKey(secret []byte) ([]byte, error) {
	s := bytes.TrimSpace(secret)
	if len(s) == 0 {
		return nil, errors.New("keyseal: data key is empty; want standard base64 of 32 random bytes")
	}
	key := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(key, s)
	if err != nil {
		return nil, errors.New("keyseal: data key is not valid standard base64; want base64 of 32 random bytes")
	}
	if n != KeySize {
		return nil, fmt.Errorf("keyseal: data key decodes to %d bytes; want exactly %d", n, KeySize)
	}
	return key[:n], nil
}

// Sealer seals and opens private keys under one data key. It is safe for concurrent use.
type Sealer struct {
	aead cipher.AEAD
}

// New returns a Sealer for a 32-byte AES-256 key.
func New(key []byte) (*Sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("keyseal: data key is %d bytes; want exactly %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("keyseal: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("keyseal: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plaintext with a fresh random 96-bit nonce. Random nonces are safe here:
// one data key seals far fewer than 2^32 messages before it is rotated. The output is
// version (1) || nonce || ciphertext+tag.
func (s *Sealer) Seal(plaintext []byte, operationID, deviceID string) ([]byte, error) {
	ns := s.aead.NonceSize()
	out := make([]byte, 1+ns, 1+ns+len(plaintext)+s.aead.Overhead())
	out[0] = version
	if _, err := rand.Read(out[1 : 1+ns]); err != nil {
		return nil, fmt.Errorf("keyseal: reading nonce: %w", err)
	}
	return s.aead.Seal(out, out[1:1+ns], plaintext, associatedData(operationID, deviceID)), nil
}

// Open decrypts a blob made by Seal for the same operation and device. Any change to the
// blob, or other IDs, fails with ErrOpen.
func (s *Sealer) Open(sealed []byte, operationID, deviceID string) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(sealed) < 1+ns+s.aead.Overhead() || sealed[0] != version {
		return nil, ErrOpen
	}
	pt, err := s.aead.Open(nil, sealed[1:1+ns], sealed[1+ns:], associatedData(operationID, deviceID))
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// associatedData encodes the label and both IDs, each with a 4-byte length prefix, so
// no two (operationID, deviceID) pairs share an encoding ("ab","c" vs "a","bc").
func associatedData(operationID, deviceID string) []byte {
	ad := make([]byte, 0, len(adLabel)+len(operationID)+len(deviceID)+12)
	for _, f := range []string{adLabel, operationID, deviceID} {
		ad = binary.BigEndian.AppendUint32(ad, uint32(len(f)))
		ad = append(ad, f...)
	}
	return ad
}
