package secrets

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// KeyVaultSource reads the latest version of a secret with the real azsecrets client.
type KeyVaultSource struct {
	client *azsecrets.Client
}

var _ Source = (*KeyVaultSource)(nil)

// kvRetry bounds a Key Vault read, as storageconn bounds storage calls: three tries of at
// most 5 s each with short delays, so a dead or stalled vault is reported in seconds
// (about 16 s at worst, not counting a token request) rather than minutes. The SDK's
// defaults (no per-try timeout, Retry-After honoured up to 60 s) would hold the one caller
// running Cached's refresh for minutes; with MaxRetryDelay at 2 s a longer Retry-After
// (throttling) ends the read at once, and Cached serves the stale value instead.
var kvRetry = policy.RetryOptions{
	MaxRetries:    2,
	TryTimeout:    5 * time.Second,
	RetryDelay:    200 * time.Millisecond,
	MaxRetryDelay: 2 * time.Second,
}

// NewKeyVaultSource returns a source reading secrets from the vault at vaultURL
// (https://<name>.vault.azure.net/). opts may be nil, which means the SDK's defaults
// except for retries, bounded by kvRetry; tests pass a transport that trusts their server
// and DisableChallengeResourceVerification for a loopback vault. Non-nil opts are used as
// given, retries included.
func NewKeyVaultSource(vaultURL string, cred azcore.TokenCredential, opts *azsecrets.ClientOptions) (*KeyVaultSource, error) {
	if vaultURL == "" {
		return nil, errors.New("key vault URL is empty")
	}
	if cred == nil {
		return nil, errors.New("key vault credential is nil")
	}
	c, err := azsecrets.NewClient(vaultURL, cred, clientOptions(opts))
	if err != nil {
		return nil, fmt.Errorf("key vault client for %s: %w", vaultURL, err)
	}
	return &KeyVaultSource{client: c}, nil
}

// clientOptions returns opts, or when it is nil the SDK's defaults with kvRetry.
func clientOptions(opts *azsecrets.ClientOptions) *azsecrets.ClientOptions {
	if opts != nil {
		return opts
	}
	return &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: kvRetry}}
}

// Secret returns the value of the latest version of name. A 404 from Key Vault (secret
// absent, or deleted) is ErrNotFound; everything else, including 403 for a disabled
// secret or a missing role assignment, is returned as is for the caller to treat as
// transient, because it can be fixed without restarting the service.
func (s *KeyVaultSource) Secret(ctx context.Context, name string) ([]byte, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	// An empty version asks Key Vault for the latest one, so a rotation is a new version
	// and needs no configuration change here.
	resp, err := s.client.GetSecret(ctx, name, "", nil)
	if err != nil {
		var re *azcore.ResponseError
		if !errors.As(err, &re) {
			return nil, fmt.Errorf("key vault secret %q: %w", name, err)
		}
		if re.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("key vault secret %q (%s): %w", name, re.ErrorCode, ErrNotFound)
		}
		return nil, &vaultError{name: name, resp: re}
	}
	if resp.Value == nil {
		return nil, fmt.Errorf("key vault secret %q: response has no value", name)
	}
	return []byte(*resp.Value), nil
}

// NewAzureCredential returns the credential iotprov uses in Azure: a user-assigned
// ManagedIdentityCredential when clientID != "", else DefaultAzureCredential.
//
// The Function App runs as a user-assigned identity; naming it explicitly avoids
// DefaultAzureCredential probing other credential types first (slow cold starts) and
// picking the wrong identity when more than one is attached.
func NewAzureCredential(clientID string) (azcore.TokenCredential, error) {
	if clientID != "" {
		c, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
			ID: azidentity.ClientID(clientID),
		})
		if err != nil {
			return nil, fmt.Errorf("managed identity credential: %w", err)
		}
		return c, nil
	}
	c, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, fmt.Errorf("default azure credential: %w", err)
	}
	return c, nil
}

// vaultError is a Key Vault error response in one line. azcore's ResponseError text is a
// multi-line dump of the response; logs here are one line per event. The ResponseError
// stays reachable with errors.As for callers that want the status.
type vaultError struct {
	name string
	resp *azcore.ResponseError
}

func (e *vaultError) Error() string {
	return fmt.Sprintf("key vault secret %q: HTTP %d %s", e.name, e.resp.StatusCode, e.resp.ErrorCode)
}

func (e *vaultError) Unwrap() error { return e.resp }
