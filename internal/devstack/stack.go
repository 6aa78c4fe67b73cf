package devstack

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/iotprov/iotprov/internal/pause"
)

// Ports of the local stack. The defaults are what README and local.settings.sample.json
// use; tests pass free ports.
type Ports struct {
	Blob, Queue, Table, DPS, MQTT, API int
}

// DefaultPorts are Azurite's defaults, 8443 for DPS, 8883 for MQTT over TLS and the
// Functions host's 7071.
var DefaultPorts = Ports{Blob: 10000, Queue: 10001, Table: 10002, DPS: 8443, MQTT: 8883, API: 7071}

// Options configure a stack.
type Options struct {
	Dir         string            // the .local folder (material, data, generated configs)
	Ports       Ports             // zero → DefaultPorts
	BinDir      string            // holds the handler and dpsemu binaries
	AzuriteBin  string            // the azurite executable
	Settings    map[string]string // the handler's app settings (local.settings.json Values); the stack's ports and paths win
	DPSEnv      []string          // DPSEMU_* knobs for the emulator
	NoMosquitto bool              // run without the IoT Hub stand-in
	Log         io.Writer         // where the processes' output goes, line-prefixed
}

// Stack is a running local stack.
type Stack struct {
	opts     Options
	Material Material
	BaseURL  string

	mu     sync.Mutex
	procs  map[string]*exec.Cmd
	exited map[string]chan struct{}
	output map[string]*outputLog
}

// Start makes the dev material and starts every process, returning once each answers.
// On error, whatever started is stopped.
func Start(ctx context.Context, opts Options) (*Stack, error) {
	if opts.Ports == (Ports{}) {
		opts.Ports = DefaultPorts
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	s := &Stack{opts: opts, Material: Material{Dir: opts.Dir}, procs: map[string]*exec.Cmd{}, exited: map[string]chan struct{}{},
		output: map[string]*outputLog{}, BaseURL: fmt.Sprintf("http://127.0.0.1:%d", opts.Ports.API)}
	if err := s.Material.Ensure(); err != nil {
		return nil, fmt.Errorf("dev material: %w", err)
	}
	steps := []func(context.Context) error{s.startAzurite, s.startDPS, s.startMosquitto, s.StartHandler}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

// StartAzurite starts Azurite on the stack's ports with its data in <Dir>/azurite, so
// after StopAzurite it comes back with every queue message and table row it had.
func (s *Stack) StartAzurite(ctx context.Context) error { return s.startAzurite(ctx) }

// StopAzurite stops Azurite (SIGTERM: it flushes its on-disk data), as a storage outage
// would look to the handler.
func (s *Stack) StopAzurite() { s.kill("azurite", syscall.SIGTERM) }

// RestartAzurite stops Azurite and starts it again on the same data folder.
func (s *Stack) RestartAzurite(ctx context.Context) error {
	s.StopAzurite()
	return s.StartAzurite(ctx)
}

// Settings returns the handler's app settings on this stack (what StartHandler passes),
// e.g. AzureWebJobsStorage for a test that reads the tables itself.
func (s *Stack) Settings() map[string]string {
	return Values(s.opts.Dir, s.opts.Ports, s.opts.Settings)
}

// Output returns what the named process ("handler", "dpsemu", "azurite", "mosquitto")
// has written to stdout and stderr so far, over all its restarts, without prefixes.
// It keeps at most maxOutput bytes per process (then only the newest).
func (s *Stack) Output(name string) string {
	s.mu.Lock()
	o := s.output[name]
	s.mu.Unlock()
	if o == nil {
		return ""
	}
	return o.String()
}

func (s *Stack) startAzurite(ctx context.Context) error {
	data := filepath.Join(s.opts.Dir, "azurite")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	p := s.opts.Ports
	args := []string{
		"--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(p.Blob),
		"--queueHost", "127.0.0.1", "--queuePort", strconv.Itoa(p.Queue),
		"--tableHost", "127.0.0.1", "--tablePort", strconv.Itoa(p.Table),
		"--location", data, "--skipApiVersionCheck", "--disableProductStyleUrl", "--disableTelemetry", "--silent",
	}
	if err := s.spawn("azurite", s.opts.AzuriteBin, args, nil); err != nil {
		return err
	}
	for _, port := range []int{p.Queue, p.Table} {
		if err := s.waitTCP(ctx, "azurite", port); err != nil {
			return err
		}
	}
	return nil
}

func (s *Stack) startDPS(ctx context.Context) error {
	chain, key := s.Material.ServerCert("dpsemu")
	args := []string{
		"-listen", fmt.Sprintf("127.0.0.1:%d", s.opts.Ports.DPS),
		"-cert", chain, "-key", key, "-trusted-ca", s.Material.DeviceRootFile(),
		"-id-scope", DPSIDScope, "-hub", "localhost",
	}
	if err := s.spawn("dpsemu", filepath.Join(s.opts.BinDir, "dpsemu"), args, s.opts.DPSEnv); err != nil {
		return err
	}
	return s.waitTCP(ctx, "dpsemu", s.opts.Ports.DPS)
}

// mosquittoConf is the IoT Hub stand-in: TLS on loopback with a server certificate for
// localhost, and a client certificate required that chains to the device CA, as IoT Hub
// requires for X.509 CA-authenticated devices.
func (s *Stack) mosquittoConf() string {
	chain, key := s.Material.ServerCert("mosquitto")
	return fmt.Sprintf(`# Generated by the iotprov local stack: the IoT Hub stand-in.
per_listener_settings true
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username false
allow_anonymous true
persistence false
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
# When started as root, stay root so the generated keys under .local stay readable.
user root
`, s.opts.Ports.MQTT, s.Material.DeviceRootFile(), chain, key)
}

func (s *Stack) startMosquitto(ctx context.Context) error {
	if s.opts.NoMosquitto {
		return nil
	}
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		return fmt.Errorf("mosquitto is not installed (apt-get install -y mosquitto mosquitto-clients), or run without the IoT Hub stand-in: %w", err)
	}
	conf := filepath.Join(s.opts.Dir, "mosquitto.conf")
	if err := writeFile(conf, []byte(s.mosquittoConf()), 0o600); err != nil {
		return err
	}
	if err := s.spawn("mosquitto", bin, []string{"-c", conf}, nil); err != nil {
		return err
	}
	return s.waitTCP(ctx, "mosquitto", s.opts.Ports.MQTT)
}

// startTimeout bounds how long a process may take to answer. Each starts in well under a
// second on an idle machine; the handler also creates its tables and queues first, and on
// a 2-core CI machine running other test packages at once that has taken over 30 s.
const startTimeout = 90 * time.Second

// StartHandler starts the handler in local-runner mode with the stack's settings and waits
// for /healthz. Tests call it again after KillHandler.
func (s *Stack) StartHandler(ctx context.Context) error {
	values := Values(s.opts.Dir, s.opts.Ports, s.opts.Settings)
	var env []string
	for k, v := range values {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	if err := s.spawn("handler", filepath.Join(s.opts.BinDir, "handler"), nil, env); err != nil {
		return err
	}
	// Each probe is bounded and tied to ctx: a handler that accepts the connection but
	// never answers must neither hang past startTimeout nor outlive a cancelled ctx.
	client := &http.Client{Timeout: healthProbeTimeout}
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if s.hasExited("handler") {
			return errors.New("the handler exited at start; its log above says why")
		}
		if s.healthy(ctx, client) {
			return nil
		}
		if err := pause.For(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("the handler did not answer /healthz within %s", startTimeout)
}

// healthProbeTimeout bounds one /healthz probe; a ready handler answers in milliseconds.
const healthProbeTimeout = time.Second

// healthy reports whether the handler answers /healthz with 200 within the client's timeout.
func (s *Stack) healthy(ctx context.Context, client *http.Client) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.BaseURL+"/healthz", nil)
	if err != nil {
		return false
	}
	res, err := client.Do(req)
	if err != nil {
		return false
	}
	// Drain so the connection is reused by the next probe rather than left half-read.
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
	return res.StatusCode == http.StatusOK
}

// KillHandler kills the handler with SIGKILL, as a crash would (fault tests): nothing
// in flight is settled, so its queue messages come back when their leases lapse.
func (s *Stack) KillHandler() { s.kill("handler", syscall.SIGKILL) }

// maxOutput bounds what Output keeps of one process (make run may run for days).
const maxOutput = 64 << 20

// outputLog keeps a process's output for Output, dropping the oldest half when full.
type outputLog struct {
	mu  sync.Mutex
	buf []byte
}

func (o *outputLog) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, b...)
	if len(o.buf) > maxOutput {
		o.buf = append([]byte(nil), o.buf[len(o.buf)-maxOutput/2:]...)
	}
	return len(b), nil
}

func (o *outputLog) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return string(o.buf)
}

// Stop stops every process, the handler first so it drains before storage goes away.
func (s *Stack) Stop() {
	for _, name := range []string{"handler", "mosquitto", "dpsemu", "azurite"} {
		s.kill(name, syscall.SIGTERM)
	}
}

// Wait returns when any process exits, naming it (make run stops the rest then).
func (s *Stack) Wait(ctx context.Context) (string, error) {
	s.mu.Lock()
	cases := map[string]chan struct{}{}
	for k, v := range s.exited {
		cases[k] = v
	}
	s.mu.Unlock()
	done := make(chan string, len(cases))
	for name, ch := range cases {
		go func() {
			select {
			case <-ch:
				done <- name
			case <-ctx.Done():
			}
		}()
	}
	select {
	case name := <-done:
		return name, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// TrustPool returns the pool that verifies the local servers (DPS emulator, stand-in).
func (s *Stack) TrustPool() (*x509.CertPool, error) {
	b, err := os.ReadFile(s.Material.ServerRootFile())
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p, nil
}

// TLSConfig is a client TLS config trusting the local servers.
func (s *Stack) TLSConfig() (*tls.Config, error) {
	p, err := s.TrustPool()
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: p, MinVersion: tls.VersionTLS12}, nil
}

func (s *Stack) spawn(name, bin string, args, env []string) error {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	s.mu.Lock()
	capture := s.output[name]
	if capture == nil {
		capture = &outputLog{}
		s.output[name] = capture
	}
	s.mu.Unlock()
	out := io.MultiWriter(&prefixWriter{prefix: fmt.Sprintf("%-9s| ", name), w: s.opts.Log}, capture)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so Ctrl-C in the terminal reaches only the stack, which
	// stops the processes in order; Pdeathsig so nothing outlives a crashed parent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.procs[name], s.exited[name] = cmd, exited
	s.mu.Unlock()
	return nil
}

func (s *Stack) kill(name string, sig syscall.Signal) {
	s.mu.Lock()
	cmd, exited := s.procs[name], s.exited[name]
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

func (s *Stack) hasExited(name string) bool {
	s.mu.Lock()
	ch := s.exited[name]
	s.mu.Unlock()
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (s *Stack) waitTCP(ctx context.Context, name string, port int) error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if s.hasExited(name) {
			return fmt.Errorf("%s exited at start; its log above says why", name)
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if err := pause.For(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s did not listen on port %d within %s", name, port, startTimeout)
}

// prefixWriter prefixes each line of a process's output with its name.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := strings.IndexByte(string(p.buf), '\n')
		if i < 0 {
			break
		}
		line := p.buf[:i+1]
		w := bufio.NewWriter(p.w)
		_, _ = w.WriteString(p.prefix)
		_, _ = w.Write(line)
		_ = w.Flush()
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}
