package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/config"
	"github.com/iotprov/iotprov/internal/errcode"
)

// fakeAuthenticator is a hand-written Authenticator with function fields.
type fakeAuthenticator struct {
	method       string
	challenge    string
	authenticate func(ctx context.Context, r *http.Request) (Identity, error)
	calls        int
}

var _ Authenticator = (*fakeAuthenticator)(nil)

func (f *fakeAuthenticator) Method() string    { return f.method }
func (f *fakeAuthenticator) Challenge() string { return f.challenge }
func (f *fakeAuthenticator) Authenticate(ctx context.Context, r *http.Request) (Identity, error) {
	f.calls++
	return f.authenticate(ctx, r)
}

func noCred(context.Context, *http.Request) (Identity, error) { return Identity{}, ErrNoCredential }

func TestChain(t *testing.T) {
	bad := errcode.New(http.StatusUnauthorized, errcode.CodeInvalidCredential, "bad")
	tests := []struct {
		name      string
		first     func(context.Context, *http.Request) (Identity, error)
		second    func(context.Context, *http.Request) (Identity, error)
		wantID    Identity
		wantCode  string
		wantCalls [2]int
	}{
		{name: "ok/first-decides",
			first:     func(context.Context, *http.Request) (Identity, error) { return Identity{"sas", "a"}, nil },
			second:    func(context.Context, *http.Request) (Identity, error) { return Identity{"jwt", "b"}, nil },
			wantID:    Identity{"sas", "a"},
			wantCalls: [2]int{1, 0}},
		{name: "ok/falls-through-no-credential",
			first:     noCred,
			second:    func(context.Context, *http.Request) (Identity, error) { return Identity{"jwt", "b"}, nil },
			wantID:    Identity{"jwt", "b"},
			wantCalls: [2]int{1, 1}},
		{name: "fail/bad-credential-does-not-fall-through",
			first:     func(context.Context, *http.Request) (Identity, error) { return Identity{}, bad },
			second:    func(context.Context, *http.Request) (Identity, error) { return Identity{"jwt", "b"}, nil },
			wantCode:  errcode.CodeInvalidCredential,
			wantCalls: [2]int{1, 0}},
		{name: "fail/wrapped-no-credential-falls-through",
			first: func(context.Context, *http.Request) (Identity, error) {
				return Identity{}, errors.Join(ErrNoCredential)
			},
			second:    noCred,
			wantCode:  errcode.CodeMissingCredential,
			wantCalls: [2]int{1, 1}},
		{name: "fail/missing",
			first:     noCred,
			second:    noCred,
			wantCode:  errcode.CodeMissingCredential,
			wantCalls: [2]int{1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &fakeAuthenticator{method: "sas", challenge: "SharedAccessSignature", authenticate: tt.first}
			b := &fakeAuthenticator{method: "jwt", challenge: "Bearer", authenticate: tt.second}
			c := Chain{a, b}
			id, err := c.Authenticate(context.Background(), httptest.NewRequest(http.MethodGet, "/", nil))
			if tt.wantCode != "" {
				e := errcode.As(err)
				if err == nil || e.Code != tt.wantCode || e.Status != http.StatusUnauthorized {
					t.Fatalf("err = %v, want 401 %s", err, tt.wantCode)
				}
			} else if err != nil || id != tt.wantID {
				t.Fatalf("got %+v, %v; want %+v", id, err, tt.wantID)
			}
			if got := [2]int{a.calls, b.calls}; got != tt.wantCalls {
				t.Fatalf("calls = %v, want %v", got, tt.wantCalls)
			}
		})
	}
}

func TestChainEmpty(t *testing.T) {
	_, err := Chain(nil).Authenticate(context.Background(), httptest.NewRequest(http.MethodGet, "/", nil))
	if e := errcode.As(err); e.Code != errcode.CodeMissingCredential || e.Status != 401 {
		t.Fatalf("err = %v", err)
	}
}

func TestChainChallenges(t *testing.T) {
	c := Chain{
		NewSAS(SASConfig{}),
		&fakeAuthenticator{method: "silent"}, // an empty challenge is skipped, not sent as an empty line
		&fakeAuthenticator{method: "jwt", challenge: `Bearer realm="iotprov"`},
	}
	want := []string{"SharedAccessSignature", `Bearer realm="iotprov"`}
	if got := c.Challenges(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Challenges() = %q, want %q", got, want)
	}
}

// TestChainChallengesEveryMethod: DESIGN.md §2 wants WWW-Authenticate on every 401, and
// the header is built from the chain's challenges only, so every method the service can
// enable must contribute one — alone (a deployment with only beam, or only x509, must
// still send the header) and together (one distinct line per method, in chain order).
func TestChainChallengesEveryMethod(t *testing.T) {
	// One constructor per method the configuration accepts, built as handler/app.go does
	// but with zero settings: the challenge must not depend on them.
	build := map[string]func() Authenticator{
		"sas":  func() Authenticator { return NewSAS(SASConfig{}) },
		"beam": func() Authenticator { return NewBeam(BeamConfig{}) },
		"jwt":  func() Authenticator { return NewJWT(JWTConfig{}) },
		"x509": func() Authenticator { return NewX509(X509Config{}) },
	}
	want := map[string]string{
		"sas":  "SharedAccessSignature",
		"beam": "SoracomBeam",
		"jwt":  "Bearer",
		"x509": "ClientCertificate",
	}
	var all Chain
	var wantAll []string
	for _, m := range config.KnownAuthMethods {
		t.Run("ok/"+m+"-alone", func(t *testing.T) {
			newAuth, ok := build[m]
			if !ok {
				t.Fatalf("config.KnownAuthMethods has %q: add it here with its challenge", m)
			}
			a := newAuth()
			if a.Method() != m {
				t.Fatalf("Method() = %q, want %q", a.Method(), m)
			}
			got := Chain{a}.Challenges()
			if len(got) != 1 || got[0] != want[m] {
				t.Fatalf("a chain of %s alone challenges %q, want [%q]", m, got, want[m])
			}
			if !isToken(got[0]) {
				t.Fatalf("challenge %q is not an RFC 9110 auth-scheme token", got[0])
			}
		})
		if newAuth, ok := build[m]; ok {
			all = append(all, newAuth())
			wantAll = append(wantAll, want[m])
		}
	}
	t.Run("ok/all-in-order", func(t *testing.T) {
		got := all.Challenges()
		if !reflect.DeepEqual(got, wantAll) {
			t.Fatalf("Challenges() = %q, want %q", got, wantAll)
		}
		seen := map[string]bool{}
		for _, c := range got {
			if seen[strings.ToLower(c)] {
				t.Fatalf("challenge %q appears twice (schemes are case-insensitive)", c)
			}
			seen[strings.ToLower(c)] = true
		}
	})
}

// isToken reports whether s is an RFC 9110 token (tchar+), what an auth-scheme must be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("!#$%&'*+-.^_`|~", r):
		default:
			return false
		}
	}
	return true
}

func TestIdentityKey(t *testing.T) {
	if got := (Identity{Method: "beam", Subject: "295000012345678"}).Key(); got != "beam:295000012345678" {
		t.Fatalf("Key() = %q", got)
	}
}

// authWant is what one table case expects of Authenticate: no credential of the method's
// kind, an identity, or a refusal with a status and a stable code.
type authWant struct {
	NoCred bool
	ID     string
	Status int
	Code   string
}

// checkAuth asserts one Authenticate result of method against want, the same way for
// every method. For a refusal it returns the *errcode.Error (with no identity alongside),
// so a case can check what must not be in its message; otherwise nil.
func checkAuth(t *testing.T, method string, id Identity, err error, want authWant) *errcode.Error {
	t.Helper()
	switch {
	case want.NoCred:
		if !errors.Is(err, ErrNoCredential) {
			t.Fatalf("err = %v, want ErrNoCredential", err)
		}
		return nil
	case want.Code == "":
		if err != nil || id != (Identity{Method: method, Subject: want.ID}) || id.Key() != method+":"+want.ID {
			t.Fatalf("got %+v, %v; want %s:%s", id, err, method, want.ID)
		}
		return nil
	}
	var e *errcode.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v (%T), want *errcode.Error", err, err)
	}
	if e.Status != want.Status || e.Code != want.Code {
		t.Fatalf("got %d %s (%s; %v), want %d %s", e.Status, e.Code, e.Message, e.Cause, want.Status, want.Code)
	}
	if id != (Identity{}) {
		t.Fatalf("identity %+v returned with an error", id)
	}
	return e
}

// An authenticator built without its key source is a wiring bug: it returns a plain error
// naming the method, which errcode.As turns into 500 internal_error with the safe message
// while keeping the reason as the cause for the log (not err=<nil>).
func TestNilKeySourceIsInternalError(t *testing.T) {
	beamNow := time.Unix(1_800_000_000, 0)
	tests := []struct {
		name   string
		a      Authenticator
		req    func(r *http.Request)
		reason string
	}{
		{name: "sas", a: NewSAS(SASConfig{Now: fixedClock}), reason: "auth: sas: no key source configured",
			req: func(r *http.Request) {
				r.Header.Set("Authorization", NewSASToken(DeriveDeviceKey([]byte("k"), "dev"), "dev", fixedNow.Add(time.Hour).Unix(), ""))
			}},
		{name: "beam", a: NewBeam(BeamConfig{Now: func() time.Time { return beamNow }}), reason: "auth: beam: no PSK source configured",
			req: func(r *http.Request) {
				SetBeamHeaders(r.Header, []byte("psk"), BeamHeaders{IMSI: "295000012345678", Timestamp: itoa(beamNow.UnixMilli())})
			}},
		{name: "jwt", a: NewJWT(JWTConfig{Issuer: "iss", Audience: "aud"}), reason: "auth: jwt: no key source configured",
			req: func(r *http.Request) { r.Header.Set("Authorization", "Bearer aaa.bbb.ccc") }},
		{name: "x509", a: NewX509(X509Config{Now: func() time.Time { return x509Now }}), reason: "auth: x509: no CA bundle source configured",
			req: func(r *http.Request) { r.TLS = &tls.ConnectionState{PeerCertificates: x509Fixtures().good} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			tt.req(r)
			_, err := tt.a.Authenticate(context.Background(), r)
			e := errcode.As(err)
			if err == nil || e.Status != http.StatusInternalServerError || e.Code != errcode.CodeInternal {
				t.Fatalf("err = %v, want 500 %s", err, errcode.CodeInternal)
			}
			if e.Cause == nil || e.Cause.Error() != tt.reason {
				t.Fatalf("cause = %v, want %q", e.Cause, tt.reason)
			}
			if strings.Contains(e.Message, tt.name) {
				t.Fatalf("message %q leaks the internal reason", e.Message)
			}
		})
	}
}
