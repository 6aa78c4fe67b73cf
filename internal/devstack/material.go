// Package devstack is the local stack of iotprov: it makes the dev key material under
// .local/ on first run and starts Azurite, the DPS emulator, mosquitto (the IoT Hub
// stand-in) and the handler in local-runner mode, each as a real process. `make run`
// (cmd/devstack) and the end-to-end tests both use it, so the stack a developer runs is
// the stack the tests run.
package devstack

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/ca"
)

// Material is where the dev key material lives below the stack's folder (.local/).
type Material struct{ Dir string }

// Secret names the handler reads (IOTPROV_*_SECRET defaults) and their files.
func (m Material) SecretsDir() string         { return filepath.Join(m.Dir, "secrets") }
func (m Material) SecretFile(n string) string { return filepath.Join(m.SecretsDir(), n) }

// DeviceRootFile is the root of the device CA: mosquitto and the DPS emulator trust it.
func (m Material) DeviceRootFile() string { return filepath.Join(m.Dir, "pki", "device-root.pem") }

// ServerRootFile is the root of the local servers' TLS certificates (the IoT Hub
// stand-in and the DPS emulator): devices get it as rootCaCertificate.
func (m Material) ServerRootFile() string { return filepath.Join(m.Dir, "pki", "server-root.pem") }

// ServerCert returns the chain and key files of a local server's TLS certificate.
func (m Material) ServerCert(name string) (chain, key string) {
	return filepath.Join(m.Dir, "pki", name+".pem"), filepath.Join(m.Dir, "pki", name+"-key.pem")
}

// Default secret names (config.Settings defaults).
const (
	SecretCA          = "iotprov-ca"
	SecretDataKey     = "iotprov-data-key"
	SecretSASGroupKey = "sas-group-key"
	SecretBeamPSK     = "beam-psk"
	SecretJWTKeys     = "jwt-keys"          // JWKS of the dev JWT signing key's public half
	SecretX509CA      = "x509-bootstrap-ca" // the dev manufacturer CA certificate
)

// The dev JWT issuer's names: local.settings.sample.json's IOTPROV_JWT_ISSUER and
// IOTPROV_JWT_AUDIENCE, and the kid of the dev signing key.
const (
	DevJWTIssuer   = "iotprov-dev"
	DevJWTAudience = "iotprov"
	DevJWTKeyID    = "iotprov-dev-1"
)

// DevBootstrapCN is the CN (so the identity) of the dev bootstrap client certificate.
const DevBootstrapCN = "bootstrap-device-1"

// JWTSigningKeyFile is the dev JWT issuer's private key (PKCS#8 PEM, ES256): what
// `iotprov jwt` signs dev tokens with.
func (m Material) JWTSigningKeyFile() string {
	return filepath.Join(m.Dir, "pki", "jwt-signing-key.pem")
}

// ManufacturerCAFile is the dev manufacturer CA (certificate and key): what `iotprov
// bootstrap-cert` issues factory certificates from.
func (m Material) ManufacturerCAFile() string {
	return filepath.Join(m.Dir, "pki", "manufacturer-ca.pem")
}

// BootstrapClientCert is a ready-made bootstrap client certificate (CN DevBootstrapCN).
func (m Material) BootstrapClientCert() (chain, key string) {
	return filepath.Join(m.Dir, "pki", "bootstrap-client.pem"), filepath.Join(m.Dir, "pki", "bootstrap-client-key.pem")
}

// Ensure creates whatever dev material is missing and leaves the rest alone, so a
// developer's devices stay valid across runs.
func (m Material) Ensure() error {
	if err := os.MkdirAll(m.SecretsDir(), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(m.Dir, "pki"), 0o700); err != nil {
		return err
	}
	now := time.Now()
	const tenYears = 10 * 365 * 24 * time.Hour

	// The device CA: a root (trust anchor for mosquitto and DPS) and the intermediate that
	// signs devices (the Key Vault secret in Azure).
	if !exists(m.SecretFile(SecretCA)) || !exists(m.DeviceRootFile()) {
		root, err := ca.NewRootCA("iotprov dev device root", tenYears, now)
		if err != nil {
			return err
		}
		issuing, err := ca.NewIntermediateCA(root, "iotprov dev device issuing CA", 5*365*24*time.Hour, now)
		if err != nil {
			return err
		}
		bundle, err := issuing.MarshalPEM()
		if err != nil {
			return err
		}
		if err := writeFile(m.DeviceRootFile(), root.CertificatePEM(), 0o644); err != nil {
			return err
		}
		if err := writeFile(m.SecretFile(SecretCA), append(bundle, root.CertificatePEM()...), 0o600); err != nil {
			return err
		}
	}

	// The local servers' root and their certificates.
	if !exists(m.ServerRootFile()) || !exists(filepath.Join(m.Dir, "pki", "server-root-key.pem")) {
		root, err := ca.NewRootCA("iotprov dev server root", tenYears, now)
		if err != nil {
			return err
		}
		bundle, err := root.MarshalPEM()
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(m.Dir, "pki", "server-root-key.pem"), bundle, 0o600); err != nil {
			return err
		}
		if err := writeFile(m.ServerRootFile(), root.CertificatePEM(), 0o644); err != nil {
			return err
		}
		for _, name := range []string{"mosquitto", "dpsemu", "api"} {
			chain, key := m.ServerCert(name)
			os.Remove(chain)
			os.Remove(key)
		}
	}
	// "api" is the handler's HTTPS listener (x509 bootstrap certificates on the local runner).
	for _, name := range []string{"mosquitto", "dpsemu", "api"} {
		chainFile, keyFile := m.ServerCert(name)
		if exists(chainFile) && exists(keyFile) {
			continue
		}
		bundle, err := os.ReadFile(filepath.Join(m.Dir, "pki", "server-root-key.pem"))
		if err != nil {
			return err
		}
		root, err := ca.ParseAuthority(bundle, now)
		if err != nil {
			return err
		}
		chain, key, err := ca.NewServerCertificate(root, "localhost", []string{"localhost"},
			[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, 2*365*24*time.Hour, now)
		if err != nil {
			return err
		}
		if err := writeFile(chainFile, chain, 0o644); err != nil {
			return err
		}
		if err := writeFile(keyFile, key, 0o600); err != nil {
			return err
		}
	}

	if err := m.ensureJWT(); err != nil {
		return err
	}
	if err := m.ensureManufacturer(now); err != nil {
		return err
	}

	// Symmetric secrets: the data key (32 bytes), the default SAS group key (64 bytes, as
	// DPS makes them), the Beam PSK (text).
	for name, make := range map[string]func() []byte{
		SecretDataKey:     func() []byte { return []byte(base64.StdEncoding.EncodeToString(random(32))) },
		SecretSASGroupKey: func() []byte { return []byte(base64.StdEncoding.EncodeToString(random(64))) },
		SecretBeamPSK:     func() []byte { return []byte(hex.EncodeToString(random(24))) },
	} {
		if exists(m.SecretFile(name)) {
			continue
		}
		if err := writeFile(m.SecretFile(name), append(make(), '\n'), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// ensureJWT makes the dev JWT issuer: an ES256 signing key and the JWKS the handler trusts.
func (m Material) ensureJWT() error {
	if exists(m.JWTSigningKeyFile()) && exists(m.SecretFile(SecretJWTKeys)) {
		return nil
	}
	key, err := ca.GenerateKey(ca.ECDSAP256)
	if err != nil {
		return err
	}
	keyPEM, err := ca.MarshalPrivateKeyPEM(key)
	if err != nil {
		return err
	}
	jwk, err := auth.PublicJWK(DevJWTKeyID, key.Public())
	if err != nil {
		return err
	}
	jwks, err := json.MarshalIndent(map[string]any{"keys": []any{jwk}}, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFile(m.JWTSigningKeyFile(), keyPEM, 0o600); err != nil {
		return err
	}
	return writeFile(m.SecretFile(SecretJWTKeys), append(jwks, '\n'), 0o600)
}

// ensureManufacturer makes the dev manufacturer CA (the x509 trust anchor) and one
// bootstrap client certificate from it.
func (m Material) ensureManufacturer(now time.Time) error {
	chainFile, keyFile := m.BootstrapClientCert()
	if exists(m.ManufacturerCAFile()) && exists(m.SecretFile(SecretX509CA)) && exists(chainFile) && exists(keyFile) {
		return nil
	}
	root, err := ca.NewRootCA("iotprov dev manufacturer CA", 10*365*24*time.Hour, now)
	if err != nil {
		return err
	}
	bundle, err := root.MarshalPEM()
	if err != nil {
		return err
	}
	chain, key, err := ca.NewClientCertificate(root, DevBootstrapCN, 5*365*24*time.Hour, now)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{m.ManufacturerCAFile(), bundle, 0o600},
		{m.SecretFile(SecretX509CA), root.CertificatePEM(), 0o600},
		{chainFile, chain, 0o644},
		{keyFile, key, 0o600},
	} {
		if err := writeFile(f.path, f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}

func random(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return b
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// writeFile writes atomically so an interrupted first run leaves no half-written key.
func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}
