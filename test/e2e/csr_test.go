package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/iotprov/iotprov/internal/devstack"
)

// TestDeviceRegisterCSR runs `iotprov device register --csr` against the stack: the key
// is made on the "device", only a CSR is sent, and the files written are what
// mosquitto_pub uses to reach the IoT Hub stand-in. Then weak and malformed CSRs are
// refused at register, with 400 and a code naming why.
func TestDeviceRegisterCSR(t *testing.T) {
	s := startStack(t, stackOptions{})
	groupKey := s.Material.SecretFile(devstack.SecretSASGroupKey)
	bin := filepath.Join(os.Getenv("E2E_BIN"), "iotprov")
	work := t.TempDir()

	cmd := exec.Command(bin, "device", "register", "--url", s.BaseURL, "--csr",
		"--group-key-file", groupKey, "--id", "csr-device-1", "--out", work, "--timeout", "60s")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("iotprov device register --csr: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "assigned") {
		t.Errorf("no progress line on stderr:\n%s", stderr.String())
	}
	vars := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^([A-Z_]+)='([^']*)'$`).FindAllStringSubmatch(stdout.String(), -1) {
		vars[m[1]] = m[2]
	}
	if vars["DEVICE_ID"] != "csr-device-1" || vars["HOST"] != "localhost" || vars["OPERATION_ID"] == "" {
		t.Fatalf("printed %q", stdout.String())
	}

	// The credential works: a real TLS handshake and MQTT CONNACK at the stand-in, which
	// trusts only the device CA.
	pub := exec.Command("mosquitto_pub", "-d", "-h", vars["HOST"], "-p", os.Getenv("E2E_MQTT_PORT"),
		"--cafile", filepath.Join(work, "rootCaCertificate.pem"),
		"--cert", filepath.Join(work, "certificate.pem"), "--key", filepath.Join(work, "privatekey.pem"),
		"-i", vars["DEVICE_ID"], "-u", vars["HOST"]+"/"+vars["DEVICE_ID"]+"/?api-version=2021-04-12",
		"-t", "devices/"+vars["DEVICE_ID"]+"/messages/events/", "-m", `{"hello":"csr"}`)
	out, err := pub.CombinedOutput()
	if err != nil || !strings.Contains(strings.ToLower(string(out)), "received connack (0)") {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
	certPEM, _ := os.ReadFile(filepath.Join(work, "certificate.pem"))
	verifyDeviceChain(t, s, certPEM, "csr-device-1")

	// The key never left the device: the assigned answer, fetched again, has no
	// privateKey, and the certificate is for the key in privatekey.pem.
	dev := newDevice(t, s, "csr-device-1")
	res, body := dev.do(http.MethodGet, "/v1/provisioning/azure/iot/registrations/"+vars["OPERATION_ID"], "", nil, nil)
	if res.StatusCode != http.StatusOK || body["status"] != "assigned" {
		t.Fatalf("assigned answer: %d %v", res.StatusCode, body)
	}
	if _, ok := body["privateKey"]; ok {
		t.Fatal("the answer to a CSR registration carries a privateKey")
	}
	keyPEM, _ := os.ReadFile(filepath.Join(work, "privatekey.pem"))
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatal("privatekey.pem is not PKCS#8")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leafBlock, _ := pem.Decode([]byte(body["certificate"].(string)))
	leaf, err := x509.ParseCertificate(leafBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.(crypto.Signer).Public()) {
		t.Fatal("the certificate is not for the device's own key")
	}

	t.Run("refused-at-register", func(t *testing.T) { refusedCSRs(t, s) })
}

// refusedCSRs sends weak and malformed CSRs straight to register: each is a 400 whose
// code names the reason, and none creates an operation.
func refusedCSRs(t *testing.T, s *devstack.Stack) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	good := csrFor(t, p256, nil)

	tampered := bytes.Clone(good)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	caExt, _ := asn1.Marshal(struct{ IsCA bool }{true})
	askCA := csrFor(t, p256, []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: caExt}})

	tests := []struct {
		name string
		csr  string
		code string
	}{
		{"fail/rsa-1024-is-weak", pemCSR(csrFor(t, rsa1024, nil)), "weak_key"},
		{"fail/p-224-is-unsupported", pemCSR(csrFor(t, p224, nil)), "unsupported_key"},
		{"fail/ed25519-is-unsupported", pemCSR(csrFor(t, ed, nil)), "unsupported_key"},
		{"fail/bad-signature", pemCSR(tampered), "invalid_csr"},
		{"fail/asks-to-be-a-ca", pemCSR(askCA), "invalid_csr"},
		{"fail/not-a-csr", base64.StdEncoding.EncodeToString([]byte("hello, not DER")), "invalid_csr"},
		{"fail/wrong-pem-type", strings.ReplaceAll(pemCSR(good), "CERTIFICATE REQUEST", "CERTIFICATE"), "invalid_csr"},
		{"fail/truncated", pemCSR(good[:len(good)/2]), "invalid_csr"},
	}
	dev := newDevice(t, s, "csr-refused-1")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev.t = t
			body, _ := json.Marshal(map[string]string{"csr": tc.csr})
			res, got := dev.do(http.MethodPost, "/v1/provisioning/azure/iot/register", "application/json", bytes.NewReader(body), nil)
			expectError(t, res, got, http.StatusBadRequest, tc.code)
			if msg, _ := got["error"].(map[string]any)["message"].(string); strings.Contains(msg, "BEGIN") {
				t.Errorf("error message echoes the CSR: %q", msg)
			}
		})
	}
	// Nothing was created by the refusals: had one left an operation in flight, this
	// register would return it (a CSR operation, answered without a privateKey).
	dev.t = t
	if op := dev.await(dev.register()); op["status"] != "assigned" || op["privateKey"] == nil {
		t.Errorf("after the refusals: %v", op)
	}
}

func csrFor(t *testing.T, key crypto.Signer, exts []pkix.Extension) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "device"}, ExtraExtensions: exts}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemCSR(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}
