package dpsemu

import (
	"strings"
	"testing"
)

func TestParseRoute(t *testing.T) {
	tests := []struct {
		name string
		path string
		want route
		ok   bool
	}{
		{name: "ok/register", path: "/0ne1/registrations/dev-1/register", want: route{idScope: "0ne1", registrationID: "dev-1"}, ok: true},
		{name: "ok/operation", path: "/0ne1/registrations/dev-1/operations/4.ab.cd", want: route{idScope: "0ne1", registrationID: "dev-1", operationID: "4.ab.cd"}, ok: true},
		{name: "ok/escaped", path: "/0ne1/registrations/dev%3A1/register", want: route{idScope: "0ne1", registrationID: "dev:1"}, ok: true},
		{name: "fail/empty segment", path: "/0ne1/registrations//register"},
		{name: "fail/trailing slash", path: "/0ne1/registrations/dev-1/register/"},
		{name: "fail/bad escape", path: "/0ne1/registrations/dev%zz/register"},
		{name: "fail/other collection", path: "/0ne1/enrollments/dev-1/register"},
		{name: "fail/root", path: "/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseRoute(tt.path)
			if ok != tt.ok || got != tt.want {
				t.Errorf("parseRoute(%q) = %+v, %v; want %+v, %v", tt.path, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseRegistrationRequest(t *testing.T) {
	tests := []struct {
		name, body, want string
		wantErr          bool
	}{
		{name: "ok/minimal", body: `{"registrationId":"dev-1"}`, want: "dev-1"},
		{name: "ok/with payload", body: `{"registrationId":"dev-1","payload":{"modelId":"dtmi:x;1"}}`, want: "dev-1"},
		{name: "fail/empty object", body: `{}`, wantErr: true},
		{name: "fail/not JSON", body: `registrationId=dev-1`, wantErr: true},
		{name: "fail/wrong type", body: `{"registrationId":7}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRegistrationRequest([]byte(tt.body))
			if (err != nil) != tt.wantErr || got.RegistrationID != tt.want {
				t.Errorf("got %+v, %v", got, err)
			}
		})
	}
}

func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{"/0ne1/registrations/dev-1/register", "/0ne1/registrations/dev-1/operations/4.a.b",
		"/a%2Fb/registrations/x/register", "//", "/%", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		r, ok := parseRoute(p)
		if !ok {
			return
		}
		if r.idScope == "" || r.registrationID == "" {
			t.Fatalf("accepted %q as %+v", p, r)
		}
		if strings.HasSuffix(p, "/register") == (r.operationID != "") && !strings.Contains(p, "/operations/") {
			t.Fatalf("route kind confused for %q: %+v", p, r)
		}
	})
}

func FuzzParseRegistrationRequest(f *testing.F) {
	for _, s := range []string{`{"registrationId":"dev-1"}`, `{"registrationId":"dev-1","payload":null}`, `{}`, `[]`, `null`, `{"registrationId":"\u0000"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := parseRegistrationRequest(body)
		if err == nil && req.RegistrationID == "" {
			t.Fatal("accepted a request without registrationId")
		}
	})
}
