package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/ca/catest"
	"github.com/iotprov/iotprov/internal/deviceclient"
	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/testenv"
)

// fakeService is a device API that issues from a real CA. Function fields let a test
// change one answer; the defaults follow DESIGN.md §2.
type fakeService struct {
	t           *testing.T
	root, inte  *ca.Authority
	profile     *ca.Profile
	polls       int // in-flight answers before the assignment
	unavailable int // 503 answers to polls before those

	// authorize checks a request's credential; nil accepts everything.
	authorize func(r *http.Request) error
	// assign turns the registered request into the assigned answer; nil issues for the
	// CSR's key, or for a fresh server key.
	assign func(a *deviceclient.Answer, csrKey any) *deviceclient.Answer

	mu        sync.Mutex
	seen      []*http.Request
	bodies    []string
	csr       *x509.CertificateRequest
	pollsLeft int
}

func newFakeService(t *testing.T) *fakeService {
	t.Helper()
	h := testenv.NewCAHierarchy(t)
	return &fakeService{t: t, root: h.Root, inte: h.Issuing, profile: h.Profile, polls: 2}
}

const fakeOpID = "0e8e5b9c-2d7a-4d6e-9f65-3f0a3c1f2b11"

func (f *fakeService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	f.seen = append(f.seen, r)
	f.bodies = append(f.bodies, string(body))
	reply := func(code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "0")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
	fail := func(err error) {
		e := errcode.As(err)
		reply(e.Status, map[string]any{"error": map[string]string{"code": e.Code, "message": e.Message}})
	}
	if f.authorize != nil {
		if err := f.authorize(r); err != nil {
			fail(err)
			return
		}
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == deviceclient.RegisterPath:
		if len(body) > 0 {
			var req struct{ CSR string }
			if err := json.Unmarshal(body, &req); err != nil {
				fail(errcode.New(400, errcode.CodeMalformedJSON, "bad JSON"))
				return
			}
			csr, err := ca.ParseCSR([]byte(req.CSR))
			if err != nil {
				fail(err)
				return
			}
			f.csr = csr
		}
		f.pollsLeft = f.polls
		reply(http.StatusAccepted, map[string]string{"operationId": fakeOpID, "status": "assigning"})
	case r.Method == http.MethodGet && r.URL.Path == deviceclient.RegistrationsPath+fakeOpID:
		if f.unavailable > 0 {
			f.unavailable--
			fail(errcode.New(http.StatusServiceUnavailable, errcode.CodeUnavailable, "Storage is not answering."))
			return
		}
		if f.pollsLeft > 0 {
			f.pollsLeft--
			reply(http.StatusAccepted, map[string]string{"operationId": fakeOpID, "status": "assigning"})
			return
		}
		a := &deviceclient.Answer{OperationID: fakeOpID, Status: deviceclient.StatusAssigned, DeviceID: "dev-1", Host: "hub.example.net",
			RootCACertificate: string(f.root.CertificatePEM())}
		var pub any
		if f.csr != nil {
			pub = f.csr.PublicKey
		} else {
			key, _ := ca.GenerateKey(ca.ECDSAP256)
			keyPEM, _ := ca.MarshalPrivateKeyPEM(key)
			a.PrivateKey, pub = string(keyPEM), key.Public()
		}
		issued, err := f.profile.Issue(f.inte, ca.Request{DeviceID: "dev-1", PublicKey: pub}, time.Now())
		if err != nil {
			f.t.Error(err)
			fail(err)
			return
		}
		a.Certificate = string(issued.ChainPEM)
		if f.assign != nil {
			a = f.assign(a, pub)
		}
		reply(http.StatusOK, a)
	default:
		fail(errcode.New(404, errcode.CodeNotFound, "no such path"))
	}
}

func groupKeyFile(t *testing.T) (string, []byte) {
	t.Helper()
	group := []byte("0123456789abcdef0123456789abcdef")
	p := filepath.Join(t.TempDir(), "sas-group-key")
	if err := os.WriteFile(p, []byte(b64(group)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, group
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// sasAuthorizer verifies the SAS token as the service would (registration ID as sr).
func sasAuthorizer(group []byte) func(r *http.Request) error {
	return func(r *http.Request) error {
		a := auth.NewSAS(auth.SASConfig{Keys: func(context.Context, string) ([]byte, error) { return group, nil }})
		_, err := a.Authenticate(r.Context(), r)
		return err
	}
}

// runRegister runs device register against srv with args and returns stdout, stderr and
// the output folder.
func runRegister(t *testing.T, url string, args ...string) (string, string, string, error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "device")
	e, out, errOut := testEnv(t)
	err := run(e, append([]string{"device", "register", "--url", url, "--out", dir, "--timeout", "20s"}, args...))
	return out.String(), errOut.String(), dir, err
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDeviceRegister(t *testing.T) {
	groupFile, group := groupKeyFile(t)
	tests := []struct {
		name  string
		args  []string
		setup func(f *fakeService)
		check func(t *testing.T, f *fakeService, out, errOut, dir string)
	}{
		{
			name:  "ok/server-generated-key-with-sas",
			args:  []string{"--group-key-file", groupFile, "--id", "dev-1"},
			setup: func(f *fakeService) { f.authorize = sasAuthorizer(group) },
			check: func(t *testing.T, f *fakeService, out, errOut, dir string) {
				pair, err := tls.LoadX509KeyPair(filepath.Join(dir, certificateFile), filepath.Join(dir, privateKeyFile))
				if err != nil {
					t.Fatalf("the files are not a usable credential: %v", err)
				}
				if len(pair.Certificate) != 2 {
					t.Errorf("certificate.pem holds %d certificates, want device + intermediate", len(pair.Certificate))
				}
				if !strings.Contains(string(readFile(t, filepath.Join(dir, privateKeyFile))), "BEGIN PRIVATE KEY") {
					t.Error("privatekey.pem is not PKCS#8")
				}
				if f.bodies[0] != "" {
					t.Errorf("register without --csr sent a body: %q", f.bodies[0])
				}
				// Two in-flight answers, then the assignment: a progress line per poll.
				if n := strings.Count(errOut, "assigning"); n < 2 || !strings.Contains(errOut, "assigned") {
					t.Errorf("progress on stderr:\n%s", errOut)
				}
			},
		},
		{
			name:  "ok/csr-key-never-leaves",
			args:  []string{"--csr", "--group-key-file", groupFile, "--id", "dev-1"},
			setup: func(f *fakeService) { f.authorize = sasAuthorizer(group) },
			check: func(t *testing.T, f *fakeService, out, errOut, dir string) {
				keyPEM := readFile(t, filepath.Join(dir, privateKeyFile))
				key, err := ca.ParsePrivateKeyPEM(keyPEM)
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := key.Public().(*ecdsa.PublicKey); !ok || !strings.Contains(string(keyPEM), "BEGIN PRIVATE KEY") {
					t.Fatalf("key is %T, want a PKCS#8 P-256 key", key.Public())
				}
				if f.csr == nil || !f.csr.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
					t.Fatal("the CSR sent is not for the key written")
				}
				if strings.Contains(f.bodies[0], "PRIVATE KEY") || f.seen[0].Header.Get("Content-Type") != "application/json" {
					t.Errorf("register request: %q %q", f.seen[0].Header.Get("Content-Type"), f.bodies[0])
				}
				fi, _ := os.Stat(filepath.Join(dir, privateKeyFile))
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("privatekey.pem mode %o", fi.Mode().Perm())
				}
				if _, err := tls.LoadX509KeyPair(filepath.Join(dir, certificateFile), filepath.Join(dir, privateKeyFile)); err != nil {
					t.Fatal(err)
				}
				leaf, _ := x509.ParseCertificate(mustPair(t, dir).Certificate[0])
				catest.LintDeviceCertificate(t, leaf.Raw)
			},
		},
		{
			name:  "ok/waits-out-503-while-polling",
			args:  []string{"--group-key-file", groupFile, "--id", "dev-1"},
			setup: func(f *fakeService) { f.unavailable = 2; f.polls = 0 },
			check: func(t *testing.T, f *fakeService, out, errOut, dir string) {
				if !strings.Contains(errOut, "HTTP 503 service_unavailable") || !strings.Contains(errOut, "retrying") {
					t.Errorf("progress does not show the 503:\n%s", errOut)
				}
				mustPair(t, dir)
			},
		},
		{
			name: "ok/extra-headers-for-other-methods",
			args: []string{"-H", "Authorization: Bearer eyJ.test.token", "-H", "x-soracom-imsi: 295000012345678"},
			setup: func(f *fakeService) {
				f.polls = 0
				f.authorize = func(r *http.Request) error {
					if r.Header.Get("Authorization") != "Bearer eyJ.test.token" || r.Header.Get("X-Soracom-Imsi") != "295000012345678" {
						return errcode.New(401, errcode.CodeMissingCredential, "headers missing")
					}
					return nil
				}
			},
			check: func(t *testing.T, f *fakeService, out, errOut, dir string) {
				if len(f.seen) != 2 {
					t.Errorf("%d requests, want register and one poll", len(f.seen))
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeService(t)
			if tc.setup != nil {
				tc.setup(f)
			}
			srv := httptest.NewServer(f)
			defer srv.Close()
			out, errOut, dir, err := runRegister(t, srv.URL, tc.args...)
			if err != nil {
				t.Fatalf("device register: %v\nstderr:\n%s", err, errOut)
			}
			want := "OPERATION_ID='" + fakeOpID + "'\nDEVICE_ID='dev-1'\nHOST='hub.example.net'\n"
			if out != want {
				t.Errorf("stdout %q, want %q", out, want)
			}
			if got := readFile(t, filepath.Join(dir, rootCAFile)); string(got) != string(f.root.CertificatePEM()) {
				t.Error("rootCaCertificate.pem is not the answer's rootCaCertificate")
			}
			tc.check(t, f, out, errOut, dir)
		})
	}
}

func mustPair(t *testing.T, dir string) tls.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, certificateFile), filepath.Join(dir, privateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

func TestDeviceRegisterRefusals(t *testing.T) {
	groupFile, group := groupKeyFile(t)
	otherKey, _ := ca.GenerateKey(ca.ECDSAP256)
	otherPEM, _ := ca.MarshalPrivateKeyPEM(otherKey)
	tests := []struct {
		name    string
		args    []string
		setup   func(f *fakeService)
		wantErr string
	}{
		{"fail/wrong-group-key", []string{"--device-key", b64([]byte("not the key")), "--id", "dev-1"},
			func(f *fakeService) { f.authorize = sasAuthorizer(group) }, "invalid_credential"},
		{"fail/register-unavailable", []string{"--group-key-file", groupFile, "--id", "dev-1"},
			func(f *fakeService) {
				f.authorize = func(*http.Request) error {
					return errcode.New(http.StatusServiceUnavailable, errcode.CodeUnavailable, "Key Vault is not answering.")
				}
			}, "service_unavailable: Key Vault is not answering.; try again"},
		{"fail/no-credential-for-id", []string{"--id", "dev-1"}, nil, "no credential"},
		{"fail/sas-and-authorization-header", []string{"--group-key-file", groupFile, "--id", "dev-1", "-H", "Authorization: Bearer x"}, nil, "not both"},
		{"fail/bad-header-flag", []string{"-H", "no colon"}, nil, "Name: value"},
		{"fail/operation-failed", []string{"--group-key-file", groupFile, "--id", "dev-1"},
			func(f *fakeService) {
				f.assign = func(a *deviceclient.Answer, _ any) *deviceclient.Answer {
					return &deviceclient.Answer{OperationID: a.OperationID, Status: deviceclient.StatusFailed, Error: &deviceclient.ErrorBody{Code: "dps_registration_failed", Message: "DPS said no."}}
				}
			}, "dps_registration_failed: DPS said no."},
		{"fail/csr-answer-carries-a-key", []string{"--csr", "--group-key-file", groupFile, "--id", "dev-1"},
			func(f *fakeService) {
				f.assign = func(a *deviceclient.Answer, _ any) *deviceclient.Answer { a.PrivateKey = string(otherPEM); return a }
			}, "returned a private key"},
		{"fail/certificate-for-another-key", []string{"--group-key-file", groupFile, "--id", "dev-1"},
			func(f *fakeService) {
				f.assign = func(a *deviceclient.Answer, _ any) *deviceclient.Answer { a.PrivateKey = string(otherPEM); return a }
			}, "do not match"},
		{"fail/csr-certificate-for-another-key", []string{"--csr", "--group-key-file", groupFile, "--id", "dev-1"},
			func(f *fakeService) {
				f.assign = func(a *deviceclient.Answer, _ any) *deviceclient.Answer {
					prof, _ := ca.NewProfile(ca.ProfileConfig{})
					issued, _ := prof.Issue(f.inte, ca.Request{DeviceID: "dev-1", PublicKey: otherKey.Public()}, time.Now())
					a.Certificate = string(issued.ChainPEM)
					return a
				}
			}, "not for the key generated here"},
		{"fail/hostile-host", []string{"--group-key-file", groupFile, "--id", "dev-1"},
			func(f *fakeService) {
				f.assign = func(a *deviceclient.Answer, _ any) *deviceclient.Answer { a.Host = "x'; rm -rf / #"; return a }
			}, "no usable deviceId or host"},
		{"fail/cert-without-https", []string{"--cert", "c.pem", "--key", "k.pem"}, nil, "https"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeService(t)
			f.polls = 0
			if tc.setup != nil {
				tc.setup(f)
			}
			srv := httptest.NewServer(f)
			defer srv.Close()
			out, errOut, dir, err := runRegister(t, srv.URL, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one naming %q\nstderr:\n%s", err, tc.wantErr, errOut)
			}
			if out != "" {
				t.Errorf("printed %q on failure", out)
			}
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("files were written on failure")
			}
		})
	}
}

// TestDeviceRegisterMutualTLS presents an X.509 bootstrap certificate, the x509 method's
// credential, over https with a server the device trusts through --cacert.
func TestDeviceRegisterMutualTLS(t *testing.T) {
	f := newFakeService(t)
	f.polls = 0
	now := time.Now()
	serverChain, serverKey, err := ca.NewServerCertificate(f.root, "localhost", nil, []net.IP{net.IPv4(127, 0, 0, 1)}, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	factory, _ := ca.NewRootCA("factory", 0, now)
	clientChain, clientKey, err := ca.NewClientCertificate(factory, "bootstrap-7", 0, now)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{"server-root.pem": f.root.CertificatePEM(), "client.pem": clientChain, "client.key": clientKey}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pair, err := tls.X509KeyPair(serverChain, serverKey)
	if err != nil {
		t.Fatal(err)
	}
	clientRoots := x509.NewCertPool()
	clientRoots.AddCert(factory.Certificate)
	f.authorize = func(r *http.Request) error {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || r.TLS.VerifiedChains[0][0].Subject.CommonName != "bootstrap-7" {
			return errcode.New(401, errcode.CodeMissingCredential, "no client certificate")
		}
		return nil
	}
	srv := httptest.NewUnstartedServer(f)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: clientRoots}
	srv.StartTLS()
	defer srv.Close()

	if _, errOut, _, err := runRegister(t, srv.URL, "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client.key"),
		"--cacert", filepath.Join(dir, "server-root.pem")); err != nil {
		t.Fatalf("with the bootstrap certificate: %v\n%s", err, errOut)
	}
	if _, _, _, err := runRegister(t, srv.URL, "--cacert", filepath.Join(dir, "server-root.pem")); err == nil || !strings.Contains(err.Error(), "missing_credential") {
		t.Fatalf("without it: %v", err)
	}
}
