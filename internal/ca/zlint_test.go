package ca

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	zx509 "github.com/zmap/zcrypto/x509"
	zlint "github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// notApplicableToPrivateClientCerts lists zlint lints that may fire on our device
// certificates but do not apply to them: they come from a private CA, are used only for
// TLS client authentication to Azure IoT Hub and DPS, and never chain to a WebPKI root.
//
// It is empty on purpose. With zlint v3.7.3 our device certificates (every key
// algorithm, and the CSR path) produce no Warn, Error or Fatal at all: the CA/B Forum
// subscriber lints that would otherwise need excusing (SAN required, certificate
// policies, AIA/OCSP, CRL DP, 398-day validity) gate on the serverAuth EKU and report NA
// for a clientAuth-only certificate, and the only non-pass result is
// n_ct_sct_policy_count_unsatisfied, a Notice (below the Warn threshold) that would also
// not apply: CT is a WebPKI browser policy. Add an entry here, with its reason, only if
// a zlint upgrade adds a lint of that kind.
var notApplicableToPrivateClientCerts = map[string]string{}

// publicCASources are the lint sources that govern publicly-trusted CAs. Our generated
// CA certificates are private, so they are linted against the RFCs and the community
// lints only.
var publicCASources = map[lint.LintSource]bool{
	lint.CABFBaselineRequirements:      true,
	lint.CABFCSBaselineRequirements:    true,
	lint.CABFEVGuidelines:              true,
	lint.CABFSMIMEBaselineRequirements: true,
	lint.MozillaRootStorePolicy:        true,
	lint.AppleRootStorePolicy:          true,
	lint.ChromeRootStorePolicy:         true,
	lint.EtsiEsi:                       true,
}

// lintCertificate runs zlint over der and fails on any Warn, Error or Fatal result whose
// lint is not in allow.
func lintCertificate(t *testing.T, der []byte, allow map[string]string) {
	t.Helper()
	for _, f := range zlintFindings(t, der, lint.Warn, allow, nil) {
		t.Error(f)
	}
}

// lintLoosely runs zlint over the certificates the helpers make (CAs, server, client and
// verification certificates) and fails on Error and Fatal only, leaving out the
// public-CA policy sources: they are private, dev and operator material.
func lintLoosely(t *testing.T, der []byte) {
	t.Helper()
	for _, f := range zlintFindings(t, der, lint.Error, nil, publicCASources) {
		t.Error(f)
	}
}

func zlintFindings(t *testing.T, der []byte, min lint.LintStatus, allow map[string]string, skipSources map[lint.LintSource]bool) []string {
	t.Helper()
	zc, err := zx509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("zcrypto cannot parse the certificate: %v", err)
	}
	rs := zlint.LintCertificate(zc)
	var findings []string
	for name, r := range rs.Results {
		if r.Status < min {
			continue
		}
		if _, ok := allow[name]; ok {
			continue
		}
		if l := lint.GlobalRegistry().ByName(name); l != nil && skipSources[l.Source] {
			continue
		}
		findings = append(findings, fmt.Sprintf("zlint %s: %s %s", r.Status, name, r.Details))
	}
	sort.Strings(findings)
	return findings
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
			findings := zlintFindings(t, cert.Raw, lint.Warn, notApplicableToPrivateClientCerts, nil)
			for _, f := range findings {
				if strings.Contains(f, " "+tc.wantLint+" ") {
					return
				}
			}
			t.Fatalf("zlint did not report %s; findings: %v", tc.wantLint, findings)
		})
	}
}
