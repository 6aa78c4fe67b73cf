package auth

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

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
		&fakeAuthenticator{method: "x509"},
		&fakeAuthenticator{method: "jwt", challenge: `Bearer realm="iotprov"`},
	}
	want := []string{"SharedAccessSignature", `Bearer realm="iotprov"`}
	if got := c.Challenges(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Challenges() = %q, want %q", got, want)
	}
}

func TestIdentityKey(t *testing.T) {
	if got := (Identity{Method: "beam", Subject: "295000012345678"}).Key(); got != "beam:295000012345678" {
		t.Fatalf("Key() = %q", got)
	}
}
