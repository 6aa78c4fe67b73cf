// Package catest is the zlint harness shared by every test that issues certificates
// (internal/ca, internal/provision, the CLI): one place decides which zlint results fail
// a test, so a device certificate is held to the same bar wherever it is made.
//
// It imports zlint but nothing of iotprov, so internal/ca's own tests can use it.
package catest

import (
	"fmt"
	"sort"
	"testing"

	zx509 "github.com/zmap/zcrypto/x509"
	zlint "github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// NotApplicableToPrivateClientCerts lists zlint lints that may fire on device
// certificates but do not apply to them: they come from a private CA, are used only for
// TLS client authentication to Azure IoT Hub and DPS, and never chain to a WebPKI root.
//
// It is empty on purpose. With zlint v3.7.3 device certificates (every key algorithm,
// and the CSR path) produce no Warn, Error or Fatal at all: the CA/B Forum subscriber
// lints that would otherwise need excusing (SAN required, certificate policies,
// AIA/OCSP, CRL DP, 398-day validity) gate on the serverAuth EKU and report NA for a
// clientAuth-only certificate, and the only non-pass result is
// n_ct_sct_policy_count_unsatisfied, a Notice (below the Warn threshold) that would
// also not apply: CT is a WebPKI browser policy. Add an entry here, with its reason,
// only if a zlint upgrade adds a lint of that kind.
var NotApplicableToPrivateClientCerts = map[string]string{}

// PublicCASources are the lint sources that govern publicly-trusted CAs. The CA,
// server and verification certificates the helpers make are private, so they are linted
// against the RFCs and the community lints only.
var PublicCASources = map[lint.LintSource]bool{
	lint.CABFBaselineRequirements:      true,
	lint.CABFCSBaselineRequirements:    true,
	lint.CABFEVGuidelines:              true,
	lint.CABFSMIMEBaselineRequirements: true,
	lint.MozillaRootStorePolicy:        true,
	lint.AppleRootStorePolicy:          true,
	lint.ChromeRootStorePolicy:         true,
	lint.EtsiEsi:                       true,
}

// LintDeviceCertificate fails t on any zlint Warn, Error or Fatal result for der, apart
// from NotApplicableToPrivateClientCerts: the bar for every device certificate.
func LintDeviceCertificate(t testing.TB, der []byte) {
	t.Helper()
	for _, f := range Findings(t, der, lint.Warn, NotApplicableToPrivateClientCerts, nil) {
		t.Error(f)
	}
}

// LintLoosely fails t on zlint Error and Fatal results only, leaving out the public-CA
// policy sources: the bar for CA, server, client and verification certificates, which
// are private, dev and operator material.
func LintLoosely(t testing.TB, der []byte) {
	t.Helper()
	for _, f := range Findings(t, der, lint.Error, nil, PublicCASources) {
		t.Error(f)
	}
}

// Findings runs zlint over der and returns, sorted, one line per result at or above min
// whose lint is neither in allow nor from one of skipSources. Each line reads
// "zlint <status>: <lint name> <details>".
func Findings(t testing.TB, der []byte, min lint.LintStatus, allow map[string]string, skipSources map[lint.LintSource]bool) []string {
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
