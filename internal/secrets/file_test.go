package secrets

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"sas-group-key":  "c2VjcmV0\n",
		"beam-psk":       "mysecretkey\r\n",
		"ca-bundle":      "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
		"no-newline":     "raw",
		"two-newlines":   "value\n\n",
		"trailing-space": "psk \n",
		"empty":          "",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A file outside Dir that a traversal would reach.
	if err := os.WriteFile(filepath.Join(filepath.Dir(dir), "x"), []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(filepath.Join(filepath.Dir(dir), "x")) })
	if err := os.Mkdir(filepath.Join(dir, "a"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a", "b"), []byte("nested"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		secret  string
		want    string
		wantErr error
	}{
		{name: "ok/newline trimmed", secret: "sas-group-key", want: "c2VjcmV0"},
		{name: "ok/crlf trimmed", secret: "beam-psk", want: "mysecretkey"},
		{name: "ok/pem keeps inner newlines", secret: "ca-bundle", want: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"},
		{name: "ok/no newline", secret: "no-newline", want: "raw"},
		{name: "ok/only one newline trimmed", secret: "two-newlines", want: "value\n"},
		{name: "ok/other whitespace kept", secret: "trailing-space", want: "psk "},
		{name: "ok/empty file", secret: "empty", want: ""},
		{name: "fail/missing", secret: "nope", wantErr: ErrNotFound},
		{name: "fail/traversal", secret: "../x", wantErr: ErrInvalidName},
		{name: "fail/slash", secret: "a/b", wantErr: ErrInvalidName},
		{name: "fail/empty name", secret: "", wantErr: ErrInvalidName},
		{name: "fail/128 chars", secret: strings.Repeat("a", 128), wantErr: ErrInvalidName},
		{name: "fail/dot", secret: "a.b", wantErr: ErrInvalidName},
		{name: "fail/backslash", secret: `a\b`, wantErr: ErrInvalidName},
		{name: "fail/nul", secret: "a\x00", wantErr: ErrInvalidName},
		{name: "fail/underscore", secret: "a_b", wantErr: ErrInvalidName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FileSource{Dir: dir}.Secret(context.Background(), tt.secret)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if got != nil {
					t.Fatalf("got value %q with error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if string(got) != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFileSourceLimits(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("Z", 127)
	if err := os.WriteFile(filepath.Join(dir, long), []byte("v\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Run("ok/127 chars", func(t *testing.T) {
		got, err := FileSource{Dir: dir}.Secret(context.Background(), long)
		if err != nil || string(got) != "v" {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("fail/canceled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := (FileSource{Dir: dir}).Secret(ctx, long); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
	t.Run("fail/directory is transient not missing", func(t *testing.T) {
		if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
			t.Fatal(err)
		}
		_, err := FileSource{Dir: dir}.Secret(context.Background(), "adir")
		if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalidName) {
			t.Fatalf("err = %v, want a transient error", err)
		}
	})
	t.Run("fail/missing dir is not found", func(t *testing.T) {
		_, err := FileSource{Dir: filepath.Join(dir, "nope")}.Secret(context.Background(), "x")
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("err = %v, want ErrNotFound", err)
		}
	})
}

// FuzzCheckName holds CheckName to its promise: any accepted name is a single path
// element inside Dir, within Key Vault's length limit.
func FuzzCheckName(f *testing.F) {
	for _, s := range []string{"ca-bundle", "../x", "a/b", "", "..", ".", "a\\b", "a\x00b",
		"é", strings.Repeat("a", 127), strings.Repeat("a", 128), "-", "A-9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := CheckName(name)
		if err != nil {
			if !errors.Is(err, ErrInvalidName) {
				t.Fatalf("CheckName(%q) = %v, not ErrInvalidName", name, err)
			}
			return
		}
		if len(name) < 1 || len(name) > 127 {
			t.Fatalf("accepted %q of length %d", name, len(name))
		}
		const dir = "/secrets"
		p := filepath.Join(dir, name)
		if filepath.Dir(p) != dir || filepath.Base(p) != name {
			t.Fatalf("accepted %q escapes or alters the path: %s", name, p)
		}
		for _, r := range name {
			if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				t.Fatalf("accepted %q with %q", name, r)
			}
		}
	})
}
