package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func minimal() map[string]string {
	return map[string]string{
		StorageConnection: "UseDevelopmentStorage=true",
		KeyVaultURL:       "https://v.vault.azure.net/",
		DPSIDScope:        "0ne00000000",
	}
}

func TestLoadDefaults(t *testing.T) {
	c, err := Load(env(minimal()))
	if err != nil {
		t.Fatal(err)
	}
	if c.Functions || c.ListenAddr != "127.0.0.1:7071" || c.SecretSource != "keyvault" || c.KeyAlgorithm != "ecdsa-p256" ||
		c.MaxDequeueCount != 5 || c.StallAfter != 10*time.Minute || c.PollInterval != 2*time.Second || len(c.AuthMethods) != 1 || c.AuthMethods[0] != "sas" || c.CertValidity.Hours() != 8760 {
		t.Errorf("defaults: %+v", c)
	}
	m := minimal()
	m[CustomHandlerPort] = "4321"
	if c, err = Load(env(m)); err != nil || !c.Functions {
		t.Errorf("functions mode: %v %+v", err, c)
	}
}

// Every bad setting stops the handler with one line that names it.
func TestLoadRefusesBadSettings(t *testing.T) {
	tests := []struct{ name, key, value string }{
		{"fail/no-storage", StorageConnection, ""},
		{"fail/no-scope", DPSIDScope, ""},
		{"fail/vault-not-https", KeyVaultURL, "http://v"},
		{"fail/source", SecretSource, "s3"},
		{"fail/ttl", SecretCacheTTL, "soon"},
		{"fail/ttl-range", SecretCacheTTL, "1ms"},
		{"fail/method", AuthMethods, "sas,magic"},
		{"fail/no-method", AuthMethods, " , "},
		{"fail/algorithm", KeyAlgorithm, "rsa-1024"},
		{"fail/validity", CertValidity, "-1h"},
		{"fail/dequeue", MaxDequeueCount, "zero"},
		{"fail/secret-name", CASecret, "bad_name"},
		{"fail/port", CustomHandlerPort, "http"},
		{"fail/listen", ListenAddr, "7071"},
		{"fail/retention", KeyRetention, "8000h"},
		{"fail/beam-identity", BeamIdentity, "iccid"},
		{"fail/beam-skew", BeamMaxSkew, "2h"},
		{"fail/beam-secret", BeamPSKSecret, "a/b"},
		{"fail/jwt-claim", JWTIdentityClaim, "a..b"},
		{"fail/jwt-leeway", JWTLeeway, "1h"},
		{"fail/x509-trust", X509TrustForwarded, "maybe"},
		{"fail/policy", DevicePolicy, "strict"},
		{"fail/stall-after-too-short", StallAfter, "1m"},
		{"fail/stall-after", StallAfter, "never"},
		{"fail/poll-interval-under-a-second", PollInterval, "500ms"},
		{"fail/poll-interval-over-a-minute", PollInterval, "2m"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := minimal()
			m[tc.key] = tc.value
			_, err := Load(env(m))
			if err == nil {
				t.Fatalf("%s=%q accepted", tc.key, tc.value)
			}
			if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), tc.key) && tc.key != KeyRetention {
				t.Errorf("error does not name %s on one line: %q", tc.key, err)
			}
		})
	}
}

func TestLoadAuthSettings(t *testing.T) {
	tests := []struct {
		name    string
		set     map[string]string
		wantErr string // the setting the error must name; "" = ok
	}{
		{"ok/all-methods", map[string]string{AuthMethods: "sas, beam,jwt,x509", JWTIssuer: "https://soracom.io", JWTAudience: "soracom-endorse-audience"}, ""},
		{"ok/tls-listener", map[string]string{TLSListenAddr: "127.0.0.1:7443", TLSCertFile: "c.pem", TLSKeyFile: "k.pem"}, ""},
		{"ok/tls-ignored-under-functions", map[string]string{CustomHandlerPort: "1234", TLSListenAddr: "x"}, ""},
		{"fail/jwt-without-issuer", map[string]string{AuthMethods: "jwt", JWTAudience: "a"}, JWTIssuer},
		{"fail/jwt-without-audience", map[string]string{AuthMethods: "jwt", JWTIssuer: "i"}, JWTAudience},
		{"fail/tls-without-cert", map[string]string{TLSListenAddr: "127.0.0.1:7443"}, TLSCertFile},
		{"fail/tls-bad-addr", map[string]string{TLSListenAddr: "7443", TLSCertFile: "c", TLSKeyFile: "k"}, TLSListenAddr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := minimal()
			for k, v := range tt.set {
				m[k] = v
			}
			c, err := Load(env(m))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tt.set[AuthMethods] != "" && (!c.Enabled("x509") || !c.Enabled("beam") || c.Enabled("magic")) {
					t.Fatalf("methods %v", c.AuthMethods)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
			}
		})
	}
	c, err := Load(env(minimal()))
	if err != nil {
		t.Fatal(err)
	}
	if c.BeamIdentity != "imsi" || c.BeamMaxSkew.Minutes() != 5 || c.JWTIdentityClaim != "sub" || c.X509TrustForwarded || c.DevicePolicy != "off" {
		t.Errorf("auth defaults: %+v", c)
	}
}

// The settings the code reads, the README's table and local.settings.sample.json cannot
// drift apart.
func TestSettingsDocumented(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var sample struct{ Values map[string]string }
	b, err := os.ReadFile(filepath.Join("..", "..", "local.settings.sample.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &sample); err != nil {
		t.Fatal(err)
	}
	// Set by the platform or only meaningful in Azure: not in the local sample.
	notLocal := map[string]bool{StorageAccountName: true, StorageQueueURI: true, StorageTableURI: true,
		StorageClientID: true, AzureClientID: true, CustomHandlerPort: true, KeyVaultURL: true}
	declared := map[string]bool{}
	for _, s := range Settings {
		declared[s.Name] = true
		if !strings.Contains(string(readme), "| `"+s.Name+"` |") {
			t.Errorf("README settings table lacks %s", s.Name)
		}
		if _, ok := sample.Values[s.Name]; !ok && !notLocal[s.Name] {
			t.Errorf("local.settings.sample.json lacks %s", s.Name)
		}
	}
	for k := range sample.Values {
		if !declared[k] && k != "FUNCTIONS_WORKER_RUNTIME" {
			t.Errorf("local.settings.sample.json has %s, which the handler does not read", k)
		}
	}
}

// IOTPROV_MAX_DEQUEUE_COUNT's default must match host.json, or the last delivery is misjudged.
func TestMaxDequeueCountMatchesHostJSON(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "host.json"))
	if err != nil {
		t.Fatal(err)
	}
	var host struct {
		Extensions struct {
			Queues struct {
				MaxDequeueCount int `json:"maxDequeueCount"`
			} `json:"queues"`
		} `json:"extensions"`
	}
	if err := json.Unmarshal(b, &host); err != nil {
		t.Fatal(err)
	}
	c, err := Load(env(minimal()))
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxDequeueCount != host.Extensions.Queues.MaxDequeueCount {
		t.Errorf("%s default %d, host.json maxDequeueCount %d", MaxDequeueCount, c.MaxDequeueCount, host.Extensions.Queues.MaxDequeueCount)
	}
}
