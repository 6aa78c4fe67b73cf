package secrets

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/iotprov/iotprov/internal/secrets/kvtest"
)

func newKVSource(t *testing.T, kv *kvtest.Server) *KeyVaultSource {
	t.Helper()
	src, err := NewKeyVaultSource(kv.URL(), kv.Credential(), kv.ClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func TestKeyVaultSource(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares the vault; read runs before the final read, to exercise rotation.
		setup     func(kv *kvtest.Server)
		between   func(kv *kvtest.Server)
		secret    string
		want      string
		wantErr   error
		wantOther bool   // an error that is neither ErrNotFound nor ErrInvalidName
		wantText  string // in the error message, when set
	}{
		{name: "ok/value", secret: "ca-bundle",
			setup: func(kv *kvtest.Server) {
				kv.Set("ca-bundle", "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
			},
			want: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"},
		{name: "ok/rotated value", secret: "sas-group-key",
			setup:   func(kv *kvtest.Server) { kv.Set("sas-group-key", "b2xk") },
			between: func(kv *kvtest.Server) { kv.Set("sas-group-key", "bmV3") },
			want:    "bmV3"},
		{name: "ok/value kept byte for byte", secret: "beam-psk",
			setup: func(kv *kvtest.Server) { kv.Set("beam-psk", " psk with spaces\n") },
			want:  " psk with spaces\n"},
		{name: "fail/not found", secret: "nope",
			setup:   func(kv *kvtest.Server) { kv.Set("other", "x") },
			wantErr: ErrNotFound},
		{name: "fail/deleted", secret: "data-key",
			setup:   func(kv *kvtest.Server) { kv.Set("data-key", "a2V5") },
			between: func(kv *kvtest.Server) { kv.Delete("data-key") },
			wantErr: ErrNotFound},
		{name: "fail/server 500", secret: "ca-bundle",
			setup:     func(kv *kvtest.Server) { kv.Set("ca-bundle", "x") },
			between:   func(kv *kvtest.Server) { kv.FailNext(http.StatusInternalServerError) },
			wantOther: true, wantText: `key vault secret "ca-bundle": HTTP 500 InternalError`},
		{name: "fail/forbidden", secret: "ca-bundle",
			setup:     func(kv *kvtest.Server) { kv.Set("ca-bundle", "x") },
			between:   func(kv *kvtest.Server) { kv.FailNext(http.StatusForbidden) },
			wantOther: true, wantText: "HTTP 403 Forbidden"},
		{name: "fail/invalid name", secret: "../ca-bundle",
			setup:   func(kv *kvtest.Server) {},
			wantErr: ErrInvalidName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv := kvtest.NewServer(t)
			tt.setup(kv)
			src := newKVSource(t, kv)
			ctx := context.Background()
			if tt.between != nil {
				// A first successful read, so the later one runs on an authorized
				// client and sees the server's change.
				if _, err := src.Secret(ctx, tt.secret); err != nil {
					t.Fatalf("first read: %v", err)
				}
				tt.between(kv)
			}
			got, err := src.Secret(ctx, tt.secret)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			case tt.wantOther:
				if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalidName) {
					t.Fatalf("err = %v, want a transient error", err)
				}
				if !strings.Contains(err.Error(), tt.wantText) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("err = %q, want one line containing %q", err, tt.wantText)
				}
				var re *azcore.ResponseError
				if !errors.As(err, &re) {
					t.Fatalf("err = %v does not carry the *azcore.ResponseError", err)
				}
			default:
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if string(got) != tt.want {
					t.Fatalf("got %q, want %q", got, tt.want)
				}
			}
			if errors.Is(tt.wantErr, ErrInvalidName) && kv.Requests() != 0 {
				t.Fatalf("an invalid name reached the vault (%d requests)", kv.Requests())
			}
		})
	}
}

func TestKeyVaultSourceChallenge(t *testing.T) {
	kv := kvtest.NewServer(t)
	kv.Set("ca-bundle", "pem")
	src := newKVSource(t, kv)
	ctx := context.Background()

	if _, err := src.Secret(ctx, "ca-bundle"); err != nil {
		t.Fatal(err)
	}
	// The first request went without a token, was challenged, and was sent again with
	// the token the credential issued for the challenge's scope and tenant.
	if got := kv.Requests(); got != 2 {
		t.Fatalf("requests after first read = %d, want 2 (challenge + authorized)", got)
	}
	if kv.Challenges() != 1 || kv.Authorized() != 1 {
		t.Fatalf("challenges = %d, authorized = %d, want 1 and 1", kv.Challenges(), kv.Authorized())
	}
	reqs := kv.Credential().TokenRequests()
	if len(reqs) != 1 {
		t.Fatalf("token requests = %d, want 1", len(reqs))
	}
	if len(reqs[0].Scopes) != 1 || reqs[0].Scopes[0] != "https://vault.azure.net/.default" {
		t.Fatalf("scopes = %v, want [https://vault.azure.net/.default]", reqs[0].Scopes)
	}
	if reqs[0].TenantID != kvtest.TenantID {
		t.Fatalf("tenant = %q, want %q from the challenge", reqs[0].TenantID, kvtest.TenantID)
	}

	// Later reads reuse the cached token: no challenge, no new token.
	if _, err := src.Secret(ctx, "ca-bundle"); err != nil {
		t.Fatal(err)
	}
	if kv.Requests() != 3 || kv.Challenges() != 1 || kv.Authorized() != 2 {
		t.Fatalf("requests = %d, challenges = %d, authorized = %d; want 3, 1, 2",
			kv.Requests(), kv.Challenges(), kv.Authorized())
	}
	if n := len(kv.Credential().TokenRequests()); n != 1 {
		t.Fatalf("token requests = %d, want 1", n)
	}
}

func TestKeyVaultSourceCredentials(t *testing.T) {
	tests := []struct {
		name  string
		token func(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error)
	}{
		{name: "fail/credential error", token: func(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
			return azcore.AccessToken{}, errors.New("no managed identity endpoint")
		}},
		{name: "fail/token rejected", token: func(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
			return azcore.AccessToken{Token: "forged", ExpiresOn: time.Now().Add(time.Hour)}, nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv := kvtest.NewServer(t)
			kv.Set("ca-bundle", "pem")
			kv.Credential().GetTokenFunc = tt.token
			_, err := newKVSource(t, kv).Secret(context.Background(), "ca-bundle")
			if err == nil || errors.Is(err, ErrNotFound) {
				t.Fatalf("err = %v, want a transient error", err)
			}
			if kv.Authorized() != 0 {
				t.Fatalf("authorized requests = %d, want 0", kv.Authorized())
			}
		})
	}
}

func TestKeyVaultSourceRetriesTransientFailure(t *testing.T) {
	kv := kvtest.NewServer(t)
	kv.Set("ca-bundle", "pem")
	// The SDK's own retry policy, with a short delay: a single 503 is absorbed.
	opts := kv.ClientOptions()
	opts.Retry = policy.RetryOptions{MaxRetries: 2, RetryDelay: time.Millisecond, MaxRetryDelay: 5 * time.Millisecond}
	src, err := NewKeyVaultSource(kv.URL(), kv.Credential(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Secret(context.Background(), "ca-bundle"); err != nil {
		t.Fatal(err)
	}
	before := kv.Requests()
	kv.FailNext(http.StatusServiceUnavailable)
	got, err := src.Secret(context.Background(), "ca-bundle")
	if err != nil || string(got) != "pem" {
		t.Fatalf("got %q, %v; want pem after one retry", got, err)
	}
	if n := kv.Requests() - before; n != 2 {
		t.Fatalf("requests for the read = %d, want 2 (503 + retry)", n)
	}
}

// TestCachedKeyVault is the benchmark's question in miniature: how many Key Vault reads
// per device. Many devices within a TTL cost one read; a rotation is seen after the TTL.
func TestCachedKeyVault(t *testing.T) {
	kv := kvtest.NewServer(t)
	kv.Set("ca-bundle", "v1")
	clock := newFakeClock()
	c := NewCached(newKVSource(t, kv), 10*time.Minute, clock.Now)
	ctx := context.Background()
	for range 100 {
		if v, err := c.Secret(ctx, "ca-bundle"); err != nil || string(v) != "v1" {
			t.Fatalf("got %q, %v", v, err)
		}
	}
	if c.Fetches() != 1 || kv.Authorized() != 1 {
		t.Fatalf("fetches = %d, vault reads = %d, want 1 and 1", c.Fetches(), kv.Authorized())
	}
	kv.Set("ca-bundle", "v2")
	clock.Advance(10 * time.Minute)
	if v, err := c.Secret(ctx, "ca-bundle"); err != nil || string(v) != "v2" {
		t.Fatalf("after rotation got %q, %v", v, err)
	}
	// Key Vault blips after the next TTL: the cached value keeps provisioning going.
	clock.Advance(10 * time.Minute)
	kv.FailNext(http.StatusInternalServerError)
	if v, err := c.Secret(ctx, "ca-bundle"); err != nil || string(v) != "v2" {
		t.Fatalf("during outage got %q, %v; want stale v2", v, err)
	}
	// A deleted secret is reported, not masked.
	kv.Delete("ca-bundle")
	clock.Advance(10 * time.Minute)
	if _, err := c.Secret(ctx, "ca-bundle"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete err = %v, want ErrNotFound", err)
	}
}

func TestNewKeyVaultSourceArgs(t *testing.T) {
	kv := kvtest.NewServer(t)
	tests := []struct {
		name string
		url  string
		cred azcore.TokenCredential
		ok   bool
	}{
		{name: "ok/url and credential", url: kv.URL(), cred: kv.Credential(), ok: true},
		{name: "fail/empty url", url: "", cred: kv.Credential()},
		{name: "fail/nil credential", url: kv.URL(), cred: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewKeyVaultSource(tt.url, tt.cred, &azsecrets.ClientOptions{})
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestNewAzureCredential(t *testing.T) {
	// Only construction is tested: getting a token needs Azure (IMDS or a CLI login).
	t.Run("ok/user-assigned managed identity", func(t *testing.T) {
		c, err := NewAzureCredential("11111111-2222-3333-4444-555555555555")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.(*azidentity.ManagedIdentityCredential); !ok {
			t.Fatalf("got %T, want *azidentity.ManagedIdentityCredential", c)
		}
	})
	t.Run("ok/default chain", func(t *testing.T) {
		c, err := NewAzureCredential("")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.(*azidentity.DefaultAzureCredential); !ok {
			t.Fatalf("got %T, want *azidentity.DefaultAzureCredential", c)
		}
	})
}

// Production passes nil options; the SDK's default retries (no per-try timeout,
// Retry-After waits up to 60 s) would let a stalled vault hold a refresh for minutes.
func TestKeyVaultClientOptions(t *testing.T) {
	t.Run("ok/nil gets bounded retries", func(t *testing.T) {
		r := clientOptions(nil).Retry
		if r.MaxRetries != 2 || r.TryTimeout != 5*time.Second || r.RetryDelay != 200*time.Millisecond ||
			r.MaxRetryDelay != 2*time.Second {
			t.Fatalf("retry = %+v, want 2 retries, 5s per try, 200ms-2s delays", r)
		}
		// The worst case for a dead vault: every try times out, plus the delays.
		worst := time.Duration(r.MaxRetries+1)*r.TryTimeout + time.Duration(r.MaxRetries)*r.MaxRetryDelay
		if worst > 20*time.Second {
			t.Fatalf("a dead vault could take %s to report", worst)
		}
	})
	t.Run("ok/given options are used as is", func(t *testing.T) {
		opts := &azsecrets.ClientOptions{}
		opts.Retry = policy.RetryOptions{MaxRetries: -1}
		if got := clientOptions(opts); got != opts || got.Retry.MaxRetries != -1 {
			t.Fatalf("clientOptions changed the caller's options: %+v", got.Retry)
		}
	})
	t.Run("ok/nil options construct a client", func(t *testing.T) {
		kv := kvtest.NewServer(t)
		if _, err := NewKeyVaultSource(kv.URL(), kv.Credential(), nil); err != nil {
			t.Fatal(err)
		}
	})
}
