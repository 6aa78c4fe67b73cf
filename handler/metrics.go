package main

import (
	"encoding/json"
	"net/http"
	"runtime"
	"syscall"
	"time"
)

// startedAt is when the process started (near enough: package initialisation), for the
// uptime the metrics report.
var startedAt = time.Now()

// metrics is what GET /debug/metrics answers on the local runner: counters since the
// handler started, which the benchmark (cmd/loadgen) reads before and after a scenario
// and divides by the devices it provisioned. Every figure is a count or a size: nothing
// here can carry a key, token or device identity.
type metrics struct {
	// Storage requests made by this process: Azure Tables (operations, and the devices
	// table when the device policy is on), Queues (register's enqueues), and on the local
	// runner the host's own queue requests (receive, delete, release, lease renewal),
	// which in Azure the Functions host makes and bills to the same account.
	// StorageTransactions is their sum.
	TableTransactions     int64 `json:"tableTransactions"`
	QueueTransactions     int64 `json:"queueTransactions"`
	HostQueueTransactions int64 `json:"hostQueueTransactions"`
	StorageTransactions   int64 `json:"storageTransactions"`
	// SecretFetches counts calls to the secret source behind the TTL cache: Key Vault
	// reads in Azure, file reads on the local stack.
	SecretFetches int64 `json:"secretFetches"`
	// The process itself, so a benchmark of a stack it did not start needs no /proc.
	CPUSeconds    float64 `json:"cpuSeconds"`    // user + system
	PeakRSSBytes  int64   `json:"peakRssBytes"`  // getrusage ru_maxrss
	HeapBytes     uint64  `json:"heapBytes"`     // runtime.MemStats.HeapAlloc
	Goroutines    int     `json:"goroutines"`    // in flight: invocations, polls, connections
	UptimeSeconds float64 `json:"uptimeSeconds"` // since the process started
}

// handleMetrics serves the counters as JSON. It is meant for the local runner's mux only
// (127.0.0.1); the Functions host has Application Insights for this.
func (a *app) handleMetrics(w http.ResponseWriter, r *http.Request) {
	var m metrics
	if a.store != nil {
		m.TableTransactions = a.store.Transactions()
	}
	if a.devices != nil {
		m.TableTransactions += a.devices.Transactions()
	}
	if a.hostQueue != nil {
		m.HostQueueTransactions = a.hostQueue.Transactions()
	}
	if a.queue != nil {
		m.QueueTransactions = a.queue.Transactions()
	}
	m.StorageTransactions = m.TableTransactions + m.QueueTransactions + m.HostQueueTransactions
	if a.secrets != nil {
		m.SecretFetches = a.secrets.Fetches()
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		m.CPUSeconds = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
		m.PeakRSSBytes = int64(ru.Maxrss) << 10 // kilobytes on Linux
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m.HeapBytes = ms.HeapAlloc
	m.Goroutines = runtime.NumGoroutine()
	m.UptimeSeconds = time.Since(startedAt).Seconds()

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(m)
}
