package kvtest

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// get sends a raw request so the wire format itself is checked, not only what azsecrets
// makes of it.
func get(t *testing.T, s *Server, path, auth string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, s.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("body %q is not JSON: %v", b, err)
	}
	return resp.StatusCode, resp.Header, body
}

func errorCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func TestServerProtocol(t *testing.T) {
	s := NewServer(t)
	s.Set("ca-bundle", "v1")
	s.Set("ca-bundle", "v2")
	bearer := "Bearer " + s.Token()

	t.Run("fail/no token is challenged", func(t *testing.T) {
		status, h, body := get(t, s, "/secrets/ca-bundle/?api-version=2026-04-01", "")
		if status != http.StatusUnauthorized {
			t.Fatalf("status = %d", status)
		}
		want := `Bearer authorization="https://login.microsoftonline.com/` + TenantID + `", resource="https://vault.azure.net"`
		if got := h.Get("WWW-Authenticate"); got != want {
			t.Fatalf("WWW-Authenticate = %q, want %q", got, want)
		}
		if errorCode(body) != "Unauthorized" {
			t.Fatalf("body = %v", body)
		}
	})
	t.Run("fail/wrong token is challenged", func(t *testing.T) {
		if status, _, _ := get(t, s, "/secrets/ca-bundle/?api-version=2026-04-01", "Bearer nope"); status != http.StatusUnauthorized {
			t.Fatalf("status = %d", status)
		}
	})
	t.Run("ok/latest", func(t *testing.T) {
		status, _, body := get(t, s, "/secrets/ca-bundle/?api-version=2026-04-01", bearer)
		if status != http.StatusOK || body["value"] != "v2" {
			t.Fatalf("status = %d, body = %v", status, body)
		}
		id, _ := body["id"].(string)
		prefix := s.URL() + "/secrets/ca-bundle/"
		if !strings.HasPrefix(id, prefix) || len(id) == len(prefix) {
			t.Fatalf("id = %q, want %s<version>", id, prefix)
		}
		attrs, _ := body["attributes"].(map[string]any)
		if attrs["enabled"] != true {
			t.Fatalf("attributes = %v", attrs)
		}
		// After a rotation the old version stays readable by its ID.
		s.Set("ca-bundle", "v3")
		status, _, again := get(t, s, strings.TrimPrefix(id, s.URL())+"?api-version=2026-04-01", bearer)
		if status != http.StatusOK || again["value"] != "v2" {
			t.Fatalf("by version: status = %d, body = %v", status, again)
		}
		if _, _, latest := get(t, s, "/secrets/ca-bundle?api-version=2026-04-01", bearer); latest["value"] != "v3" {
			t.Fatalf("latest after rotation = %v", latest)
		}
	})
	t.Run("ok/name without trailing slash, any case", func(t *testing.T) {
		status, _, body := get(t, s, "/secrets/CA-Bundle?api-version=2026-04-01", bearer)
		if status != http.StatusOK || body["value"] != "v3" {
			t.Fatalf("status = %d, body = %v", status, body)
		}
	})
	t.Run("fail/unknown version", func(t *testing.T) {
		status, _, body := get(t, s, "/secrets/ca-bundle/0123?api-version=2026-04-01", bearer)
		if status != http.StatusNotFound || errorCode(body) != "SecretNotFound" {
			t.Fatalf("status = %d, body = %v", status, body)
		}
	})
	t.Run("fail/unknown secret", func(t *testing.T) {
		status, _, body := get(t, s, "/secrets/nope/?api-version=2026-04-01", bearer)
		if status != http.StatusNotFound || errorCode(body) != "SecretNotFound" {
			t.Fatalf("status = %d, body = %v", status, body)
		}
	})
	t.Run("fail/no api-version", func(t *testing.T) {
		if status, _, body := get(t, s, "/secrets/ca-bundle/", bearer); status != http.StatusBadRequest {
			t.Fatalf("status = %d, body = %v", status, body)
		}
	})
	t.Run("fail/queued failures in order", func(t *testing.T) {
		s.FailNext(http.StatusInternalServerError)
		s.FailNext(http.StatusTooManyRequests)
		for _, want := range []int{500, 429, 200} {
			if status, _, _ := get(t, s, "/secrets/ca-bundle/?api-version=2026-04-01", bearer); status != want {
				t.Fatalf("status = %d, want %d", status, want)
			}
		}
	})
	t.Run("ok/delete", func(t *testing.T) {
		s.Delete("ca-bundle")
		if status, _, _ := get(t, s, "/secrets/ca-bundle/?api-version=2026-04-01", bearer); status != http.StatusNotFound {
			t.Fatalf("status = %d", status)
		}
	})
	if s.Requests() < 10 || s.Challenges() != 2 {
		t.Fatalf("requests = %d, challenges = %d", s.Requests(), s.Challenges())
	}
}

func TestCredentialRecordsRequests(t *testing.T) {
	s := NewServer(t)
	c := s.Credential()
	tok, err := c.GetToken(context.Background(), policyOpts("https://vault.azure.net/.default"))
	if err != nil || tok.Token != s.Token() {
		t.Fatalf("token = %q, %v", tok.Token, err)
	}
	if got := c.Scopes(); len(got) != 1 || got[0] != Scope {
		t.Fatalf("scopes = %v", got)
	}
}

func policyOpts(scope string) policy.TokenRequestOptions {
	return policy.TokenRequestOptions{Scopes: []string{scope}}
}
