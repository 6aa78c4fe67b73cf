// Package testenv starts the external processes that iotprov's tests run against — for now
// Azurite, the Azure Storage emulator — so that storage code is tested with the real SDK
// clients against a real Tables and Queues endpoint instead of a hand-rolled imitation.
//
// Every process started here is tied to a test: it is stopped in t.Cleanup and, as a
// backstop for a test binary that dies, it gets SIGKILL from the kernel when its parent
// goes away (Pdeathsig). Nothing outlives the tests.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvStorage names a connection string of an Azurite (or storage account) that is already
// running; when it is set, Azurite returns it and starts nothing.
const EnvStorage = "IOTPROV_TEST_STORAGE"

// EnvAzuriteBin names the azurite executable to use instead of the module's tools folder.
const EnvAzuriteBin = "AZURITE_BIN"

// DevAccountName and DevAccountKey are Azurite's well-known development account. They are
// public (documented by Microsoft) and accepted only by the emulator.
const (
	DevAccountName = "devstoreaccount1"
	DevAccountKey  = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

const installHint = "install it with: npm install --prefix <module root>/.tools --no-audit --no-fund azurite@3.35.0 " +
	"(or set " + EnvAzuriteBin + " to the azurite executable, or " + EnvStorage + " to the connection string of a running Azurite)"

// startTimeout bounds how long Azurite may take to listen; it starts in about a second.
const startTimeout = 30 * time.Second

// ConnectionString returns the connection string of the development account for Queues and
// Tables at the given loopback ports.
func ConnectionString(queuePort, tablePort int) string {
	return fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;"+
		"QueueEndpoint=http://127.0.0.1:%d/%s;TableEndpoint=http://127.0.0.1:%d/%s;",
		DevAccountName, DevAccountKey, queuePort, DevAccountName, tablePort, DevAccountName)
}

// shared is the Azurite that concurrent callers of Azurite share. It is reference-counted:
// the last test to finish stops it, so it never outlives the tests that use it (tests that
// run one after the other each get a fresh one).
var shared struct {
	sync.Mutex
	refs int
	proc *AzuriteProcess
}

// Azurite returns an Azure Storage connection string for Tables and Queues on a real
// Azurite. If IOTPROV_TEST_STORAGE is set, it is returned as is. Otherwise an in-memory
// Azurite is started (or shared with tests running in parallel) and stopped when the last
// test using it finishes. The test is skipped under -short.
//
// Callers share state with other parallel tests: use unique partition keys, queue and
// table names. A test that needs an instance to itself calls StartAzurite.
func Azurite(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: needs Azurite (not run with -short)")
	}
	if cs := os.Getenv(EnvStorage); cs != "" {
		return cs
	}
	shared.Lock()
	defer shared.Unlock()
	if shared.proc == nil {
		p, err := start("")
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		shared.proc = p
	}
	shared.refs++
	t.Cleanup(func() {
		shared.Lock()
		defer shared.Unlock()
		shared.refs--
		if shared.refs == 0 {
			shared.proc.Stop()
			shared.proc = nil
		}
	})
	return shared.proc.ConnectionString
}

// AzuriteProcess is an Azurite started for one test, for tests that need to stop and
// restart it (with on-disk persistence) or need an instance of their own.
type AzuriteProcess struct {
	ConnectionString string
	Dir              string // data location; "" when in memory

	queuePort, tablePort int // 0 before the first launch (Azurite picks); then kept for Restart

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
}

// StartAzurite starts an Azurite of its own for t, in memory when dir is "", else keeping
// its data in dir (so Restart finds it again). It is stopped in t.Cleanup. The test is
// skipped under -short; IOTPROV_TEST_STORAGE is ignored (a shared instance cannot be
// restarted).
func StartAzurite(t testing.TB, dir string) *AzuriteProcess {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: needs Azurite (not run with -short)")
	}
	p, err := start(dir)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(p.Stop)
	return p
}

// Stop sends SIGTERM and waits for Azurite to exit (SIGKILL after a grace period). It is
// safe to call more than once.
func (p *AzuriteProcess) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLocked()
}

func (p *AzuriteProcess) stopLocked() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		// Azurite normally exits at once; a hung one must still not outlive the test.
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
}

// Restart stops Azurite and starts it again on the same ports with the same data
// location, as a storage outage followed by recovery looks to a client.
func (p *AzuriteProcess) Restart(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLocked()
	var err error
	// The ports were just released; another process may grab them in between, which is
	// rare enough on loopback to retry a few times rather than design around.
	for i := 0; i < 5; i++ {
		if err = p.launch(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("testenv: restart azurite: %v", err)
}

// start launches Azurite on ports it picks itself (the zero queuePort and tablePort: it
// prints the ports it listens on), which avoids the race of choosing a free port and
// binding it later. Restart reuses the ports found here.
func start(dir string) (*AzuriteProcess, error) {
	p := &AzuriteProcess{Dir: dir}
	if err := p.launch(); err != nil {
		return nil, err
	}
	return p, nil
}

var listeningRE = regexp.MustCompile(`Azurite (Blob|Queue|Table) service is successfully listening at https?://[^:]+:(\d+)`)

// launch starts the process and waits until the queue and table ports answer. p.mu is held
// (or p is not yet shared).
func (p *AzuriteProcess) launch() error {
	bin, err := findAzurite()
	if err != nil {
		return err
	}
	args := []string{
		"--blobHost", "127.0.0.1", "--blobPort", "0",
		"--queueHost", "127.0.0.1", "--queuePort", strconv.Itoa(p.queuePort),
		"--tableHost", "127.0.0.1", "--tablePort", strconv.Itoa(p.tablePort),
		"--skipApiVersionCheck", "--disableProductStyleUrl", "--disableTelemetry", "--silent",
	}
	if p.Dir == "" {
		// Bounded so that many parallel test binaries do not each reserve half the RAM.
		args = append(args, "--inMemoryPersistence", "--extentMemoryLimit", "256")
	} else {
		if err := os.MkdirAll(p.Dir, 0o700); err != nil {
			return fmt.Errorf("azurite data dir: %w", err)
		}
		args = append(args, "--location", p.Dir)
	}
	cmd := exec.Command(bin, args...)
	// Azurite writes nothing it needs into its working directory with these flags, but a
	// stray debug file must not land in the package directory under test.
	cmd.Dir = os.TempDir()
	if p.Dir != "" {
		cmd.Dir = p.Dir
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logs := &tailBuffer{max: 8 << 10}
	ports := make(chan [2]int, 1)
	var queuePort, tablePort int
	// exec copies Azurite's console into this writer and Wait waits for the copy, so no
	// goroutine of ours reads a pipe that Wait closes.
	cmd.Stdout = &lineWriter{line: func(line string) {
		logs.Write([]byte(line + "\n"))
		m := listeningRE.FindStringSubmatch(line)
		if m == nil {
			return
		}
		port, _ := strconv.Atoi(m[2])
		switch m[1] {
		case "Queue":
			queuePort = port
		case "Table":
			tablePort = port
		}
		if queuePort != 0 && tablePort != 0 {
			select {
			case ports <- [2]int{queuePort, tablePort}:
			default:
			}
		}
	}}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	kill := func() {
		_ = cmd.Process.Kill()
		<-done
	}
	select {
	case pp := <-ports:
		p.queuePort, p.tablePort = pp[0], pp[1]
	case <-done:
		return fmt.Errorf("azurite exited before listening: %s", strings.TrimSpace(logs.String()))
	case <-time.After(startTimeout):
		kill()
		return fmt.Errorf("azurite did not listen within %v: %s", startTimeout, strings.TrimSpace(logs.String()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for _, port := range []int{p.queuePort, p.tablePort} {
		if err := waitPort(ctx, port); err != nil {
			kill()
			return fmt.Errorf("azurite port %d: %w", port, err)
		}
	}
	p.cmd, p.done = cmd, done
	p.ConnectionString = ConnectionString(p.queuePort, p.tablePort)
	return nil
}

// waitPort waits until something accepts TCP connections on the loopback port.
func waitPort(ctx context.Context, port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// findAzurite looks in $AZURITE_BIN, then the module's tools folder, then PATH.
func findAzurite() (string, error) {
	if b := os.Getenv(EnvAzuriteBin); b != "" {
		if _, err := os.Stat(b); err != nil {
			return "", fmt.Errorf("%s=%q: %w; %s", EnvAzuriteBin, b, err, installHint)
		}
		return b, nil
	}
	if root := ModuleRoot(); root != "" {
		b := filepath.Join(root, ".tools", "node_modules", ".bin", "azurite")
		if _, err := os.Stat(b); err == nil {
			return b, nil
		}
	}
	if b, err := exec.LookPath("azurite"); err == nil {
		return b, nil
	}
	return "", errors.New("azurite not found; " + installHint)
}

// ModuleRoot returns the directory containing go.mod, searched from the working directory
// upwards (go test runs in the package directory), or "" if there is none.
func ModuleRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another process can
// take it before the caller binds it; prefer letting a server bind port 0 where possible.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// lineWriter calls line for each complete line written to it.
type lineWriter struct {
	line    func(string)
	partial []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.line(strings.TrimRight(string(w.partial[:i]), "\r"))
		w.partial = w.partial[i+1:]
	}
	if len(w.partial) > 64<<10 { // a console line that long is not one we parse
		w.partial = w.partial[:0]
	}
	return len(p), nil
}

// tailBuffer keeps the last max bytes written, for error messages about a failed start.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (w *tailBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if len(w.b) > w.max {
		w.b = append([]byte(nil), w.b[len(w.b)-w.max:]...)
	}
	return len(p), nil
}

func (w *tailBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.b)
}
