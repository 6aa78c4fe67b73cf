package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
)

// The files ca init writes into its folder. The names say what each is for, so an
// operator can tell the offline root key from what goes to Key Vault.
const (
	rootCertFile         = "root-ca.pem"         // trust anchor: upload to DPS / IoT Hub and verify it
	rootKeyFile          = "root-ca.key"         // keep offline; signs only intermediates and verification certificates
	intermediateCertFile = "intermediate-ca.pem" // the CA that signs devices
	signingBundleFile    = "signing-ca.pem"      // intermediate, root and the intermediate's key: the Key Vault secret
)

const day = 24 * time.Hour

func caInit(e *env, args []string) error {
	fs := newFlagSet(e, "ca init", "[--dir ca] [--root-cn NAME] [--intermediate-cn NAME] [--force]", `
Create a root CA and an intermediate CA signed by it (both ECDSA P-256), as files in
--dir. The intermediate is what signs device certificates: its bundle goes to Key
Vault with 'iotprov ca upload'. The root is the trust anchor you upload to DPS and
prove with 'iotprov ca verification-cert'; keep root-ca.key offline.

Files written:
  root-ca.pem          root certificate (public)
  root-ca.key          root private key, PKCS#8 (mode 0600)
  intermediate-ca.pem  intermediate certificate (public)
  signing-ca.pem       intermediate certificate, root certificate, intermediate key (0600)`)
	dir := fs.String("dir", "ca", "folder to write the CA files into (created if missing)")
	rootCN := fs.String("root-cn", "iotprov root CA", "common name of the root CA")
	interCN := fs.String("intermediate-cn", "iotprov device issuing CA", "common name of the intermediate (signing) CA")
	rootValidity := fs.Duration("root-validity", 20*365*day, "root CA lifetime (at most 30 years)")
	interValidity := fs.Duration("intermediate-validity", 10*365*day, "intermediate CA lifetime (never past the root's)")
	force := fs.Bool("force", false, "overwrite existing CA files (the old keys are lost)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	names := []string{rootCertFile, rootKeyFile, intermediateCertFile, signingBundleFile}
	if !*force {
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(*dir, n)); err == nil {
				return fmt.Errorf("%s already exists; refusing to replace a CA (use --force, or another --dir)", filepath.Join(*dir, n))
			}
		}
	}
	now := e.now()
	root, err := ca.NewRootCA(*rootCN, *rootValidity, now)
	if err != nil {
		return err
	}
	inter, err := ca.NewIntermediateCA(root, *interCN, *interValidity, now)
	if err != nil {
		return err
	}
	rootKey, err := ca.MarshalPrivateKeyPEM(root.Signer)
	if err != nil {
		return err
	}
	interKey, err := ca.MarshalPrivateKeyPEM(inter.Signer)
	if err != nil {
		return err
	}
	// The root rides along in the bundle so the service (ca.ParseAuthority) can check the
	// chain; it drops the self-signed root from what it sends devices.
	bundle := bytes.Join([][]byte{inter.CertificatePEM(), root.CertificatePEM(), interKey}, nil)
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{rootCertFile, root.CertificatePEM(), 0o644},
		{rootKeyFile, rootKey, 0o600},
		{intermediateCertFile, inter.CertificatePEM(), 0o644},
		{signingBundleFile, bundle, 0o600},
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(*dir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.out, "root CA          %s (%q, until %s)\n", filepath.Join(*dir, rootCertFile), root.Certificate.Subject.CommonName, root.Certificate.NotAfter.Format(time.DateOnly))
	fmt.Fprintf(e.out, "root key         %s (keep offline)\n", filepath.Join(*dir, rootKeyFile))
	fmt.Fprintf(e.out, "intermediate CA  %s (%q, until %s)\n", filepath.Join(*dir, intermediateCertFile), inter.Certificate.Subject.CommonName, inter.Certificate.NotAfter.Format(time.DateOnly))
	fmt.Fprintf(e.out, "signing bundle   %s (upload with: iotprov ca upload --vault-url https://<vault>.vault.azure.net/ --file %s)\n",
		filepath.Join(*dir, signingBundleFile), filepath.Join(*dir, signingBundleFile))
	return nil
}

func caVerificationCert(e *env, args []string) error {
	fs := newFlagSet(e, "ca verification-cert", "--code CODE [--cert ca/root-ca.pem --key ca/root-ca.key] [--out FILE]", `
Make the proof-of-possession certificate DPS (and IoT Hub) ask for when you verify an
uploaded CA certificate: subject CN = the verification code the portal or
'az iot dps certificate generate-verification-code' shows, signed by that CA's key,
valid for a day. Upload it with 'az iot dps certificate verify'. --cert and --key are
the CA you uploaded (the root from 'iotprov ca init' by default); the certificate is
printed, or written to --out.`)
	code := fs.String("code", "", "the verification code (required)")
	certFile := fs.String("cert", filepath.Join("ca", rootCertFile), "certificate of the CA uploaded to DPS")
	keyFile := fs.String("key", filepath.Join("ca", rootKeyFile), "private key of that CA (PEM; PKCS#8, SEC1 or PKCS#1)")
	out := fs.String("out", "", "write the certificate here instead of standard output")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *code == "" {
		return errors.New("--code is required")
	}
	authority, err := loadAuthority(*certFile, *keyFile, e.now())
	if err != nil {
		return err
	}
	pemBytes, err := ca.NewVerificationCertificate(authority, *code, e.now())
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = e.out.Write(pemBytes)
		return err
	}
	return writeFileAtomic(*out, pemBytes, 0o644)
}

// loadAuthority reads a CA from a certificate file and a key file (or from one bundle
// holding both) and checks it is a usable CA now.
func loadAuthority(certFile, keyFile string, now time.Time) (*ca.Authority, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	bundle := certPEM
	// A bundle that already holds its key (signing-ca.pem) needs no --key.
	if keyFile != "" && keyFile != certFile && !bytes.Contains(certPEM, []byte("PRIVATE KEY-----")) {
		keyPEM, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, err
		}
		bundle = append(append(bytes.Clone(certPEM), '\n'), keyPEM...)
	}
	a, err := ca.ParseAuthority(bundle, now)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	return a, nil
}

// writeFileAtomic writes through a temporary file and a rename, so an interrupted run
// never leaves half a key behind under the real name.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
