package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/iotprov/iotprov/internal/errcode"
)

// Several skn groups, each its own secret, through SecretKeyGroups as the handler wires it.
func TestSASKeyGroupsFromSecrets(t *testing.T) {
	defKey, factoryKey := []byte("default group key"), []byte("factory group key")
	secrets := map[string][]byte{
		"sas-group-key":   []byte(base64.StdEncoding.EncodeToString(defKey) + "\n"),
		"sas-group-key-a": []byte(base64.StdEncoding.EncodeToString(factoryKey)),
	}
	fetch := func(_ context.Context, name string) ([]byte, error) {
		if v, ok := secrets[name]; ok {
			return v, nil
		}
		return nil, errors.New("no such secret")
	}
	groups, err := ParseKeyGroups(" factory-a = sas-group-key-a ,")
	if err != nil {
		t.Fatal(err)
	}
	s := NewSAS(SASConfig{Keys: SecretKeyGroups(fetch, "sas-group-key", groups), Now: fixedClock})
	exp := fixedNow.Add(3600 * 1e9).Unix()
	tests := []struct {
		name     string
		token    string
		wantCode string
	}{
		{"ok/default-group", NewSASToken(DeriveDeviceKey(defKey, "d1"), "d1", exp, ""), ""},
		{"ok/default-group-registration", NewSASToken(DeriveDeviceKey(defKey, "d1"), "d1", exp, "registration"), ""},
		{"ok/named-group", NewSASToken(DeriveDeviceKey(factoryKey, "d1"), "d1", exp, "factory-a"), ""},
		{"fail/named-group-default-key", NewSASToken(DeriveDeviceKey(defKey, "d1"), "d1", exp, "factory-a"), errcode.CodeInvalidCredential},
		{"fail/unknown-skn", NewSASToken(DeriveDeviceKey(defKey, "d1"), "d1", exp, "factory-b"), CodeUnknownKeyGroup},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", nil)
			r.Header.Set("Authorization", tt.token)
			_, err := s.Authenticate(context.Background(), r)
			if tt.wantCode == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if e := errcode.As(err); e.Status != 401 || e.Code != tt.wantCode {
				t.Fatalf("got %d %s, want 401 %s", e.Status, e.Code, tt.wantCode)
			}
		})
	}
	for _, bad := range []string{"noequals", "registration=x", "a=x,a=y", "a b=x", "=x"} {
		if _, err := ParseKeyGroups(bad); err == nil {
			t.Errorf("ParseKeyGroups(%q) accepted", bad)
		}
	}
}
