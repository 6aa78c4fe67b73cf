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
	"slices"
	"strings"
	"testing"
	"time"
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
		// A flag error prints the usage on standard error only: what a script captures
		// (curl $(iotprov beam …)) must never be a usage text.
		t.Run("fail/"+strings.ReplaceAll(c.path, " ", "-")+"-bad-flag", func(t *testing.T) {
			e, out, errOut := testEnv(t)
			err := run(e, append(strings.Fields(c.path), "--no-such-flag"))
			if err == nil || errors.Is(err, flag.ErrHelp) {
				t.Fatalf("bad flag: err = %v", err)
			}
			if !strings.Contains(errOut.String(), "Usage: iotprov "+c.path+" ") || out.Len() != 0 {
				t.Fatalf("bad flag: stdout %q, stderr:\n%s", out, errOut)
			}
		})
	}
}

// TestCommandTable checks what run relies on to dispatch: paths are unique, of one or
// two words, and no word is both a command and a group (else "beam x" would be
// ambiguous).
func TestCommandTable(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range commands {
		words := strings.Fields(c.path)
		if len(words) < 1 || len(words) > 2 || strings.Join(words, " ") != c.path || c.summary == "" || c.run == nil {
			t.Errorf("malformed row %q", c.path)
		}
		if seen[c.path] {
			t.Errorf("%q is in the table twice", c.path)
		}
		seen[c.path] = true
		if len(words) == 1 && hasGroup(c.path) {
			t.Errorf("%q is both a command and a group", c.path)
		}
	}
}

func TestDispatch(t *testing.T) {
	// A one-word row of the table, to see which arguments dispatch hands a command.
	var got []string
	saved := commands
	commands = append(slices.Clone(commands), command{"zz-test", "a test command", func(e *env, args []string) error {
		got = args
		_, err := io.WriteString(e.out, "test command ran\n")
		return err
	}})
	t.Cleanup(func() { commands = saved })

	tests := []struct {
		name    string
		args    []string
		wantErr bool
		wantOut string
	}{
		{"ok/no-args-prints-usage", nil, false, "ca init"},
		{"ok/help", []string{"--help"}, false, "device register"},
		{"ok/usage-lists-one-word-commands", []string{"help"}, false, "zz-test"},
		{"ok/usage-lists-bootstrap-cert", []string{"help"}, false, "bootstrap-cert"},
		{"ok/group-usage", []string{"ca"}, false, "ca verification-cert"},
		{"ok/devices-group-usage", []string{"devices"}, false, "devices disable"},
		{"ok/devices-group-help", []string{"devices", "--help"}, false, "devices enable"},
		{"ok/one-word-command", []string{"zz-test", "a", "b"}, false, "test command ran"},
		{"fail/unknown-command", []string{"nope"}, true, ""},
		{"fail/unknown-subcommand", []string{"ca", "nope"}, true, "ca init"},
		{"fail/unknown-devices-subcommand", []string{"devices", "remove"}, true, "devices add"},
		{"fail/stray-argument", []string{"sas", "device-key", "oops"}, true, ""},
		{"fail/one-word-command-stray-argument", []string{"beam", "oops"}, true, ""},
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
		t.Errorf("one-word command got args %q", got)
	}
}

// testVectorsFile holds independent vectors, computed with openssl and sha256sum, not
// with this project's code. It is internal/auth's copy, in the repository, so the tests
// against it run in every clone and in CI.
var testVectorsFile = filepath.Join("..", "..", "internal", "auth", "testdata", "testvectors.json")

// sasVector is one SAS entry of testVectorsFile.
type sasVector struct {
	GroupKey, RegistrationID, DerivedDeviceKey, SE, SR, Authorization string
}

// beamVector is one SORACOM Beam entry of testVectorsFile.
type beamVector struct {
	PSK       string            `json:"psk"`
	Headers   map[string]string `json:"headers"`
	Signature string            `json:"signature"`
}

// testVectors reads testVectorsFile; a missing or empty file fails the test, since a
// skip would let the vectors go unchecked without anyone noticing.
func testVectors(t *testing.T) (sas []sasVector, beam []beamVector) {
	t.Helper()
	b, err := os.ReadFile(testVectorsFile)
	if err != nil {
		t.Fatalf("test vectors: %v", err)
	}
	var v struct {
		SAS  []sasVector  `json:"sas"`
		Beam []beamVector `json:"beam"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", testVectorsFile, err)
	}
	if len(v.SAS) == 0 || len(v.Beam) == 0 {
		t.Fatalf("%s: %d SAS and %d Beam vectors, want some of each", testVectorsFile, len(v.SAS), len(v.Beam))
	}
	return v.SAS, v.Beam
}

func sasVectors(t *testing.T) []sasVector {
	t.Helper()
	sas, _ := testVectors(t)
	return sas
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
