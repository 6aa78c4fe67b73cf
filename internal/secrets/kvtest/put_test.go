package kvtest

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// TestSetSecretWithRealClient drives PUT with azsecrets itself, so the server follows the
// SDK's wire format (challenge, body, response) rather than this package's idea of it.
func TestSetSecretWithRealClient(t *testing.T) {
	s := NewServer(t)
	c, err := azsecrets.NewClient(s.URL(), s.Credential(), s.ClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ct := "application/x-pem-file"
	for _, v := range []string{"first", "second"} {
		resp, err := c.SetSecret(ctx, "iotprov-ca", azsecrets.SetSecretParameters{Value: &v, ContentType: &ct}, nil)
		if err != nil {
			t.Fatalf("SetSecret: %v", err)
		}
		if resp.Value == nil || *resp.Value != v || resp.ID == nil || resp.ID.Name() != "iotprov-ca" || resp.ID.Version() == "" {
			t.Fatalf("SetSecret answer: %+v", resp.Secret)
		}
	}
	got, err := c.GetSecret(ctx, "iotprov-ca", "", nil)
	if err != nil || *got.Value != "second" || got.ContentType == nil || *got.ContentType != ct {
		t.Fatalf("GetSecret after two PUTs: %+v, %v", got.Secret, err)
	}
	if vs := s.Versions("IOTPROV-CA"); len(vs) != 2 || vs[0] != "first" || vs[1] != "second" {
		t.Fatalf("versions = %q", vs)
	}
	if s.Puts() != 2 || s.ContentType("iotprov-ca") != ct {
		t.Fatalf("puts = %d, content type %q", s.Puts(), s.ContentType("iotprov-ca"))
	}
}

func TestPutRefusals(t *testing.T) {
	s := NewServer(t)
	bearer := "Bearer " + s.Token()
	tests := []struct {
		name, path, body string
		status           int
	}{
		{"fail/no value", "/secrets/ca?api-version=7.6", `{"contentType":"x"}`, http.StatusBadRequest},
		{"fail/not json", "/secrets/ca?api-version=7.6", `value=1`, http.StatusBadRequest},
		{"fail/bad name", "/secrets/c_a?api-version=7.6", `{"value":"v"}`, http.StatusBadRequest},
		{"fail/too large", "/secrets/ca?api-version=7.6", `{"value":"` + strings.Repeat("a", maxSecretValue+1) + `"}`, http.StatusBadRequest},
		{"fail/put a version", "/secrets/ca/0123?api-version=7.6", `{"value":"v"}`, http.StatusMethodNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPut, s.URL()+tc.path, bytes.NewBufferString(tc.body))
			req.Header.Set("Authorization", bearer)
			req.Header.Set("Content-Type", "application/json")
			resp, err := s.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
	if s.Puts() != 0 || s.Versions("ca") != nil {
		t.Fatalf("a refused PUT stored something: %d", s.Puts())
	}
	// Unauthenticated PUTs are challenged like GETs and store nothing.
	c, _ := azsecrets.NewClient(s.URL(), &Credential{GetTokenFunc: func(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
		return azcore.AccessToken{}, errors.New("no identity")
	}}, s.ClientOptions())
	v := "x"
	if _, err := c.SetSecret(context.Background(), "ca", azsecrets.SetSecretParameters{Value: &v}, nil); err == nil || s.Puts() != 0 {
		t.Fatalf("SetSecret without a token: %v, puts %d", err, s.Puts())
	}
}
