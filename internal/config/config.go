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
	ListenAddr           = "IOTPROV_LISTEN_ADDR"
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
	{AuthMethods, "sas", "Enabled device authentication methods, comma-separated."},
	{SASMaxTTL, "24h", "How far in the future a SAS token's expiry (se) may be."},
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
	{ListenAddr, "127.0.0.1:7071", "Local runner only: the address of the device API."},
	{LogLevel, "info", "debug, info, warn or error."},
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
	DeviceIDTemplate string

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
	LogLevel             string
}

// StorageConfig is either a connection string or identity-based settings.
type StorageConfig struct {
	ConnectionString, AccountName, QueueServiceURI, TableServiceURI, ClientID string
}

// KnownAuthMethods are the methods the handler can enable.
var KnownAuthMethods = []string{"sas"}

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
		DeviceIDTemplate:     l.str(DeviceIDTemplate),
		DPSEndpoint:          l.str(DPSEndpoint),
		DPSIDScope:           l.required(DPSIDScope),
		DPSCAFile:            l.str(DPSCAFile),
		IoTHubRootCAFile:     l.str(IoTHubRootCAFile),
		KeyAlgorithm:         l.oneOf(KeyAlgorithm, "ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072"),
		CertValidity:         l.duration(CertValidity, time.Hour, 30*365*24*time.Hour),
		KeyRetention:         l.duration(KeyRetention, time.Minute, 365*24*time.Hour),
		OperationRetention:   l.duration(OperationRetention, time.Hour, 10*365*24*time.Hour),
		RegistrationInterval: l.duration(RegistrationInterval, 0, 365*24*time.Hour),
		MaxDequeueCount:      l.integer(MaxDequeueCount, 1, 100),
		MaxAttempts:          l.integer(MaxAttempts, 1, 100000),
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

// secretName checks Key Vault's secret-name rules, which the file source shares.
func (l *loader) secretName(name string) string {
	v := l.str(name)
	if v == "" || len(v) > 127 || strings.Trim(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
		l.fail(name, "not a Key Vault secret name (1-127 letters, digits, dashes): %q", v)
	}
	return v
}
