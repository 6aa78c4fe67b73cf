package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"
)

func TestNewRootCA(t *testing.T) {
	tests := []struct {
		name         string
		cn           string
		validity     time.Duration
		wantNotAfter time.Time
		wantErr      string
	}{
		{"ok/explicit-validity", "root", 24 * time.Hour, testNow.Add(24 * time.Hour), ""},
		{"ok/default-validity", "root", 0, testNow.Add(20 * 365 * 24 * time.Hour), ""},
		{"fail/empty-cn", "", time.Hour, time.Time{}, "common name"},
		{"fail/negative-validity", "root", -time.Hour, time.Time{}, "negative"},
		{"fail/absurd-validity", "root", 40 * 365 * 24 * time.Hour, time.Time{}, "30 years"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := NewRootCA(tc.cn, tc.validity, testNow)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v; want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := a.Certificate
			if !isSelfSigned(c) || c.CheckSignatureFrom(c) != nil {
				t.Fatal("root is not self-signed")
			}
			if !c.IsCA || c.MaxPathLen != 1 || c.KeyUsage&x509.KeyUsageCertSign == 0 {
				t.Fatalf("root: IsCA %v MaxPathLen %d KeyUsage %b", c.IsCA, c.MaxPathLen, c.KeyUsage)
			}
			if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
				t.Fatal("root key is not ECDSA P-256")
			}
			if len(c.SubjectKeyId) == 0 || len(a.Intermediates) != 0 {
				t.Fatal("root has no SKI, or has intermediates")
			}
			if !c.NotAfter.Equal(tc.wantNotAfter) || !c.NotBefore.Equal(testNow.Add(-DefaultBackdate)) {
				t.Fatalf("validity %v to %v", c.NotBefore, c.NotAfter)
			}
			if got := a.CertificatePEM(); !strings.HasPrefix(string(got), "-----BEGIN CERTIFICATE-----") {
				t.Fatal("CertificatePEM is not a certificate")
			}
			lintLoosely(t, c.Raw)
		})
	}
}

func TestNewIntermediateCA(t *testing.T) {
	root, inter := rootAndIntermediate(t)
	c := inter.Certificate
	if err := c.CheckSignatureFrom(root.Certificate); err != nil {
		t.Fatalf("intermediate not signed by root: %v", err)
	}
	if !c.IsCA || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Fatalf("intermediate: IsCA %v MaxPathLen %d zero %v", c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	if len(inter.Intermediates) != 0 {
		t.Fatal("an intermediate under a root must not list the root")
	}
	lintLoosely(t, c.Raw)

	t.Run("ok/clamped-to-parent", func(t *testing.T) {
		long, err := NewIntermediateCA(root, "long", 29*365*24*time.Hour, testNow)
		if err != nil {
			t.Fatal(err)
		}
		if !long.Certificate.NotAfter.Equal(root.Certificate.NotAfter) {
			t.Fatalf("NotAfter %v; want the root's %v", long.Certificate.NotAfter, root.Certificate.NotAfter)
		}
	})
	t.Run("ok/parent-not-self-signed", func(t *testing.T) {
		// crypto/x509 would refuse this chain (inter has pathlen 0); the point here is
		// how Intermediates is assembled.
		below, err := NewIntermediateCA(inter, "below", time.Hour, testNow)
		if err != nil {
			t.Fatal(err)
		}
		if len(below.Intermediates) != 1 || !below.Intermediates[0].Equal(inter.Certificate) {
			t.Fatalf("Intermediates = %d certs; want [parent]", len(below.Intermediates))
		}
		further, err := NewIntermediateCA(below, "further", time.Hour, testNow)
		if err != nil {
			t.Fatal(err)
		}
		if len(further.Intermediates) != 2 || !further.Intermediates[0].Equal(below.Certificate) || !further.Intermediates[1].Equal(inter.Certificate) {
			t.Fatal("Intermediates is not parent, then parent's intermediates")
		}
	})
	t.Run("fail/nil-parent", func(t *testing.T) {
		if _, err := NewIntermediateCA(nil, "x", time.Hour, testNow); err == nil {
			t.Fatal("NewIntermediateCA(nil) succeeded")
		}
	})
	t.Run("fail/expired-parent", func(t *testing.T) {
		if _, err := NewIntermediateCA(root, "x", time.Hour, root.Certificate.NotAfter.Add(time.Hour)); err == nil {
			t.Fatal("an expired parent signed")
		}
	})
}

// TestServerAndClientCertificatesHandshake runs real mutual TLS over an in-memory pipe
// with the helper certificates, as the DPS emulator and mosquitto will use them.
func TestServerAndClientCertificatesHandshake(t *testing.T) {
	// The handshake checks validity against the wall clock, so this hierarchy is
	// anchored at now rather than testNow.
	now := time.Now()
	root, err := NewRootCA("handshake root", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := NewIntermediateCA(root, "handshake issuing", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	srvChain, srvKey, err := NewServerCertificate(inter, "localhost", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	cliChain, cliKey, err := NewClientCertificate(inter, "bootstrap-1", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}

	srvLeaf := parseChain(t, srvChain)
	cliLeaf := parseChain(t, cliChain)
	for name, chain := range map[string][]*x509.Certificate{"server": srvLeaf, "client": cliLeaf} {
		if len(chain) != 2 || !chain[1].Equal(inter.Certificate) {
			t.Fatalf("%s chain: want leaf + intermediate, got %d certs", name, len(chain))
		}
		lintLoosely(t, chain[0].Raw)
	}
	if s := srvLeaf[0]; len(s.DNSNames) != 1 || s.DNSNames[0] != "localhost" || len(s.IPAddresses) != 1 || s.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Fatalf("server cert SANs/EKU: %v %v %v", s.DNSNames, s.IPAddresses, s.ExtKeyUsage)
	}
	if c := cliLeaf[0]; c.Subject.CommonName != "bootstrap-1" || len(c.DNSNames)+len(c.IPAddresses) != 0 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("client cert: %v %v %v", c.Subject, c.DNSNames, c.ExtKeyUsage)
	}

	srvPair, err := tls.X509KeyPair(srvChain, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	cliPair, err := tls.X509KeyPair(cliChain, cliKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root.Certificate)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sc, cc := net.Pipe()
	srv := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{srvPair}, ClientCAs: roots, ClientAuth: tls.RequireAndVerifyClientCert})
	cli := tls.Client(cc, &tls.Config{Certificates: []tls.Certificate{cliPair}, RootCAs: roots, ServerName: "localhost"})
	defer srv.Close()
	defer cli.Close()
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.HandshakeContext(ctx) }()
	if err := cli.HandshakeContext(ctx); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-srvErr; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if got := srv.ConnectionState().PeerCertificates[0].Subject.CommonName; got != "bootstrap-1" {
		t.Fatalf("server saw client %q", got)
	}
}

func TestHelperLeafFailures(t *testing.T) {
	_, inter := rootAndIntermediate(t)
	tests := []struct {
		name string
		call func() error
	}{
		{"fail/server-no-names", func() error {
			_, _, err := NewServerCertificate(inter, "x", nil, nil, time.Hour, testNow)
			return err
		}},
		{"fail/server-nil-issuer", func() error {
			_, _, err := NewServerCertificate(nil, "x", []string{"x"}, nil, time.Hour, testNow)
			return err
		}},
		{"fail/client-empty-cn", func() error {
			_, _, err := NewClientCertificate(inter, "", time.Hour, testNow)
			return err
		}},
		{"fail/client-negative-validity", func() error {
			_, _, err := NewClientCertificate(inter, "x", -time.Hour, testNow)
			return err
		}},
		{"fail/verification-empty-code", func() error {
			_, err := NewVerificationCertificate(inter, "", testNow)
			return err
		}},
		{"fail/verification-issuer-expired", func() error {
			_, err := NewVerificationCertificate(inter, "ABC", inter.Certificate.NotAfter.Add(time.Minute))
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err == nil {
				t.Fatal("succeeded")
			}
		})
	}
}

func TestNewVerificationCertificate(t *testing.T) {
	root, inter := rootAndIntermediate(t)
	for name, issuer := range map[string]*Authority{"ok/root": root, "ok/intermediate": inter} {
		t.Run(name, func(t *testing.T) {
			const code = "7A2B9C1D3E4F5061728394A5B6C7D8E9F0A1B2C3D4E5F607"
			b, err := NewVerificationCertificate(issuer, code, testNow)
			if err != nil {
				t.Fatal(err)
			}
			chain := parseChain(t, b)
			if len(chain) != 1 {
				t.Fatalf("got %d certificates; want exactly one", len(chain))
			}
			c := chain[0]
			if c.Subject.CommonName != code {
				t.Fatalf("CN = %q; want the code", c.Subject.CommonName)
			}
			if err := c.CheckSignatureFrom(issuer.Certificate); err != nil {
				t.Fatalf("not signed by the issuer: %v", err)
			}
			if c.IsCA || c.NotAfter.Sub(testNow) > 24*time.Hour {
				t.Fatalf("IsCA %v, NotAfter %v", c.IsCA, c.NotAfter)
			}
			lintLoosely(t, c.Raw)
		})
	}
}
