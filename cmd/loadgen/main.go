// Command loadgen is iotprov's load generator and benchmark (`make bench`). It simulates
// devices against the local stack exactly as a device runs the README's flow — SAS token
// from the stack's group key, register, poll honouring Retry-After — and verifies every
// certificate it gets (chain to the device root, CN, key match); optionally each device
// sends its own CSR.
//
// By default it starts its own stack (internal/devstack: free ports, a temporary .local)
// and runs the benchmark scenarios of issue 6: cold start, the per-device CPU floor,
// throughput with server-generated keys and with CSRs, latency at a fixed offered rate,
// and a burst at the DPS quota on a second stack whose emulator enforces it. It prints one
// table and writes the figures as JSON (-out). With -base it uses a stack that is already
// running (make run) instead. Targets are reported, never asserted: the bench exits 0
// whenever it could measure.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/iotprov/iotprov/internal/config"
	"github.com/iotprov/iotprov/internal/devstack"
	"github.com/iotprov/iotprov/internal/storageconn"
	"github.com/iotprov/iotprov/internal/store"
)

func main() {
	os.Exit(run())
}

// options are the command's flags.
type options struct {
	base, dir, bin, azurite, sample, dps, out, logFile, scenarios string
	n, concurrency, burstN, burstQuota, coldRuns, floorN, warmup  int
	rate                                                          float64
	csr                                                           bool
	latencyFor, deadline, burstDeadline, minPoll                  time.Duration
	set                                                           settingFlags
}

// benchDefaults are where the bench's stack differs from the local stack's sample
// settings, to measure what infra/ deploys: the sample turns the device policy on to show
// it off (make run), the deployment leaves it off by default. With it on ("open" or
// "allowlist") every register reads the devices table once more, which the storage count
// includes: -set IOTPROV_DEVICE_POLICY=open shows it.
var benchDefaults = map[string]string{config.DevicePolicy: "off"}

// settingFlags are -set KEY=VALUE overrides of the handler's settings (repeatable).
type settingFlags map[string]string

func (s settingFlags) String() string { return fmt.Sprint(map[string]string(s)) }
func (s settingFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	s[k] = val
	return nil
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.base, "base", "", "device API of a running stack (make run: http://127.0.0.1:7071); empty starts a stack of its own")
	fs.StringVar(&o.dir, "dir", ".local", "the running stack's folder (group key, CA, roots); with its own stack a temporary folder is used")
	fs.StringVar(&o.bin, "bin", "bin", "folder holding the handler and dpsemu binaries")
	fs.StringVar(&o.azurite, "azurite", filepath.Join(".tools", "node_modules", ".bin", "azurite"), "the azurite executable")
	fs.StringVar(&o.sample, "sample", "local.settings.sample.json", "the handler's settings for a stack of its own")
	fs.StringVar(&o.dps, "dps", "localhost:8443", "the running stack's DPS emulator (host:port), for the floor")
	fs.StringVar(&o.out, "out", filepath.Join(".local", "bench.json"), "where to write the figures as JSON")
	fs.StringVar(&o.logFile, "log", filepath.Join(".local", "bench-stack.log"), "where the stack's own output goes")
	fs.StringVar(&o.scenarios, "scenarios", "coldstart,floor,throughput,csr,latency,burst",
		"comma-separated: coldstart, floor, throughput, csr, latency, burst; or load (one load from -n -concurrency -rate -csr)")
	fs.IntVar(&o.n, "n", 2000, "devices per throughput load (and for -scenarios load); fewer are dominated by the ramp-up")
	fs.IntVar(&o.concurrency, "concurrency", 800, "devices in flight at most (throughput and load): enough to keep the handler's 512 provisionings busy while devices wait out Retry-After")
	fs.Float64Var(&o.rate, "rate", 50, "offered devices/s for the latency scenario (and for load; 0 = as fast as -concurrency allows)")
	fs.BoolVar(&o.csr, "csr", false, "load: devices send their own CSR")
	fs.DurationVar(&o.latencyFor, "latency-for", 10*time.Second, "how long the latency scenario offers -rate")
	fs.DurationVar(&o.deadline, "deadline", 3*time.Minute, "longest one throughput, latency or custom load may take")
	fs.IntVar(&o.burstN, "burst", 3000, "devices registering at once in the burst scenario")
	fs.IntVar(&o.burstQuota, "burst-quota", 1000, "the emulator's registrations per minute in the burst scenario")
	fs.DurationVar(&o.burstDeadline, "burst-deadline", 5*time.Minute, "longest the burst may take to drain")
	fs.IntVar(&o.coldRuns, "coldstart-runs", 20, "handler starts timed for the cold start")
	fs.IntVar(&o.floorN, "floor-n", 200, "devices' worth of keygen + signing + DPS handshake for the floor")
	fs.IntVar(&o.warmup, "warmup", 10, "devices provisioned before measuring (caches, connections)")
	o.set = settingFlags{}
	fs.Var(o.set, "set", "KEY=VALUE: a handler setting for the bench's own stack and the cold start, over -sample's (repeatable)")
	fs.DurationVar(&o.minPoll, "min-poll", 0, "a device never polls faster than this (0: exactly what Retry-After says)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, s := range strings.Split(o.scenarios, ",") {
		switch strings.TrimSpace(s) {
		case "coldstart", "floor", "throughput", "csr", "latency", "burst", "load":
		default:
			return o, fmt.Errorf("-scenarios: unknown scenario %q", s)
		}
	}
	if o.n < 1 || o.concurrency < 1 || o.burstN < 1 || o.coldRuns < 1 || o.floorN < 1 || o.rate < 0 || o.burstQuota < 0 || o.warmup < 0 {
		return o, errors.New("-n, -concurrency, -burst, -coldstart-runs and -floor-n must be ≥ 1; -rate, -burst-quota and -warmup ≥ 0")
	}
	return o, nil
}

func (o options) want(s string) bool {
	for _, x := range strings.Split(o.scenarios, ",") {
		if strings.TrimSpace(x) == s {
			return true
		}
	}
	return false
}

func run() int {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	b := &bench{o: o, log: log, report: &report{Command: "loadgen " + strings.Join(os.Args[1:], " "),
		Started: time.Now().UTC().Format(time.RFC3339), Machine: machineInfo()}}
	if err := b.run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		if b.report.hasResults() {
			b.finish()
		}
		return 1
	}
	b.finish()
	return 0
}

// bench runs the scenarios and collects the report.
type bench struct {
	o      options
	log    *slog.Logger
	report *report
	logOut *os.File
	// burstLog is the burst stack's output: the emulator's counters arrive in it when
	// the stack stops, after the burst scenario has returned.
	burstLog *stackLog
}

func (b *bench) run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(b.o.logFile), 0o755); err != nil {
		return err
	}
	f, err := os.Create(b.o.logFile)
	if err != nil {
		return err
	}
	b.logOut = f
	defer f.Close()

	dir := b.o.dir
	if b.o.base == "" {
		tmp, err := os.MkdirTemp("", "iotprov-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	mat := devstack.Material{Dir: dir}
	if err := mat.Ensure(); err != nil {
		return fmt.Errorf("dev material: %w", err)
	}
	sample, err := devstack.ReadSample(b.o.sample)
	if err != nil {
		return err
	}
	for k, v := range benchDefaults {
		sample[k] = v
	}
	for k, v := range b.o.set {
		sample[k] = v
	}

	// Cold start first, while nothing else runs on the machine.
	if b.o.want("coldstart") {
		b.log.Info("cold start", "runs", b.o.coldRuns)
		var env []string
		for k, v := range devstack.Values(dir, devstack.DefaultPorts, sample) {
			env = append(env, k+"="+v)
		}
		cs, err := measureColdStart(ctx, filepath.Join(b.o.bin, "handler"), env, b.o.coldRuns)
		if err != nil {
			return fmt.Errorf("cold start: %w", err)
		}
		b.report.ColdStart = cs
	}

	if b.o.want("floor") || b.o.want("throughput") || b.o.want("csr") || b.o.want("latency") || b.o.want("load") {
		if err := b.withStack(ctx, dir, sample, nil, b.mainScenarios); err != nil {
			return err
		}
	}
	if b.o.want("burst") {
		env := []string{"DPSEMU_QUOTA_PER_MINUTE=" + strconv.Itoa(b.o.burstQuota), "DPSEMU_POLL_LIMIT=5"}
		if err := b.withStack(ctx, dir, sample, env, b.burst); err != nil {
			return err
		}
	}
	return nil
}

// target is the stack a scenario runs against.
type target struct {
	fleet   *fleet
	probe   *handlerProbe
	store   *store.Store // nil when storage is unreachable from here
	dpsAddr string
	logs    *stackLog
	mat     devstack.Material
}

// withStack starts a stack of its own (on free ports, dpsEnv for the emulator) or
// attaches to the running one, runs fn, and stops what it started.
func (b *bench) withStack(ctx context.Context, dir string, sample map[string]string, dpsEnv []string, fn func(context.Context, *target) error) error {
	logs := &stackLog{w: b.logOut}
	mat := devstack.Material{Dir: dir}
	var values map[string]string
	base, dpsAddr, pid := b.o.base, b.o.dps, 0
	var stack *devstack.Stack
	// others are the stack's other processes, whose CPU the loads report too; known only
	// for a stack started here.
	others := map[string]int{}
	if base == "" {
		var ports devstack.Ports
		for _, p := range []*int{&ports.Blob, &ports.Queue, &ports.Table, &ports.DPS, &ports.MQTT, &ports.API} {
			n, err := freePort()
			if err != nil {
				return err
			}
			*p = n
		}
		b.log.Info("starting a local stack", "dir", dir, "dpsEnv", dpsEnv, "log", b.o.logFile)
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		s, err := devstack.Start(sctx, devstack.Options{Dir: dir, Ports: ports, BinDir: b.o.bin, AzuriteBin: b.o.azurite,
			Settings: sample, DPSEnv: dpsEnv, NoMosquitto: true, Log: logs})
		cancel()
		if err != nil {
			return fmt.Errorf("start the local stack (its output is in %s): %w", b.o.logFile, err)
		}
		stack = s
		base, dpsAddr, pid = s.BaseURL, fmt.Sprintf("localhost:%d", ports.DPS), s.PID("handler")
		for _, name := range []string{"azurite", "dpsemu"} {
			if p := s.PID(name); p > 0 {
				others[name] = p
			}
		}
		values = devstack.Values(dir, ports, sample)
	} else {
		values = devstack.Values(dir, devstack.DefaultPorts, sample)
		if u, err := url.Parse(base); err == nil {
			if port, err := strconv.Atoi(u.Port()); err == nil {
				if p, err := devstack.ListenerPID(port); err == nil {
					pid = p
				} else {
					b.log.Warn("handler CPU and memory come from /debug/metrics only", "err", err)
				}
			}
		}
	}
	t, err := b.newTarget(mat, base, dpsAddr, pid, others, values, logs)
	if err == nil {
		err = fn(ctx, t)
	}
	if stack != nil {
		stack.Stop()
	}
	return err
}

func (b *bench) newTarget(mat devstack.Material, base, dpsAddr string, pid int, others map[string]int, values map[string]string, logs *stackLog) (*target, error) {
	raw, err := os.ReadFile(mat.SecretFile(devstack.SecretSASGroupKey))
	if err != nil {
		return nil, err
	}
	groupKey, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("the SAS group key is not base64: %w", err)
	}
	rootPEM, err := os.ReadFile(mat.DeviceRootFile())
	if err != nil {
		return nil, err
	}
	roots := newPool(rootPEM)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, MaxConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}}
	t := &target{
		fleet:   &fleet{base: base, hc: hc, groupKey: groupKey, deviceRoots: roots, minPoll: b.o.minPoll},
		probe:   &handlerProbe{pid: pid, others: others, base: base, hc: &http.Client{Timeout: 10 * time.Second}},
		dpsAddr: dpsAddr, logs: logs, mat: mat,
	}
	if tables, _, err := storageconn.Open(storageconn.Settings{ConnectionString: values["AzureWebJobsStorage"]}, nil); err == nil {
		t.store = store.New(tables)
	}
	return t, nil
}

// mainScenarios: the floor, the throughput loads (their cost per device), latency.
func (b *bench) mainScenarios(ctx context.Context, t *target) error {
	prefix := runPrefix()
	if b.o.warmup > 0 {
		b.log.Info("warm-up", "devices", b.o.warmup)
		w := runLoad(ctx, t.fleet, loadSpec{Name: "warmup", N: b.o.warmup, Concurrency: b.o.warmup, Deadline: time.Minute}, prefix+"-w")
		if w.Assigned != w.Devices {
			return fmt.Errorf("warm-up: %d of %d devices assigned (%v); see %s", w.Assigned, w.Devices, w.Errors, b.o.logFile)
		}
	}
	if b.o.want("floor") {
		b.log.Info("floor", "devices", b.o.floorN)
		bundle, err := os.ReadFile(t.mat.SecretFile(devstack.SecretCA))
		if err != nil {
			return err
		}
		serverRoot, err := os.ReadFile(t.mat.ServerRootFile())
		if err != nil {
			return err
		}
		fl, err := measureFloor(ctx, bundle, t.dpsAddr, newPool(serverRoot), b.o.floorN)
		if err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		b.report.Floor = fl
	}
	loads := []struct {
		name string
		spec loadSpec
	}{
		{"throughput", loadSpec{Name: "throughput-p256", N: b.o.n, Concurrency: b.o.concurrency, Deadline: b.o.deadline}},
		{"csr", loadSpec{Name: "throughput-csr", N: b.o.n, Concurrency: b.o.concurrency, CSR: true, Deadline: b.o.deadline}},
		{"latency", loadSpec{Name: fmt.Sprintf("latency-%gps", b.o.rate), N: max(1, int(b.o.rate*b.o.latencyFor.Seconds())),
			Concurrency: max(1, int(b.o.rate*b.o.latencyFor.Seconds())), Rate: b.o.rate, Deadline: b.o.deadline}},
		{"load", loadSpec{Name: "load", N: b.o.n, Concurrency: b.o.concurrency, Rate: b.o.rate, CSR: b.o.csr, Deadline: b.o.deadline}},
	}
	for i, l := range loads {
		if !b.o.want(l.name) {
			continue
		}
		r := b.measureLoad(ctx, t, l.spec, fmt.Sprintf("%s-%d", prefix, i))
		b.report.Loads = append(b.report.Loads, r)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// measureLoad runs one load with the handler's cost counters, and the CPU time of the
// stack's processes and of loadgen, read around it.
func (b *bench) measureLoad(ctx context.Context, t *target, spec loadSpec, prefix string) loadResult {
	b.log.Info("load", "name", spec.Name, "devices", spec.N, "concurrency", spec.Concurrency, "rate", spec.Rate, "csr", spec.CSR)
	defBefore, _ := t.logs.counts()
	before := t.probe.snapshot(ctx)
	r := runLoad(ctx, t.fleet, spec, prefix)
	after := t.probe.snapshot(ctx)
	defAfter, _ := t.logs.counts()
	r.Cost = delta(before, after, r.Assigned, b.report.Machine.CPUs)
	r.dps = &dpsThrottleLog{HandlerDeferrals: defAfter - defBefore}
	if t.store != nil {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		if p, err := serviceLatency(sctx, t.store, r.outcomes); err == nil {
			r.ServiceLatency = p
		} else {
			b.log.Warn("service latency unavailable", "err", err)
		}
		cancel()
	}
	b.log.Info("load done", "name", r.Name, "assigned", r.Assigned, "failed", r.Failed, "pending", r.Pending,
		"seconds", r.Seconds, "devicesPerSec", r.DevicesPerSec, "p99ms", r.Latency.P99)
	return r
}

// burst: burstN devices at once against an emulator enforcing burstQuota per minute.
func (b *bench) burst(ctx context.Context, t *target) error {
	spec := loadSpec{Name: "burst", N: b.o.burstN, Concurrency: b.o.burstN, Deadline: b.o.burstDeadline}
	r := b.measureLoad(ctx, t, spec, runPrefix()+"-b")
	br := &burstResult{loadResult: r, QuotaPerMinute: b.o.burstQuota}
	if b.o.burstQuota > 0 {
		br.OptimumSeconds = round(float64(b.o.burstN)/float64(b.o.burstQuota)*60, 1)
		if r.Pending == 0 && r.Seconds > 0 {
			br.DrainRatio = round(r.Seconds/br.OptimumSeconds, 2)
		}
	}
	b.report.Burst = br
	// The emulator's own counters arrive when it stops; the caller stops the stack after
	// this returns, so read them in finish via the log.
	b.burstLog = t.logs
	return nil
}

// runPrefix makes device IDs unique per run, so a running stack's earlier devices (and
// the per-device minimum interval) do not interfere.
func runPrefix() string {
	var r [3]byte
	_, _ = rand.Read(r[:])
	return "bench-" + hex.EncodeToString(r[:])
}

func (b *bench) finish() {
	if b.burstLog != nil && b.report.Burst != nil {
		if _, st := b.burstLog.counts(); st != nil {
			b.report.Burst.DPS = st
		}
	}
	b.report.Rows = b.report.rows()
	printTable(os.Stdout, b.report)
	if err := os.MkdirAll(filepath.Dir(b.o.out), 0o755); err == nil {
		data, _ := json.MarshalIndent(b.report, "", "  ")
		if err := os.WriteFile(b.o.out, append(data, '\n'), 0o644); err == nil {
			fmt.Printf("\nwrote %s (stack output: %s)\n", b.o.out, b.o.logFile)
		} else {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
		}
	}
}

// machineInfo describes where the figures were measured.
func machineInfo() machine {
	m := machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				f := strings.Fields(rest)
				if len(f) == 2 {
					if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
						m.MemoryBytes = kb << 10
					}
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}
