package main

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/ca/catest"
	"github.com/iotprov/iotprov/internal/secrets"
	"github.com/iotprov/iotprov/internal/secrets/kvtest"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s holds no certificate", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// initCA runs ca init into a fresh folder and returns it.
func initCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	e, out, _ := testEnv(t)
	if err := run(e, []string{"ca", "init", "--dir", dir, "--root-cn", "Test Root", "--intermediate-cn", "Test Devices"}); err != nil {
		t.Fatalf("ca init: %v", err)
	}
	if !strings.Contains(out.String(), "iotprov ca upload") {
		t.Errorf("ca init does not say what to do next:\n%s", out)
	}
	return dir
}

func TestCAInit(t *testing.T) {
	dir := initCA(t)
	for name, perm := range map[string]os.FileMode{rootCertFile: 0o644, rootKeyFile: 0o600, intermediateCertFile: 0o644, signingBundleFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != perm {
			t.Errorf("%s mode %o, want %o", name, fi.Mode().Perm(), perm)
		}
	}
	root := readCert(t, filepath.Join(dir, rootCertFile))
	inter := readCert(t, filepath.Join(dir, intermediateCertFile))
	if !root.IsCA || !inter.IsCA || root.Subject.CommonName != "Test Root" || inter.Subject.CommonName != "Test Devices" {
		t.Fatalf("root %v CA %v, intermediate %v CA %v", root.Subject, root.IsCA, inter.Subject, inter.IsCA)
	}
	if inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Errorf("intermediate pathlen %d (zero %v), want 0: it signs only devices", inter.MaxPathLen, inter.MaxPathLenZero)
	}
	catest.LintLoosely(t, root.Raw)
	catest.LintLoosely(t, inter.Raw)

	// The bundle is what the service reads: the intermediate signs, the root is dropped
	// from device chains, and a device certificate from it verifies to the root.
	bundle, err := os.ReadFile(filepath.Join(dir, signingBundleFile))
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.ParseAuthority(bundle, time.Now())
	if err != nil {
		t.Fatalf("the service would refuse the bundle: %v", err)
	}
	if !a.Certificate.Equal(inter) || len(a.Intermediates) != 0 {
		t.Fatalf("signing CA %v with %d intermediates; want the intermediate alone", a.Certificate.Subject, len(a.Intermediates))
	}
	profile, _ := ca.NewProfile(ca.ProfileConfig{})
	key, _ := ca.GenerateKey(ca.ECDSAP256)
	issued, err := profile.Issue(a, ca.Request{DeviceID: "dev-1", PublicKey: key.Public()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	catest.LintDeviceCertificate(t, issued.Certificate.Raw)
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	inters.AddCert(inter)
	if _, err := issued.Certificate.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("device certificate does not verify to the root: %v", err)
	}

	t.Run("fail/refuses-to-overwrite", func(t *testing.T) {
		e, _, _ := testEnv(t)
		if err := run(e, []string{"ca", "init", "--dir", dir}); err == nil || !strings.Contains(err.Error(), "--force") {
			t.Fatalf("second ca init: %v", err)
		}
		if again := readCert(t, filepath.Join(dir, rootCertFile)); !again.Equal(root) {
			t.Fatal("the root was replaced")
		}
	})
	t.Run("ok/force-overwrites", func(t *testing.T) {
		e, _, _ := testEnv(t)
		if err := run(e, []string{"ca", "init", "--dir", dir, "--force"}); err != nil {
			t.Fatal(err)
		}
		if again := readCert(t, filepath.Join(dir, rootCertFile)); again.Equal(root) {
			t.Fatal("--force kept the old root")
		}
	})
	t.Run("fail/bad-validity", func(t *testing.T) {
		e, _, _ := testEnv(t)
		if err := run(e, []string{"ca", "init", "--dir", t.TempDir(), "--root-validity", "-1h"}); err == nil {
			t.Fatal("negative validity accepted")
		}
	})
}

func TestCAVerificationCert(t *testing.T) {
	dir := initCA(t)
	root := readCert(t, filepath.Join(dir, rootCertFile))
	inter := readCert(t, filepath.Join(dir, intermediateCertFile))
	tests := []struct {
		name    string
		args    []string
		signer  *x509.Certificate
		wantErr string
	}{
		{"ok/root-by-default-paths", []string{"--cert", filepath.Join(dir, rootCertFile), "--key", filepath.Join(dir, rootKeyFile)}, root, ""},
		{"ok/signing-bundle-holds-its-key", []string{"--cert", filepath.Join(dir, signingBundleFile)}, inter, ""},
		{"ok/to-file", []string{"--cert", filepath.Join(dir, rootCertFile), "--key", filepath.Join(dir, rootKeyFile), "--out", filepath.Join(t.TempDir(), "verify.pem")}, root, ""},
		{"fail/no-code", []string{"--cert", filepath.Join(dir, rootCertFile), "--key", filepath.Join(dir, rootKeyFile), "--code", ""}, nil, "--code"},
		{"fail/key-does-not-match", []string{"--cert", filepath.Join(dir, rootCertFile), "--key", filepath.Join(dir, signingBundleFile)}, nil, "does not match"},
		{"fail/missing-cert", []string{"--cert", filepath.Join(dir, "missing.pem")}, nil, "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, out, _ := testEnv(t)
			args := append([]string{"ca", "verification-cert", "--code", "0A1B2C3D4E5F"}, tc.args...)
			err := run(e, args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			pemBytes := out.Bytes()
			for i, a := range args {
				if a == "--out" {
					if pemBytes, err = os.ReadFile(args[i+1]); err != nil {
						t.Fatal(err)
					}
				}
			}
			if strings.Contains(string(pemBytes), "PRIVATE KEY") {
				t.Fatal("the verification output carries a private key")
			}
			block, rest := pem.Decode(pemBytes)
			if block == nil || len(strings.TrimSpace(string(rest))) != 0 {
				t.Fatalf("want exactly one certificate, got %q", pemBytes)
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if c.Subject.CommonName != "0A1B2C3D4E5F" || c.CheckSignatureFrom(tc.signer) != nil || c.IsCA {
				t.Fatalf("verification certificate CN %q, signed by %v: %v", c.Subject.CommonName, tc.signer.Subject, c.CheckSignatureFrom(tc.signer))
			}
			catest.LintLoosely(t, c.Raw)
		})
	}
}

func TestCAUpload(t *testing.T) {
	dir := initCA(t)
	kv := kvtest.NewServer(t)
	upload := func(t *testing.T, args ...string) (string, string, error) {
		t.Helper()
		e, out, errOut := testEnv(t)
		e.newVault = func(vaultURL, clientID string) (secretSetter, error) {
			if vaultURL != kv.URL() {
				t.Errorf("vault URL %q, want %q", vaultURL, kv.URL())
			}
			return newTestVaultClient(t, kv)
		}
		err := run(e, append([]string{"ca", "upload", "--vault-url", kv.URL()}, args...))
		return out.String(), errOut.String(), err
	}
	bundle, _ := os.ReadFile(filepath.Join(dir, signingBundleFile))

	t.Run("ok/stored-and-read-back-by-the-service", func(t *testing.T) {
		out, _, err := upload(t, "--file", filepath.Join(dir, signingBundleFile), "--name", "iotprov-ca")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "PRIVATE KEY") || !strings.Contains(out, `"iotprov-ca"`) || !strings.Contains(out, "Test Devices") {
			t.Fatalf("output: %q", out)
		}
		if vs := kv.Versions("iotprov-ca"); len(vs) != 1 || vs[0] != string(bundle) || kv.ContentType("iotprov-ca") != pemContentType {
			t.Fatalf("vault holds %d versions, content type %q", len(vs), kv.ContentType("iotprov-ca"))
		}
		src, err := secrets.NewKeyVaultSource(kv.URL(), kv.Credential(), kv.ClientOptions())
		if err != nil {
			t.Fatal(err)
		}
		got, err := src.Secret(t.Context(), "iotprov-ca")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ca.ParseAuthority(got, time.Now()); err != nil {
			t.Fatalf("the service cannot use what was uploaded: %v", err)
		}
	})
	t.Run("ok/rotation-is-a-new-version", func(t *testing.T) {
		dir2 := initCA(t)
		if _, _, err := upload(t, "--file", filepath.Join(dir2, signingBundleFile), "--name", "iotprov-ca"); err != nil {
			t.Fatal(err)
		}
		if vs := kv.Versions("iotprov-ca"); len(vs) != 2 || vs[0] != string(bundle) {
			t.Fatalf("versions after rotation: %d", len(vs))
		}
	})
	t.Run("ok/self-signed-root-warns", func(t *testing.T) {
		rootOnly := filepath.Join(t.TempDir(), "root-bundle.pem")
		c, _ := os.ReadFile(filepath.Join(dir, rootCertFile))
		k, _ := os.ReadFile(filepath.Join(dir, rootKeyFile))
		if err := os.WriteFile(rootOnly, append(c, k...), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errOut, err := upload(t, "--file", rootOnly, "--name", "root-as-ca")
		if err != nil || !strings.Contains(errOut, "self-signed root") {
			t.Fatalf("err %v, stderr %q", err, errOut)
		}
	})
	puts := kv.Puts()
	refusals := []struct {
		name, wantErr string
		args          []string
		setup         func()
	}{
		{"fail/cert-without-key", "no private key", []string{"--file", filepath.Join(dir, intermediateCertFile)}, nil},
		{"fail/missing-file", "no such file", []string{"--file", filepath.Join(dir, "nope.pem")}, nil},
		{"fail/plain-http-vault", "https", []string{"--file", filepath.Join(dir, signingBundleFile), "--vault-url", "http://vault.example"}, nil},
		{"fail/vault-refuses", "403", []string{"--file", filepath.Join(dir, signingBundleFile)}, func() { kv.FailNext(http.StatusForbidden) }},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			_, _, err := upload(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one naming %q", err, tc.wantErr)
			}
		})
	}
	if kv.Puts() != puts {
		t.Fatalf("refused uploads stored %d versions", kv.Puts()-puts)
	}
}

// newTestVaultClient is the real azsecrets client pointed at the loopback vault, so ca
// upload is tested through the SDK's own request building and bearer challenge.
func newTestVaultClient(t *testing.T, kv *kvtest.Server) (secretSetter, error) {
	t.Helper()
	return azsecrets.NewClient(kv.URL(), kv.Credential(), kv.ClientOptions())
}
