// Package config turns the app settings (environment variables) into one validated
// struct. Every setting the handler reads is declared once, in Settings, so the README,
// local.settings.sample.json and infra/ can be checked against the same list. A bad or
// missing setting fails Load with one line that names it.
package config

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/iotprov/iotprov/internal/secrets"
)

// Setting describes one app setting.
type Setting struct {
	Name    string
	Default string // "" when there is none
	Doc     string
}

// Names of the settings, so code never spells them twice.
const (
	StorageConnection    = "AzureWebJobsStorage"
	StorageAccountName   = "AzureWebJobsStorage__accountName"
	StorageQueueURI      = "AzureWebJobsStorage__queueServiceUri"
	StorageTableURI      = "AzureWebJobsStorage__tableServiceUri"
	StorageClientID      = "AzureWebJobsStorage__clientId"
	AzureClientID        = "AZURE_CLIENT_ID"
	CustomHandlerPort    = "FUNCTIONS_CUSTOMHANDLER_PORT"
	SecretSource         = "IOTPROV_SECRET_SOURCE"
	KeyVaultURL          = "IOTPROV_KEYVAULT_URL"
	SecretsDir           = "IOTPROV_SECRETS_DIR"
	SecretCacheTTL       = "IOTPROV_SECRET_CACHE_TTL"
	CASecret             = "IOTPROV_CA_SECRET"
	DataKeySecret        = "IOTPROV_DATA_KEY_SECRET"
	SASGroupKeySecret    = "IOTPROV_SAS_GROUP_KEY_SECRET"
	AuthMethods          = "IOTPROV_AUTH_METHODS"
	SASMaxTTL            = "IOTPROV_SAS_MAX_TTL"
	DeviceIDTemplate     = "IOTPROV_DEVICE_ID_TEMPLATE"
	DPSEndpoint          = "IOTPROV_DPS_ENDPOINT"
	DPSIDScope           = "IOTPROV_DPS_ID_SCOPE"
	DPSCAFile            = "IOTPROV_DPS_CA_FILE"
	IoTHubRootCAFile     = "IOTPROV_IOTHUB_ROOT_CA_FILE"
	KeyAlgorithm         = "IOTPROV_KEY_ALGORITHM"
	CertValidity         = "IOTPROV_CERT_VALIDITY"
	KeyRetention         = "IOTPROV_KEY_RETENTION"
	OperationRetention   = "IOTPROV_OPERATION_RETENTION"
	RegistrationInterval = "IOTPROV_REGISTRATION_MIN_INTERVAL"
	MaxDequeueCount      = "IOTPROV_MAX_DEQUEUE_COUNT"
	MaxAttempts          = "IOTPROV_MAX_ATTEMPTS"
	StallAfter           = "IOTPROV_STALL_AFTER"
	PollInterval         = "IOTPROV_POLL_INTERVAL"
	ListenAddr           = "IOTPROV_LISTEN_ADDR"
	SASKeyGroups         = "IOTPROV_SAS_KEY_GROUPS"
	BeamPSKSecret        = "IOTPROV_BEAM_PSK_SECRET"
	BeamIdentity         = "IOTPROV_BEAM_IDENTITY"
	BeamMaxSkew          = "IOTPROV_BEAM_MAX_SKEW"
	JWTKeysSecret        = "IOTPROV_JWT_KEYS_SECRET"
	JWTKeysFile          = "IOTPROV_JWT_KEYS_FILE"
	JWTIssuer            = "IOTPROV_JWT_ISSUER"
	JWTAudience          = "IOTPROV_JWT_AUDIENCE"
	JWTIdentityClaim     = "IOTPROV_JWT_IDENTITY_CLAIM"
	JWTLeeway            = "IOTPROV_JWT_LEEWAY"
	X509CASecret         = "IOTPROV_X509_CA_SECRET"
	X509TrustForwarded   = "IOTPROV_X509_TRUST_FORWARDED_CERT"
	TLSListenAddr        = "IOTPROV_TLS_LISTEN_ADDR"
	TLSCertFile          = "IOTPROV_TLS_CERT_FILE"
	TLSKeyFile           = "IOTPROV_TLS_KEY_FILE"
	DevicePolicy         = "IOTPROV_DEVICE_POLICY"
	LogLevel             = "IOTPROV_LOG_LEVEL"
)

// Settings is every app setting the handler reads, in README order.
var Settings = []Setting{
	{StorageConnection, "", "Storage connection string (Azurite locally: the local stack writes it). Either this or " + StorageAccountName + "."},
	{StorageAccountName, "", "Identity-based storage: the account name (Azure). Tables and queues use https://<name>.{table,queue}.core.windows.net."},
	{StorageQueueURI, "", "Identity-based storage: queue service URI, overrides the one derived from the account name."},
	{StorageTableURI, "", "Identity-based storage: table service URI, overrides the one derived from the account name."},
	{StorageClientID, "", "Client ID of the user-assigned managed identity used for storage (the Functions host reads it too)."},
	{AzureClientID, "", "Client ID of the user-assigned managed identity used for Key Vault; empty uses DefaultAzureCredential."},
	{CustomHandlerPort, "", "Set by the Functions host. When present the handler serves the host on 127.0.0.1:<port>; when absent it runs as the local runner."},
	{SecretSource, "keyvault", "Where secrets come from: keyvault or file."},
	{KeyVaultURL, "", "Key Vault URL (https://<vault>.vault.azure.net/); required when " + SecretSource + "=keyvault."},
	{SecretsDir, ".local/secrets", "Folder of secret files (one file per secret name) when " + SecretSource + "=file."},
	{SecretCacheTTL, "5m", "How long a secret is cached in memory; a rotated secret is picked up after this."},
	{CASecret, "iotprov-ca", "Secret holding the signing CA: PEM certificate chain (signing CA first) and its PKCS#8 private key."},
	{DataKeySecret, "iotprov-data-key", "Secret holding the data key (base64 of 32 bytes) that encrypts private keys at rest."},
	{SASGroupKeySecret, "sas-group-key", "Secret holding the default SAS group key (base64), as in a DPS enrollment group."},
	{AuthMethods, "sas", "Enabled device authentication methods, comma-separated, tried in this order: sas, beam, jwt, x509."},
	{SASMaxTTL, "24h", "How far in the future a SAS token's expiry (se) may be."},
	{SASKeyGroups, "", "More SAS key groups: skn=secret-name pairs, comma-separated (e.g. factory-a=sas-group-key-a); each secret holds a base64 group key."},
	{BeamPSKSecret, "beam-psk", "Secret holding the SORACOM Beam pre-shared key (text) that signs the x-soracom-* headers."},
	{BeamIdentity, "imsi", "What identifies a Beam device: imsi (x-soracom-imsi) or sim-id (x-soracom-sim-id)."},
	{BeamMaxSkew, "5m", "How far x-soracom-timestamp may be from now, either way; older requests are refused as replays."},
	{JWTKeysSecret, "jwt-keys", "Secret holding the JWT verification keys: a JWKS document or a PEM bundle of public keys or certificates."},
	{JWTKeysFile, "", "A file with the JWT verification keys instead of the secret (JWKS or PEM)."},
	{JWTIssuer, "", "Required iss of device JWTs (https://soracom.io for SORACOM Endorse); required when jwt is enabled."},
	{JWTAudience, "", "Required aud of device JWTs (soracom-endorse-audience for SORACOM Endorse); required when jwt is enabled."},
	{JWTIdentityClaim, "sub", "Dotted path of the JWT claim that is the identity, e.g. sub or soracom-endorse-claim.imsi."},
	{JWTLeeway, "1m", "Clock-skew leeway for the JWT exp, nbf and iat claims."},
	{X509CASecret, "x509-bootstrap-ca", "Secret holding the manufacturer CA bundle (PEM) that bootstrap client certificates must chain to."},
	{X509TrustForwarded, "false", "true to believe the X-ARR-ClientCert header (only behind App Service with client certificates enabled)."},
	{TLSListenAddr, "", "Local runner only: an extra HTTPS address for the device API that asks for a client certificate (x509); empty disables it."},
	{TLSCertFile, "", "Local runner only: PEM certificate chain of the HTTPS listener."},
	{TLSKeyFile, "", "Local runner only: PEM private key of the HTTPS listener."},
	{DevicePolicy, "off", "Device policy from the devices table: off, open (listed devices may be disabled or get their own interval) or allowlist (only listed devices)."},
	{DeviceIDTemplate, "{id}", "Template turning the authenticated identity into the device ID, e.g. myDevice-{id}."},
	{DPSEndpoint, "global.azure-devices-provisioning.net", "DPS device endpoint (host[:port])."},
	{DPSIDScope, "", "DPS ID scope (required)."},
	{DPSCAFile, "", "Extra PEM roots trusted for the DPS endpoint's TLS (the local DPS emulator); empty uses the system roots only."},
	{IoTHubRootCAFile, "", "PEM bundle returned to devices as rootCaCertificate; empty uses DigiCert Global Root G2 + Microsoft RSA Root CA 2017."},
	{KeyAlgorithm, "ecdsa-p256", "Algorithm of server-generated device keys: ecdsa-p256, ecdsa-p384, rsa-2048 or rsa-3072."},
	{CertValidity, "8760h", "Validity of device certificates (never past the CA's)."},
	{KeyRetention, "24h", "How long a server-generated private key is kept (encrypted) after the operation ends."},
	{OperationRetention, "720h", "How long finished operations are kept before purge deletes them."},
	{RegistrationInterval, "1m", "Minimum time between two new registrations of one device (429 otherwise); 0 disables."},
	{MaxDequeueCount, "5", "Must equal host.json extensions.queues.maxDequeueCount: on the last delivery a failing operation is marked failed instead of left to the poison queue."},
	{MaxAttempts, "100", "How many times one operation may be deferred by transient DPS or Key Vault errors before it fails."},
	// StallAfter's floor: below the worker's DPS timeout (2 min) plus a deferral, a sweep
	// would re-queue (and charge an attempt to) operations that are being worked on.
	{StallAfter, "10m", "An operation in flight that has not moved for this long is re-queued by the purge timer (an attempt each time); at least 3m, above the 2 min given to DPS."},
	{PollInterval, "2s", "Retry-After told to a device while its operation is in flight (whole seconds, 1s to 60s): about the usual time to assignment, so most devices find their credentials at the first poll."},
	{ListenAddr, "127.0.0.1:7071", "Local runner only: the address of the device API."},
	{LogLevel, "info", "debug, info, warn or error; debug adds a line per DPS registration, secret fetch and (local runner) provision invocation."},
}

// Config is the validated configuration.
type Config struct {
	Storage StorageConfig

	Functions         bool   // started by the Functions host
	CustomHandlerPort string // when Functions
	ListenAddr        string // local runner

	SecretSource   string // "keyvault" or "file"
	KeyVaultURL    string
	AzureClientID  string
	SecretsDir     string
	SecretCacheTTL time.Duration
	CASecret       string
	DataKeySecret  string
	SASGroupKey    string

	AuthMethods      []string
	SASMaxTTL        time.Duration
	SASKeyGroups     string // skn=secret pairs, parsed by auth.ParseKeyGroups
	DeviceIDTemplate string

	BeamPSKSecret string
	BeamIdentity  string
	BeamMaxSkew   time.Duration

	JWTKeysSecret    string
	JWTKeysFile      string
	JWTIssuer        string
	JWTAudience      string
	JWTIdentityClaim string
	JWTLeeway        time.Duration

	X509CASecret       string
	X509TrustForwarded bool

	TLSListenAddr string
	TLSCertFile   string
	TLSKeyFile    string

	DevicePolicy string

	DPSEndpoint      string
	DPSIDScope       string
	DPSCAFile        string
	IoTHubRootCAFile string

	KeyAlgorithm         string
	CertValidity         time.Duration
	KeyRetention         time.Duration
	OperationRetention   time.Duration
	RegistrationInterval time.Duration
	MaxDequeueCount      int
	MaxAttempts          int
	StallAfter           time.Duration
	PollInterval         time.Duration
	LogLevel             string
}

// StorageConfig is either a connection string or identity-based settings.
type StorageConfig struct {
	ConnectionString, AccountName, QueueServiceURI, TableServiceURI, ClientID string
}

// KnownAuthMethods are the methods the handler can enable.
var KnownAuthMethods = []string{"sas", "beam", "jwt", "x509"}

// Load reads and validates the settings through getenv (os.Getenv in production).
func Load(getenv func(string) string) (*Config, error) {
	l := loader{getenv: getenv}
	c := &Config{
		Storage: StorageConfig{
			ConnectionString: l.str(StorageConnection),
			AccountName:      l.str(StorageAccountName),
			QueueServiceURI:  l.str(StorageQueueURI),
			TableServiceURI:  l.str(StorageTableURI),
			ClientID:         l.str(StorageClientID),
		},
		CustomHandlerPort:    l.str(CustomHandlerPort),
		ListenAddr:           l.str(ListenAddr),
		SecretSource:         l.oneOf(SecretSource, "keyvault", "file"),
		KeyVaultURL:          l.str(KeyVaultURL),
		AzureClientID:        l.str(AzureClientID),
		SecretsDir:           l.str(SecretsDir),
		SecretCacheTTL:       l.duration(SecretCacheTTL, time.Second, 24*time.Hour),
		CASecret:             l.secretName(CASecret),
		DataKeySecret:        l.secretName(DataKeySecret),
		SASGroupKey:          l.secretName(SASGroupKeySecret),
		AuthMethods:          l.list(AuthMethods, KnownAuthMethods),
		SASMaxTTL:            l.duration(SASMaxTTL, time.Minute, 365*24*time.Hour),
		SASKeyGroups:         l.str(SASKeyGroups),
		DeviceIDTemplate:     l.str(DeviceIDTemplate),
		BeamPSKSecret:        l.secretName(BeamPSKSecret),
		BeamIdentity:         l.oneOf(BeamIdentity, "imsi", "sim-id"),
		BeamMaxSkew:          l.duration(BeamMaxSkew, time.Second, time.Hour),
		JWTKeysSecret:        l.secretName(JWTKeysSecret),
		JWTKeysFile:          l.str(JWTKeysFile),
		JWTIssuer:            l.str(JWTIssuer),
		JWTAudience:          l.str(JWTAudience),
		JWTIdentityClaim:     l.claimPath(JWTIdentityClaim),
		JWTLeeway:            l.duration(JWTLeeway, 0, 10*time.Minute),
		X509CASecret:         l.secretName(X509CASecret),
		X509TrustForwarded:   l.boolean(X509TrustForwarded),
		TLSListenAddr:        l.str(TLSListenAddr),
		TLSCertFile:          l.str(TLSCertFile),
		TLSKeyFile:           l.str(TLSKeyFile),
		DevicePolicy:         l.oneOf(DevicePolicy, "off", "open", "allowlist"),
		DPSEndpoint:          l.str(DPSEndpoint),
		DPSIDScope:           l.required(DPSIDScope),
		DPSCAFile:            l.str(DPSCAFile),
		IoTHubRootCAFile:     l.str(IoTHubRootCAFile),
		KeyAlgorithm:         l.oneOf(KeyAlgorithm, "ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072"),
		CertValidity:         l.duration(CertValidity, time.Hour, 30*365*24*time.Hour),
		KeyRetention:         l.duration(KeyRetention, time.Second, 365*24*time.Hour),
		OperationRetention:   l.duration(OperationRetention, time.Second, 10*365*24*time.Hour),
		RegistrationInterval: l.duration(RegistrationInterval, 0, 365*24*time.Hour),
		MaxDequeueCount:      l.integer(MaxDequeueCount, 1, 100),
		MaxAttempts:          l.integer(MaxAttempts, 1, 100000),
		StallAfter:           l.duration(StallAfter, 3*time.Minute, 7*24*time.Hour),
		PollInterval:         l.duration(PollInterval, time.Second, time.Minute),
		LogLevel:             l.oneOf(LogLevel, "debug", "info", "warn", "error"),
	}
	c.Functions = c.CustomHandlerPort != ""
	if l.err != nil {
		return nil, l.err
	}
	switch {
	case c.Storage.ConnectionString == "" && c.Storage.AccountName == "":
		return nil, fmt.Errorf("%s: set a storage connection string, or %s for identity-based access", StorageConnection, StorageAccountName)
	case c.SecretSource == "keyvault" && !strings.HasPrefix(c.KeyVaultURL, "https://"):
		return nil, fmt.Errorf("%s: must be the vault's https:// URL when %s=keyvault (got %q)", KeyVaultURL, SecretSource, c.KeyVaultURL)
	case c.SecretSource == "file" && c.SecretsDir == "":
		return nil, fmt.Errorf("%s: must name a folder when %s=file", SecretsDir, SecretSource)
	case c.KeyRetention > c.OperationRetention:
		return nil, fmt.Errorf("%s: must not be longer than %s", KeyRetention, OperationRetention)
	case c.Enabled("jwt") && c.JWTIssuer == "":
		return nil, fmt.Errorf("%s: is required when %s includes jwt", JWTIssuer, AuthMethods)
	case c.Enabled("jwt") && c.JWTAudience == "":
		return nil, fmt.Errorf("%s: is required when %s includes jwt", JWTAudience, AuthMethods)
	case c.TLSListenAddr != "" && !c.Functions && (c.TLSCertFile == "" || c.TLSKeyFile == ""):
		return nil, fmt.Errorf("%s: %s and %s are required with an HTTPS listener", TLSCertFile, TLSCertFile, TLSKeyFile)
	}
	if c.TLSListenAddr != "" && !c.Functions {
		if _, _, err := net.SplitHostPort(c.TLSListenAddr); err != nil {
			return nil, fmt.Errorf("%s: not host:port: %q", TLSListenAddr, c.TLSListenAddr)
		}
	}
	if c.Functions {
		if p, err := strconv.Atoi(c.CustomHandlerPort); err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("%s: not a port number: %q", CustomHandlerPort, c.CustomHandlerPort)
		}
	} else if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		return nil, fmt.Errorf("%s: not host:port: %q", ListenAddr, c.ListenAddr)
	}
	return c, nil
}

// Enabled reports whether the authentication method m is enabled.
func (c *Config) Enabled(m string) bool {
	for _, x := range c.AuthMethods {
		if x == m {
			return true
		}
	}
	return false
}

// loader collects the first error so Load reads as a list of settings.
type loader struct {
	getenv func(string) string
	err    error
}

func (l *loader) fail(name, format string, args ...any) {
	if l.err == nil {
		l.err = errors.New(name + ": " + fmt.Sprintf(format, args...))
	}
}

// str returns the setting or its default.
func (l *loader) str(name string) string {
	if v := strings.TrimSpace(l.getenv(name)); v != "" {
		return v
	}
	for _, s := range Settings {
		if s.Name == name {
			return s.Default
		}
	}
	panic("config: undeclared setting " + name) // a programming error, caught by tests
}

func (l *loader) required(name string) string {
	v := l.str(name)
	if v == "" {
		l.fail(name, "is required")
	}
	return v
}

func (l *loader) oneOf(name string, allowed ...string) string {
	v := strings.ToLower(l.str(name))
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	l.fail(name, "must be one of %s (got %q)", strings.Join(allowed, ", "), v)
	return v
}

func (l *loader) duration(name string, min, max time.Duration) time.Duration {
	raw := l.str(name)
	d, err := time.ParseDuration(raw)
	if err != nil {
		l.fail(name, "not a duration like 90s, 15m or 24h: %q", raw)
		return 0
	}
	if d < min || d > max {
		l.fail(name, "must be between %s and %s (got %s)", min, max, d)
	}
	return d
}

func (l *loader) integer(name string, min, max int) int {
	raw := l.str(name)
	n, err := strconv.Atoi(raw)
	if err != nil || n < min || n > max {
		l.fail(name, "must be a whole number from %d to %d (got %q)", min, max, raw)
	}
	return n
}

func (l *loader) list(name string, known []string) []string {
	var out []string
	for _, item := range strings.Split(l.str(name), ",") {
		item = strings.ToLower(strings.TrimSpace(item))
		if item == "" {
			continue
		}
		ok := false
		for _, k := range known {
			ok = ok || k == item
		}
		if !ok {
			l.fail(name, "unknown method %q (known: %s)", item, strings.Join(known, ", "))
		}
		out = append(out, item)
	}
	if len(out) == 0 {
		l.fail(name, "enable at least one of %s", strings.Join(known, ", "))
	}
	return out
}

func (l *loader) boolean(name string) bool {
	raw := l.str(name)
	b, err := strconv.ParseBool(raw)
	if err != nil {
		l.fail(name, "must be true or false (got %q)", raw)
	}
	return b
}

// claimPath checks a dotted JWT claim path: non-empty segments.
func (l *loader) claimPath(name string) string {
	v := l.str(name)
	for seg := range strings.SplitSeq(v, ".") {
		if seg == "" {
			l.fail(name, "not a dotted claim path like sub or soracom-endorse-claim.imsi: %q", v)
			break
		}
	}
	return v
}

// secretName checks Key Vault's secret-name rules, which the file source shares, with the
// sources' own check (secrets.CheckName), so a name accepted here is never refused later.
func (l *loader) secretName(name string) string {
	v := l.str(name)
	if err := secrets.CheckName(v); err != nil {
		l.fail(name, "%v", err) // "invalid secret name: ..." with the rule broken
	}
	return v
}
