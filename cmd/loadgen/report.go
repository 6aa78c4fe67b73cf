package main

import (
	"crypto/x509"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// report is everything one bench run measured: what `make bench` prints and writes to
// .local/bench.json.
type report struct {
	Command   string           `json:"command"`
	Started   string           `json:"started"`
	Machine   machine          `json:"machine"`
	ColdStart *coldStartResult `json:"coldStart,omitempty"`
	Floor     *floorResult     `json:"floor,omitempty"`
	Loads     []loadResult     `json:"loads,omitempty"`
	Burst     *burstResult     `json:"burst,omitempty"`
	Rows      []row            `json:"table"`
}

type machine struct {
	CPUs        int    `json:"cpus"`
	CPUModel    string `json:"cpuModel,omitempty"`
	MemoryBytes int64  `json:"memoryBytes,omitempty"`
	GoVersion   string `json:"goVersion"`
	OS          string `json:"os"`
}

// burstResult is the burst load and how it compares with the DPS quota.
type burstResult struct {
	loadResult
	QuotaPerMinute int       `json:"quotaPerMinute"`
	OptimumSeconds float64   `json:"optimumSeconds"`       // devices / quota
	DrainRatio     float64   `json:"drainRatio,omitempty"` // drain time / optimum; 0 when it did not drain
	DPS            *dpsStats `json:"dpsEmulator,omitempty"`
}

// row is one line of the table: a figure, its target and whether it is met.
type row struct {
	Scenario string `json:"scenario"`
	Metric   string `json:"metric"`
	Value    string `json:"value"`
	Target   string `json:"target,omitempty"`
	Met      *bool  `json:"met,omitempty"`
}

func (r *report) hasResults() bool {
	return r.ColdStart != nil || r.Floor != nil || len(r.Loads) > 0 || r.Burst != nil
}

func (r *report) load(name string) *loadResult {
	for i := range r.Loads {
		if r.Loads[i].Name == name {
			return &r.Loads[i]
		}
	}
	return nil
}

// rows lays the figures out with the targets of issue 6.
func (r *report) rows() []row {
	var out []row
	add := func(scenario, metric, value, target string, met *bool) {
		out = append(out, row{scenario, metric, value, target, met})
	}
	check := func(ok bool) *bool { return &ok }
	for _, l := range r.Loads {
		name := l.Name
		add(name, "devices assigned / failed / pending", fmt.Sprintf("%d / %d / %d", l.Assigned, l.Failed, l.Pending), "all assigned", check(l.Assigned == l.Devices))
		if l.OfferedRate > 0 {
			add(name, "offered rate", fmt.Sprintf("%.1f devices/s", l.OfferedRate), "", nil)
		}
		var target string
		var met *bool
		if name == "throughput-p256" {
			target, met = "≥ 200", check(l.DevicesPerSec >= 200)
		}
		add(name, "throughput", fmt.Sprintf("%.1f devices/s (%d in %.1f s, %d in flight max)", l.DevicesPerSec, l.Assigned, l.Seconds, l.Concurrency), target, met)
		target, met = "", nil
		if strings.HasPrefix(name, "latency") {
			target, met = "p99 ≤ 500 ms", check(l.Assigned > 0 && l.Latency.P99 <= 500)
		}
		add(name, "latency seen by device p50/p95/p99", fmt.Sprintf("%.0f / %.0f / %.0f ms", l.Latency.P50, l.Latency.P95, l.Latency.P99), target, met)
		if s := l.ServiceLatency; s != nil {
			add(name, "service latency (created→assigned) p50/p95/p99", fmt.Sprintf("%.0f / %.0f / %.0f ms", s.P50, s.P95, s.P99), "", nil)
		}
		if l.Throttled+l.Unavailable > 0 {
			add(name, "429 / 503 seen by devices", fmt.Sprintf("%d / %d", l.Throttled, l.Unavailable), "", nil)
		}
		if c := l.Cost; c != nil {
			if c.CPUMsPerDevice != nil {
				add(name, "handler CPU per device", fmt.Sprintf("%.2f ms", *c.CPUMsPerDevice), "", nil)
				if r.Floor != nil && name == "throughput-p256" && r.Floor.TotalMs > 0 {
					ratio := *c.CPUMsPerDevice / r.Floor.TotalMs
					add("cost", "handler CPU / floor", fmt.Sprintf("%.2f× (%.2f ms / %.2f ms)", ratio, *c.CPUMsPerDevice, r.Floor.TotalMs), "≤ 3×", check(ratio <= 3))
				}
			} else {
				add(name, "handler CPU per device", "unknown (no /proc access to the handler)", "", nil)
			}
			if len(c.StackCPUMsPerDevice) > 0 {
				metric, value := stackCPURow(c.StackCPUMsPerDevice)
				add(name, metric, value, "", nil)
			}
			if c.CPUBoundDevicesPerSec != nil {
				add(name, "devices/s these cores allow at this CPU per device", cpuBoundValue(*c.CPUBoundDevicesPerSec, r.Machine.CPUs, c.StackCPUMsPerDevice[totalKey]), "", nil)
			}
			if name == "throughput-p256" || name == "throughput-csr" {
				if c.StorageTxPerDevice != nil {
					add(name, "storage transactions per device", fmt.Sprintf("%.2f (tables %.2f, queue %.2f, host's queue %.2f)", *c.StorageTxPerDevice, *c.TableTxPerDevice, *c.QueueTxPerDevice, *c.HostQueueTxPerDevice), "≤ 8", check(*c.StorageTxPerDevice <= 8))
					add(name, "Key Vault (secret source) reads per device", fmt.Sprintf("%.4f", *c.SecretReadsPerDevice), "≤ 0.01", check(*c.SecretReadsPerDevice <= 0.01))
				} else {
					add(name, "storage transactions / secret reads per device", "unknown (handler without GET /debug/metrics)", "≤ 8 / ≤ 0.01", nil)
				}
				if c.HandlerPeakRSSBytes > 0 {
					add(name, "handler peak RSS", mib(c.HandlerPeakRSSBytes), "", nil)
				}
			}
		}
	}
	if f := r.Floor; f != nil {
		add("floor", "CPU per device: keygen + sign + DPS handshake", fmt.Sprintf("%.3f + %.3f + %.3f = %.3f ms", f.KeygenMs, f.SignMs, f.HandshakeMs, f.TotalMs), "", nil)
	}
	if b := r.Burst; b != nil {
		drained := b.Pending == 0 && b.Failed == 0
		value := fmt.Sprintf("%.1f s for %d devices (optimum %.0f s at %d/min)", b.Seconds, b.Devices, b.OptimumSeconds, b.QuotaPerMinute)
		if b.Pending > 0 {
			value = fmt.Sprintf("did not drain: %d of %d pending at the deadline (%d assigned)", b.Pending, b.Devices, b.Assigned)
		}
		add("burst", "time to drain", value, "≤ 1.1× optimum", check(drained && b.DrainRatio > 0 && b.DrainRatio <= 1.1))
		if b.DrainRatio > 0 {
			add("burst", "drain / optimum", fmt.Sprintf("%.2f×", b.DrainRatio), "≤ 1.1×", check(b.DrainRatio <= 1.1))
		}
		add("burst", "failures", fmt.Sprintf("%d", b.Failed), "0", check(b.Failed == 0))
		dps := "unknown (emulator counters are read from a stack the bench started)"
		if b.DPS != nil {
			dps = fmt.Sprintf("%d (registrations %d, polls %d)", b.DPS.Throttled, b.DPS.Registrations, b.DPS.Polls)
		}
		add("burst", "DPS 429s (emulator)", dps, "", nil)
		if b.dps != nil {
			add("burst", "worker deferrals (re-enqueued)", fmt.Sprintf("%d", b.dps.HandlerDeferrals), "", nil)
		}
	}
	if c := r.ColdStart; c != nil {
		add("cold start", "exec → first answer on GET / (median of "+fmt.Sprint(c.Runs)+")", fmt.Sprintf("%.1f ms (p95 %.1f, max %.1f)", c.MedianMs, c.Startup.P95, c.Startup.Max), "≤ 50 ms", check(c.MedianMs <= 50))
		add("cold start", "idle RSS", mib(c.IdleRSSBytes), "≤ 25 MB", check(c.IdleRSSBytes > 0 && c.IdleRSSBytes <= 25<<20))
		add("cold start", "binary size", mib(c.BinaryBytes), "≤ 25 MB", check(c.BinaryBytes <= 25<<20))
	}
	return out
}

// stackCPURow is the table row of a load's CPU per device by process: the metric names
// the processes measured, in stackProcesses order, and the value lists those not
// measured, so that a total over some of them is not read as the whole stack's.
func stackCPURow(perDevice map[string]float64) (metric, value string) {
	var names, figures, missing []string
	for _, name := range stackProcesses {
		v, ok := perDevice[name]
		if !ok {
			missing = append(missing, name)
			continue
		}
		names = append(names, name)
		figures = append(figures, fmt.Sprintf("%.2f", v))
	}
	metric = "stack CPU per device (" + strings.Join(names, " / ") + " = total)"
	value = fmt.Sprintf("%s = %.2f ms", strings.Join(figures, " / "), perDevice[totalKey])
	if len(missing) > 0 {
		value += " (not measured: " + strings.Join(missing, ", ") + ")"
	}
	return metric, value
}

// cpuBoundValue shows the rate the machine's CPUs allow and how it follows from them.
func cpuBoundValue(devicesPerSec float64, cpus int, totalMs float64) string {
	return fmt.Sprintf("%.1f devices/s (%d CPUs / %.2f ms)", devicesPerSec, cpus, totalMs)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func printTable(w io.Writer, r *report) {
	m := r.Machine
	fmt.Fprintf(w, "iotprov bench — %d CPUs (%s), %.1f GiB, %s, %s\n\n", m.CPUs, m.CPUModel, float64(m.MemoryBytes)/(1<<30), m.GoVersion, r.Started)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tmetric\tvalue\ttarget\t")
	for _, x := range r.Rows {
		mark := ""
		if x.Met != nil {
			mark = "ok"
			if !*x.Met {
				mark = "MISSED"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s %s\t\n", x.Scenario, x.Metric, x.Value, x.Target, mark)
	}
	_ = tw.Flush()
}

func newPool(pemBytes []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pemBytes)
	return p
}
