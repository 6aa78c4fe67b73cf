// Package kvtest is a loopback Azure Key Vault for tests: an httptest TLS server that
// speaks the Key Vault secrets REST API the way the real azsecrets client uses it (GET
// of a secret, and SetSecret's PUT), including the bearer challenge (the first request
// carries no token and is answered 401 with WWW-Authenticate; the client then asks its
// credential for a token for the scope in the challenge). Tests in other packages use it
// to drive the real SDK end to end.
//
// Typical use:
//
//	kv := kvtest.NewServer(t)
//	kv.Set("ca-bundle", pem)
//	src, err := secrets.NewKeyVaultSource(kv.URL(), kv.Credential(), kv.ClientOptions())
package kvtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// Values the server puts in its challenge; tests assert the client followed them.
const (
	// TenantID is the tenant named in the challenge's authorization URL.
	TenantID = "00000000-0000-0000-0000-00000000c0de"
	// Resource is the challenge's resource; the client asks for Resource + "/.default".
	Resource = "https://vault.azure.net"
	// Scope is the token scope a Key Vault client requests after the challenge.
	Scope = Resource + "/.default"
)

// Server is a Key Vault secrets endpoint on 127.0.0.1. It is safe for concurrent use.
type Server struct {
	srv   *httptest.Server
	token string
	cred  *Credential

	mu         sync.Mutex
	secrets    map[string][]version // name -> versions, latest last
	failNext   []int
	requests   int
	challenges int
	authorized int
	puts       int
}

type version struct {
	id          string
	value       string
	contentType string
	created     time.Time
}

// NewServer starts a server that is closed when the test ends.
func NewServer(t testing.TB) *Server {
	t.Helper()
	s := &Server{token: randomHex(24), secrets: map[string][]version{}}
	s.cred = &Credential{GetTokenFunc: func(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
		return azcore.AccessToken{Token: s.token, ExpiresOn: time.Now().Add(time.Hour)}, nil
	}}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serveHTTP))
	t.Cleanup(s.srv.Close)
	return s
}

// URL is the vault URL to give the client, like https://127.0.0.1:PORT.
func (s *Server) URL() string { return s.srv.URL }

// Client is an *http.Client that trusts the server's certificate. It satisfies
// policy.Transporter, so it can be azcore.ClientOptions.Transport.
func (s *Server) Client() *http.Client { return s.srv.Client() }

// Credential returns the fake credential whose tokens the server accepts.
func (s *Server) Credential() *Credential { return s.cred }

// Token is the bearer token the server accepts (the one Credential issues by default).
func (s *Server) Token() string { return s.token }

// ClientOptions returns azsecrets options that work against this server: a transport
// trusting its certificate, challenge-resource verification off (the vault is 127.0.0.1,
// not *.vault.azure.net) and SDK retries off, so FailNext fails exactly one client call.
func (s *Server) ClientOptions() *azsecrets.ClientOptions {
	return &azsecrets.ClientOptions{
		ClientOptions: azcore.ClientOptions{
			Transport: s.Client(),
			Retry:     policy.RetryOptions{MaxRetries: -1},
		},
		DisableChallengeResourceVerification: true,
	}
}

// Set stores value as a new, latest version of name (a rotation when name exists).
func (s *Server) Set(name, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.secrets[name] = append(s.secrets[name], version{id: randomHex(16), value: value, created: time.Now()})
}

// Delete removes name and all its versions.
func (s *Server) Delete(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.secrets, name)
}

// FailNext makes the next request, whatever it is, fail with status and a Key
// Vault-shaped error body. Calls queue up: FailNext(500); FailNext(503) fails the next
// two requests in that order.
func (s *Server) FailNext(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = append(s.failNext, status)
}

// Requests is the number of requests received, challenges and failures included.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// Challenges is the number of requests answered 401 with a bearer challenge.
func (s *Server) Challenges() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.challenges
}

// Authorized is the number of requests that carried the server's token.
func (s *Server) Authorized() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.authorized
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++

	if len(s.failNext) > 0 {
		status := s.failNext[0]
		s.failNext = s.failNext[1:]
		writeError(w, status, failureCode(status), fmt.Sprintf("Injected failure %d.", status))
		return
	}

	// Key Vault challenges before it looks at anything else, including the path.
	switch auth := r.Header.Get("Authorization"); {
	case auth == "":
		s.challenge(w, "AKV10000: Request is missing a Bearer or PoP token.")
		return
	case auth != "Bearer "+s.token:
		s.challenge(w, "AKV10032: Invalid issuer.")
		return
	}
	s.authorized++

	if r.URL.Query().Get("api-version") == "" {
		writeError(w, http.StatusBadRequest, "BadParameter", "The api-version query parameter is required.")
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] != "secrets" || parts[1] == "" {
		writeError(w, http.StatusNotFound, "NotFound", "The requested resource was not found.")
		return
	}
	if r.Method == http.MethodPut && len(parts) == 2 {
		s.put(w, r, parts[1])
		return
	}
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "Only GET, and PUT of a secret name, are served by this test vault.")
		return
	}
	name, ver := parts[1], ""
	if len(parts) == 3 {
		ver = parts[2]
	}
	v, ok := s.lookup(name, ver)
	if !ok {
		id := name
		if ver != "" {
			id += "/" + ver
		}
		writeError(w, http.StatusNotFound, "SecretNotFound",
			fmt.Sprintf("A secret with (name/id) %s was not found in this key vault.", id))
		return
	}
	writeJSON(w, http.StatusOK, s.bundle(name, v))
}

// maxSecretValue is Key Vault's limit on a secret value (25 KiB).
const maxSecretValue = 25 << 10

// put stores the body's value as a new latest version of name, as SetSecret does: PUT
// /secrets/{name} with {"value", "contentType", "tags", "attributes"}. Called with s.mu
// held.
func (s *Server) put(w http.ResponseWriter, r *http.Request, name string) {
	if !validName(name) {
		writeError(w, http.StatusBadRequest, "BadParameter", "The secret name must be 1-127 characters of [0-9a-zA-Z-].")
		return
	}
	var body struct {
		Value       *string `json:"value"`
		ContentType string  `json:"contentType"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 2*maxSecretValue)).Decode(&body); err != nil || body.Value == nil {
		writeError(w, http.StatusBadRequest, "BadParameter", "The request body must be JSON with a string value.")
		return
	}
	if len(*body.Value) > maxSecretValue {
		writeError(w, http.StatusBadRequest, "BadParameter", "The secret value is larger than 25 KiB.")
		return
	}
	// Key Vault keeps the name as first written; a later PUT with other case adds a
	// version to the same secret.
	for n := range s.secrets {
		if strings.EqualFold(n, name) {
			name = n
		}
	}
	v := version{id: randomHex(16), value: *body.Value, contentType: body.ContentType, created: time.Now()}
	s.secrets[name] = append(s.secrets[name], v)
	s.puts++
	writeJSON(w, http.StatusOK, s.bundle(name, v))
}

// bundle is Key Vault's SecretBundle for one version.
func (s *Server) bundle(name string, v version) map[string]any {
	b := map[string]any{
		"value": v.value,
		"id":    fmt.Sprintf("%s/secrets/%s/%s", s.srv.URL, name, v.id),
		"attributes": map[string]any{
			"enabled":         true,
			"created":         v.created.Unix(),
			"updated":         v.created.Unix(),
			"recoveryLevel":   "Recoverable+Purgeable",
			"recoverableDays": 90,
		},
		"tags": map[string]string{},
	}
	if v.contentType != "" {
		b["contentType"] = v.contentType
	}
	return b
}

// validName is Key Vault's secret-name rule: 1-127 characters of [0-9a-zA-Z-].
func validName(name string) bool {
	if len(name) == 0 || len(name) > 127 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// Versions returns the values of every version of name, oldest first (nil when absent),
// so a test can check what a client wrote.
func (s *Server) Versions(name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n, vs := range s.secrets {
		if strings.EqualFold(n, name) {
			for _, v := range vs {
				out = append(out, v.value)
			}
		}
	}
	return out
}

// ContentType returns the content type of the latest version of name, "" when none.
func (s *Server) ContentType(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, _ := s.lookup(name, "")
	return v.contentType
}

// Puts is the number of secret versions written through PUT.
func (s *Server) Puts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts
}

// lookup finds a version; ver "" is the latest. Key Vault names are case-insensitive.
// Called with s.mu held.
func (s *Server) lookup(name, ver string) (version, bool) {
	for n, vs := range s.secrets {
		if !strings.EqualFold(n, name) || len(vs) == 0 {
			continue
		}
		if ver == "" {
			return vs[len(vs)-1], true
		}
		for _, v := range vs {
			if v.id == ver {
				return v, true
			}
		}
	}
	return version{}, false
}

// challenge answers 401 the way Key Vault does, in the format the SDK's challenge policy
// parses (space-separated key="value" pairs after "Bearer "). Called with s.mu held.
func (s *Server) challenge(w http.ResponseWriter, msg string) {
	s.challenges++
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(
		`Bearer authorization="https://login.microsoftonline.com/%s", resource="%s"`, TenantID, Resource))
	writeError(w, http.StatusUnauthorized, "Unauthorized", msg)
}

// failureCode is the error code Key Vault uses for status, near enough for clients that
// only look at the status.
func failureCode(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "Unauthorized"
	case http.StatusForbidden:
		return "Forbidden"
	case http.StatusNotFound:
		return "SecretNotFound"
	case http.StatusTooManyRequests:
		return "Throttled"
	case http.StatusServiceUnavailable:
		return "ServiceUnavailable"
	default:
		return "InternalError"
	}
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Credential is a hand-written azcore.TokenCredential. It records every token request so
// tests can assert the scope and tenant the SDK derived from the challenge.
type Credential struct {
	// GetTokenFunc produces the token. NewServer sets it to issue the server's token;
	// replace it before the first use to inject failures or wrong tokens.
	GetTokenFunc func(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error)

	mu   sync.Mutex
	reqs []policy.TokenRequestOptions
}

var _ azcore.TokenCredential = (*Credential)(nil)

// GetToken records opts and delegates to GetTokenFunc.
func (c *Credential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.mu.Lock()
	c.reqs = append(c.reqs, opts)
	c.mu.Unlock()
	return c.GetTokenFunc(ctx, opts)
}

// TokenRequests returns the options of every GetToken call so far.
func (c *Credential) TokenRequests() []policy.TokenRequestOptions {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]policy.TokenRequestOptions(nil), c.reqs...)
}

// Scopes returns the scopes of every GetToken call so far, flattened.
func (c *Credential) Scopes() []string {
	var out []string
	for _, r := range c.TokenRequests() {
		out = append(out, r.Scopes...)
	}
	return out
}
