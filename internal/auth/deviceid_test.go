package auth

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/iotprov/iotprov/internal/errcode"
)

func TestValidRegistrationID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		want bool
	}{
		{"ok/simple", "sensor-0042", true},
		{"ok/all-chars", "A.b_c:d-9", true},
		{"ok/ends-with-dash", "dev-", true},
		{"ok/one-char", "a", true},
		{"ok/64-chars", strings.Repeat("a", 64), true},
		{"ok/imsi", "295000012345678", true},
		{"fail/empty", "", false},
		{"fail/65-chars", strings.Repeat("a", 65), false},
		{"fail/ends-with-dot", "dev.", false},
		{"fail/ends-with-underscore", "dev_", false},
		{"fail/ends-with-colon", "dev:", false},
		{"fail/space", "dev 1", false},
		{"fail/slash", "a/b", false},
		{"fail/non-ascii", "dévice", false},
		{"fail/nul", "dev\x00", false},
		{"fail/plus", "a+b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidRegistrationID(tt.id); got != tt.want {
				t.Fatalf("ValidRegistrationID(%q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

func TestNewDeviceIDTemplate(t *testing.T) {
	tests := []struct {
		name    string
		tmpl    string
		wantErr bool
	}{
		{"ok/empty-is-id", "", false},
		{"ok/id", "{id}", false},
		{"ok/prefix", "myDevice-{id}", false},
		{"ok/suffix", "{id}-a1", false},
		{"ok/both", "site1:{id}.x", false},
		{"fail/no-placeholder", "myDevice", true},
		{"fail/two-placeholders", "{id}-{id}", true},
		{"fail/bad-char", "my device-{id}", true},
		{"fail/bad-last-char", "{id}.", true},
		{"fail/too-long", strings.Repeat("a", 64) + "{id}", true},
		{"fail/other-placeholder", "{ID}", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewDeviceIDTemplate(tt.tmpl)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

func TestDeviceID(t *testing.T) {
	tests := []struct {
		name    string
		tmpl    string
		subject string
		want    string
	}{
		{"ok/default", "", "sensor-0042", "sensor-0042"},
		{"ok/prefix", "myDevice-{id}", "295000012345678", "myDevice-295000012345678"},
		{"ok/suffix-fixes-last-char", "{id}-1", "dev.", "dev.-1"},
		{"ok/exactly-64", "p-{id}", strings.Repeat("a", 62), "p-" + strings.Repeat("a", 62)},
		{"fail/too-long", "p-{id}", strings.Repeat("a", 63), ""},
		{"fail/bad-char", "", "CN=dev 1", ""},
		{"fail/empty-subject", "dev-{id}", "", ""},
		{"fail/bad-last-char", "x-{id}", "dev_", ""},
		{"fail/slash", "{id}", "a/registrations/b", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := NewDeviceIDTemplate(tt.tmpl)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tmpl.DeviceID(tt.subject)
			if tt.want == "" {
				var e *errcode.Error
				if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Code != errcode.CodeInvalidDeviceID {
					t.Fatalf("err = %v, want 400 %s", err, errcode.CodeInvalidDeviceID)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("DeviceID(%q) = %q, %v; want %q", tt.subject, got, err, tt.want)
			}
		})
	}
}
