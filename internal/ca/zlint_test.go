package ca

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"
	"time"

	"github.com/zmap/zlint/v3/lint"

	"github.com/iotprov/iotprov/internal/ca/catest"
)

// The harness lives in catest so the worker's and the CLI's tests hold certificates to
// the same bar; these names keep this package's tests short.
var notApplicableToPrivateClientCerts = catest.NotApplicableToPrivateClientCerts

// lintCertificate fails on any zlint Warn, Error or Fatal result whose lint is not in allow.
func lintCertificate(t *testing.T, der []byte, allow map[string]string) {
	t.Helper()
	for _, f := range catest.Findings(t, der, lint.Warn, allow, nil) {
		t.Error(f)
	}
}

// lintLoosely is catest.LintLoosely: Error and Fatal only, public-CA sources left out.
func lintLoosely(t *testing.T, der []byte) {
	t.Helper()
	catest.LintLoosely(t, der)
}

// TestZlintHarnessCatchesBadCertificates proves the harness above can fail: a clean
// result from a linter that never runs would prove nothing.
func TestZlintHarnessCatchesBadCertificates(t *testing.T) {
	_, inter := rootAndIntermediate(t)
	tests := []struct {
		name     string
		tmpl     *x509.Certificate
		wantLint string
	}{
		{"fail/key-encipherment-with-client-auth", &x509.Certificate{
			Subject: pkix.Name{CommonName: "dev"}, NotBefore: testNow, NotAfter: testNow.Add(24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true,
		}, "e_key_usage_and_extended_key_usage_inconsistent"},
		{"fail/cert-sign-on-leaf", &x509.Certificate{
			Subject: pkix.Name{CommonName: "dev"}, NotBefore: testNow, NotAfter: testNow.Add(24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true,
		}, "e_ext_key_usage_cert_sign_without_ca"},
		{"fail/no-subject-key-id", &x509.Certificate{
			Subject: pkix.Name{CommonName: "dev"}, NotBefore: testNow, NotAfter: testNow.Add(24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, BasicConstraintsValid: true,
		}, "w_ext_subject_key_identifier_missing_sub_cert"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cert, _ := signedBy(t, inter, tc.tmpl)
			findings := catest.Findings(t, cert.Raw, lint.Warn, notApplicableToPrivateClientCerts, nil)
			for _, f := range findings {
				if strings.Contains(f, " "+tc.wantLint+" ") {
					return
				}
			}
			t.Fatalf("zlint did not report %s; findings: %v", tc.wantLint, findings)
		})
	}
}
