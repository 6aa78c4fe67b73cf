package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/testenv"
)

// testEnv runs commands in process with captured output and a fixed clock.
func testEnv(t *testing.T) (*env, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	var out, errOut bytes.Buffer
	return &env{ctx: context.Background(), out: &out, errOut: &errOut, now: time.Now}, &out, &errOut
}

func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range commands {
		t.Run("ok/"+strings.ReplaceAll(c.path, " ", "-"), func(t *testing.T) {
			e, out, errOut := testEnv(t)
			err := run(e, append(strings.Fields(c.path), "--help"))
			if !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("--help: %v", err)
			}
			if !strings.HasPrefix(errOut.String(), "Usage: iotprov "+c.path+" ") || !strings.Contains(errOut.String(), "Flags:") || out.Len() != 0 {
				t.Fatalf("--help: stdout %q, stderr:\n%s", out, errOut)
			}
		})
	}
}

func TestDispatch(t *testing.T) {
	var got []string
	extraCommands["zz-test"] = func(args []string, out io.Writer) error {
		got = args
		_, err := io.WriteString(out, "extra ran\n")
		return err
	}
	t.Cleanup(func() { delete(extraCommands, "zz-test") })

	tests := []struct {
		name    string
		args    []string
		wantErr bool
		wantOut string
	}{
		{"ok/no-args-prints-usage", nil, false, "ca init"},
		{"ok/help", []string{"--help"}, false, "device register"},
		{"ok/usage-lists-extra-commands", []string{"help"}, false, "zz-test"},
		{"ok/group-usage", []string{"ca"}, false, "ca verification-cert"},
		{"ok/extra-command", []string{"zz-test", "a", "b"}, false, "extra ran"},
		{"fail/unknown-command", []string{"nope"}, true, ""},
		{"fail/unknown-subcommand", []string{"ca", "nope"}, true, "ca init"},
		{"fail/stray-argument", []string{"sas", "device-key", "oops"}, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, out, _ := testEnv(t)
			err := run(e, tc.args)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Fatalf("output lacks %q:\n%s", tc.wantOut, out)
			}
		})
	}
	if strings.Join(got, " ") != "a b" {
		t.Errorf("extra command got args %q", got)
	}
}

// sasVector is one entry of ../shared/testvectors.json: computed with openssl, not with
// this project's code.
type sasVector struct {
	GroupKey, RegistrationID, DerivedDeviceKey, SE, SR, Authorization string
}

func sasVectors(t *testing.T) []sasVector {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.ModuleRoot(), "..", "shared", "testvectors.json"))
	if err != nil {
		t.Skipf("shared test vectors not available: %v", err)
	}
	var v struct{ SAS []sasVector }
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v.SAS
}

func TestSASAgainstIndependentVectors(t *testing.T) {
	for i, v := range sasVectors(t) {
		groupFile := filepath.Join(t.TempDir(), "group")
		if err := os.WriteFile(groupFile, []byte(v.GroupKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		e, out, _ := testEnv(t)
		if err := run(e, []string{"sas", "device-key", "--group-key-file", groupFile, "--id", v.RegistrationID}); err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(out.String()); got != v.DerivedDeviceKey {
			t.Errorf("vector %d: device key %q, want %q", i, got, v.DerivedDeviceKey)
		}
		// The clock is set so that now + ttl is the vector's se.
		var seUnix int64
		if err := json.Unmarshal([]byte(v.SE), &seUnix); err != nil {
			t.Fatal(err)
		}
		e, out, _ = testEnv(t)
		e.now = func() time.Time { return time.Unix(seUnix, 0).Add(-time.Hour) }
		args := []string{"sas", "token", "--device-key", v.DerivedDeviceKey, "--id", v.RegistrationID, "--ttl", "1h"}
		if strings.Contains(v.SR, "%2F") {
			scope, _, _ := strings.Cut(v.SR, "%2F")
			args = append(args, "--id-scope", scope)
		}
		if err := run(e, args); err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(out.String()); got != v.Authorization {
			t.Errorf("vector %d: token\n%s\nwant\n%s", i, got, v.Authorization)
		}
	}
}

func TestSASRefusals(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"fail/no-id", []string{"sas", "token", "--device-key", "AAAA"}},
		{"fail/no-key", []string{"sas", "token", "--id", "d1"}},
		{"fail/device-key-not-base64", []string{"sas", "token", "--device-key", "!!", "--id", "d1"}},
		{"fail/group-key-file-missing", []string{"sas", "device-key", "--group-key-file", "/nonexistent", "--id", "d1"}},
		{"fail/device-key-needs-group-key", []string{"sas", "device-key", "--id", "d1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, out, _ := testEnv(t)
			if err := run(e, tc.args); err == nil {
				t.Fatalf("accepted; printed %q", out)
			}
		})
	}
}
