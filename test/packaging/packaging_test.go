// Package packaging checks that `make package` assembles a folder the Azure Functions
// host runs as it is (DESIGN.md §1): host.json at the root, the custom handler as a
// linux/amd64 executable named as host.json's defaultExecutablePath, and one folder per
// function holding its function.json — and that `make deploy` refuses to run without APP.
package packaging

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const repo = "../.."

func needMake(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
}

func TestPackageIsWhatTheHostRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles the handler (a few seconds, more without a build cache)")
	}
	needMake(t)
	dist := filepath.Join(t.TempDir(), "dist")
	cmd := exec.Command("make", "-s", "-C", repo, "package", "DIST="+dist)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make package: %v\n%s", err, out)
	}

	hostJSON, err := os.ReadFile(filepath.Join(repo, "host.json"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dist, "host.json"))
	if err != nil || !bytes.Equal(got, hostJSON) {
		t.Fatalf("dist/host.json is not the repository's host.json (%v)", err)
	}
	var host struct {
		CustomHandler struct {
			Description struct{ DefaultExecutablePath string } `json:"description"`
		} `json:"customHandler"`
	}
	if err := json.Unmarshal(hostJSON, &host); err != nil {
		t.Fatal(err)
	}
	exe := host.CustomHandler.Description.DefaultExecutablePath
	if exe != "handler" {
		t.Errorf("host.json defaultExecutablePath = %q, want handler", exe)
	}

	// The handler: an executable, static, 64-bit little-endian x86-64 Linux ELF.
	path := filepath.Join(dist, exe)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		t.Errorf("%s is not executable: %v", exe, fi.Mode())
	}
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s is not an ELF file: %v", exe, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Machine != elf.EM_X86_64 {
		t.Errorf("%s: class %v, data %v, machine %v; want ELFCLASS64 ELFDATA2LSB EM_X86_64", exe, f.Class, f.Data, f.Machine)
	}
	if f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX {
		t.Errorf("%s: OS ABI %v, want System V / Linux", exe, f.OSABI)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		t.Errorf("%s: ELF type %v, want an executable", exe, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked (PT_INTERP); the Functions image may not have its loader: build with CGO_ENABLED=0", exe)
		}
	}

	// One folder per function, at the root, holding the repository's function.json.
	fns, err := filepath.Glob(filepath.Join(repo, "functions", "*", "function.json"))
	if err != nil || len(fns) == 0 {
		t.Fatalf("no functions/*/function.json (%v)", err)
	}
	want := map[string]bool{"host.json": true, exe: true}
	for _, src := range fns {
		name := filepath.Base(filepath.Dir(src))
		want[name] = true
		a, _ := os.ReadFile(src)
		b, err := os.ReadFile(filepath.Join(dist, name, "function.json"))
		if err != nil {
			t.Errorf("dist/%s/function.json: %v", name, err)
			continue
		}
		if !bytes.Equal(a, b) {
			t.Errorf("dist/%s/function.json differs from functions/%s/function.json", name, name)
		}
		var fn struct{ Bindings []struct{ Type string } }
		if err := json.Unmarshal(b, &fn); err != nil || len(fn.Bindings) == 0 {
			t.Errorf("dist/%s/function.json: no bindings (%v)", name, err)
		}
	}
	for _, name := range []string{"register", "registration", "provision", "purge"} {
		if !want[name] {
			t.Errorf("functions/%s is missing", name)
		}
	}
	// Nothing else: no local settings or secrets ride along to Azure.
	entries, err := os.ReadDir(dist)
	if err != nil {
		t.Fatal(err)
	}
	var extra []string
	for _, e := range entries {
		if !want[e.Name()] {
			extra = append(extra, e.Name())
		}
	}
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Errorf("dist/ holds more than the host needs: %v", extra)
	}
}

func TestDeployNeedsApp(t *testing.T) {
	needMake(t)
	out, err := exec.Command("make", "-s", "-C", repo, "deploy", "APP=").CombinedOutput()
	if err == nil {
		t.Fatalf("make deploy without APP succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "set APP=") {
		t.Errorf("make deploy without APP does not say how to run it:\n%s", out)
	}
}
