// Package storageconn turns the Functions host's storage settings (AzureWebJobsStorage, as a
// connection string or identity-based) into Azure Tables and Queues service clients, with
// retry settings short enough that a dead storage endpoint is reported within seconds —
// the register endpoint must answer 503 quickly, not hang for the SDK's default minutes.
package storageconn

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
)

// Settings are the storage app settings: AzureWebJobsStorage (a connection string, including
// "UseDevelopmentStorage=true"), or identity-based AzureWebJobsStorage__accountName with
// optional AzureWebJobsStorage__queueServiceUri and AzureWebJobsStorage__tableServiceUri.
// ConnectionString wins when both are set, as in the Functions host.
type Settings struct {
	ConnectionString string
	AccountName      string
	QueueServiceURI  string
	TableServiceURI  string
}

// Retry bounds: three tries of at most 5 s each with short delays, so a request against an
// unreachable endpoint fails in a few seconds (connection refused fails instantly; a black
// hole costs at most the try timeouts). Storage calls are small; 5 s per try is generous.
var retry = policy.RetryOptions{
	MaxRetries:    2,
	TryTimeout:    5 * time.Second,
	RetryDelay:    200 * time.Millisecond,
	MaxRetryDelay: time.Second,
}

// maxIdleConnsPerHost is how many idle connections to one storage endpoint are kept for
// reuse. The SDK's default transport keeps 10, but one instance runs up to 512 provision
// invocations at once (host.json batchSize + newBatchThreshold) plus the device API's
// requests, each with a storage call in flight, and Azure Storage speaks HTTP/1.1: one
// request per connection at a time. With 10 kept, every burst beyond them dialled (and
// in Azure TLS-handshook) a new connection and closed it afterwards — 5-7 % of the
// handler's CPU in the bench's profile went to dialling Azurite alone.
const maxIdleConnsPerHost = 1024

// newHTTPClient is the transport the table and queue clients share: the SDK's defaults
// (proxy from the environment, TLS 1.2 or later, 90 s idle timeout) with a connection
// pool sized for the handler's concurrency.
func newHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 2 * maxIdleConnsPerHost // tables and queues
	tr.MaxIdleConnsPerHost = maxIdleConnsPerHost
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}
}

// Azurite's well-known development account (public; accepted only by the emulator), used
// for "UseDevelopmentStorage=true" exactly as the Functions host and the SDKs do.
const (
	devAccountName = "devstoreaccount1"
	devAccountKey  = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// maxConnStringLen bounds what we are willing to parse; real ones are a few hundred bytes.
const maxConnStringLen = 8 << 10

// Open returns the table and queue service clients. cred is used only for identity-based
// settings (nil is an error then). Errors name the setting at fault and never contain the
// account key or SAS.
func Open(s Settings, cred azcore.TokenCredential) (*aztables.ServiceClient, *azqueue.ServiceClient, error) {
	hc := newHTTPClient()
	topts := &aztables.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: retry, Transport: hc}}
	qopts := &azqueue.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: retry, Transport: hc}}

	if strings.TrimSpace(s.ConnectionString) != "" {
		cs, err := parseConnectionString(s.ConnectionString)
		if err != nil {
			return nil, nil, fmt.Errorf("AzureWebJobsStorage: %w", err)
		}
		return openShared(cs, topts, qopts)
	}

	if s.AccountName == "" {
		return nil, nil, errors.New("AzureWebJobsStorage: not set (set a connection string, or AzureWebJobsStorage__accountName for identity-based access)")
	}
	if !validAccountName(s.AccountName) {
		return nil, nil, errors.New("AzureWebJobsStorage__accountName: not a storage account name (3-24 lowercase letters and digits)")
	}
	if cred == nil {
		return nil, nil, errors.New("AzureWebJobsStorage__accountName: identity-based storage needs a credential (managed identity), none configured")
	}
	tableURL := "https://" + s.AccountName + ".table.core.windows.net/"
	if s.TableServiceURI != "" {
		u, err := serviceURL(s.TableServiceURI)
		if err != nil {
			return nil, nil, fmt.Errorf("AzureWebJobsStorage__tableServiceUri: %w", err)
		}
		tableURL = u
	}
	queueURL := "https://" + s.AccountName + ".queue.core.windows.net/"
	if s.QueueServiceURI != "" {
		u, err := serviceURL(s.QueueServiceURI)
		if err != nil {
			return nil, nil, fmt.Errorf("AzureWebJobsStorage__queueServiceUri: %w", err)
		}
		queueURL = u
	}
	tc, err := aztables.NewServiceClient(tableURL, cred, topts)
	if err != nil {
		return nil, nil, fmt.Errorf("AzureWebJobsStorage__tableServiceUri: %w", err)
	}
	qc, err := azqueue.NewServiceClient(queueURL, cred, qopts)
	if err != nil {
		return nil, nil, fmt.Errorf("AzureWebJobsStorage__queueServiceUri: %w", err)
	}
	return tc, qc, nil
}

func openShared(cs connString, topts *aztables.ClientOptions, qopts *azqueue.ClientOptions) (*aztables.ServiceClient, *azqueue.ServiceClient, error) {
	if cs.sas != "" {
		// These errors are not wrapped: they could quote the URL, and with it the SAS.
		tc, err := aztables.NewServiceClientWithNoCredential(withQuery(cs.tableURL, cs.sas), topts)
		if err != nil {
			return nil, nil, errors.New("AzureWebJobsStorage: TableEndpoint with SharedAccessSignature is not usable")
		}
		qc, err := azqueue.NewServiceClientWithNoCredential(withQuery(cs.queueURL, cs.sas), qopts)
		if err != nil {
			return nil, nil, errors.New("AzureWebJobsStorage: QueueEndpoint with SharedAccessSignature is not usable")
		}
		return tc, qc, nil
	}
	tkey, err := aztables.NewSharedKeyCredential(cs.accountName, cs.accountKey)
	if err != nil {
		return nil, nil, errors.New("AzureWebJobsStorage: AccountKey is not valid base64")
	}
	qkey, err := azqueue.NewSharedKeyCredential(cs.accountName, cs.accountKey)
	if err != nil {
		return nil, nil, errors.New("AzureWebJobsStorage: AccountKey is not valid base64")
	}
	tc, err := aztables.NewServiceClientWithSharedKey(cs.tableURL, tkey, topts)
	if err != nil {
		return nil, nil, fmt.Errorf("AzureWebJobsStorage: table endpoint: %w", err)
	}
	qc, err := azqueue.NewServiceClientWithSharedKeyCredential(cs.queueURL, qkey, qopts)
	if err != nil {
		return nil, nil, fmt.Errorf("AzureWebJobsStorage: queue endpoint: %w", err)
	}
	return tc, qc, nil
}

// connString is a parsed storage connection string: the two endpoints we use and either a
// shared key or a SAS.
type connString struct {
	accountName, accountKey string
	sas                     string // without the leading '?'
	tableURL, queueURL      string // with a trailing '/'
}

// parseConnectionString parses "Key=Value;..." the way the Azure SDKs do, but once for
// both services and with errors that never echo the secret parts. Keys are matched
// case-insensitively (the .NET parser the Functions host uses does).
func parseConnectionString(s string) (connString, error) {
	if len(s) > maxConnStringLen {
		return connString{}, errors.New("connection string too long")
	}
	kv := map[string]string{}
	for _, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if !ok || k == "" {
			return connString{}, errors.New("malformed connection string (want Key=Value pairs separated by ';')")
		}
		if _, dup := kv[k]; dup {
			return connString{}, fmt.Errorf("connection string sets %q twice", k)
		}
		kv[k] = strings.TrimSpace(v)
	}

	if dev, ok := kv["usedevelopmentstorage"]; ok {
		if !strings.EqualFold(dev, "true") {
			return connString{}, errors.New("UseDevelopmentStorage must be true when present")
		}
		// The emulator's fixed endpoints; DevelopmentStorageProxyUri is a legacy knob we
		// do not support rather than silently ignore.
		if _, ok := kv["developmentstorageproxyuri"]; ok {
			return connString{}, errors.New("DevelopmentStorageProxyUri is not supported; use explicit QueueEndpoint/TableEndpoint")
		}
		return connString{
			accountName: devAccountName,
			accountKey:  devAccountKey,
			tableURL:    "http://127.0.0.1:10002/" + devAccountName + "/",
			queueURL:    "http://127.0.0.1:10001/" + devAccountName + "/",
		}, nil
	}

	cs := connString{accountName: kv["accountname"], accountKey: kv["accountkey"], sas: strings.TrimPrefix(kv["sharedaccesssignature"], "?")}
	switch {
	case cs.accountKey != "" && cs.sas != "":
		return connString{}, errors.New("connection string has both AccountKey and SharedAccessSignature")
	case cs.accountKey != "" && cs.accountName == "":
		return connString{}, errors.New("connection string has AccountKey but no AccountName")
	case cs.accountKey == "" && cs.sas == "":
		return connString{}, errors.New("connection string has neither AccountKey nor SharedAccessSignature")
	}
	if cs.accountName != "" && !validAccountName(cs.accountName) && kv["tableendpoint"] == "" {
		return connString{}, errors.New("AccountName is not a storage account name")
	}

	protocol := "https"
	if p, ok := kv["defaultendpointsprotocol"]; ok {
		if p != "http" && p != "https" {
			return connString{}, errors.New("DefaultEndpointsProtocol must be http or https")
		}
		protocol = p
	}
	suffix := "core.windows.net"
	if sfx, ok := kv["endpointsuffix"]; ok {
		if sfx == "" || strings.ContainsAny(sfx, "/?#@: ") {
			return connString{}, errors.New("EndpointSuffix is not a DNS suffix")
		}
		suffix = sfx
	}
	var err error
	for _, e := range []struct {
		key, service string
		dst          *string
	}{{"tableendpoint", "table", &cs.tableURL}, {"queueendpoint", "queue", &cs.queueURL}} {
		if v := kv[e.key]; v != "" {
			if *e.dst, err = serviceURL(v); err != nil {
				return connString{}, fmt.Errorf("%s: %w", e.key, err)
			}
			continue
		}
		if cs.accountName == "" {
			return connString{}, fmt.Errorf("connection string has neither AccountName nor %s", e.key)
		}
		*e.dst = protocol + "://" + cs.accountName + "." + e.service + "." + suffix + "/"
	}
	return cs, nil
}

// serviceURL checks an endpoint URL and gives it the trailing slash the SDKs expect.
func serviceURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", errors.New("not an http(s) service URL without query")
	}
	s := u.String()
	if !strings.HasSuffix(s, "/") {
		s += "/"
	}
	return s, nil
}

func withQuery(base, sas string) string { return base + "?" + sas }

// validAccountName: storage account names are 3-24 lowercase letters and digits.
func validAccountName(s string) bool {
	if len(s) < 3 || len(s) > 24 {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
