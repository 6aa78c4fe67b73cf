package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/devstack"
)

// metricsPath is the handler's counters on the local runner (handler/metrics.go).
const metricsPath = "/debug/metrics"

// handlerMetrics is the part of GET /debug/metrics the bench uses.
type handlerMetrics struct {
	StorageTransactions int64 `json:"storageTransactions"`
	TableTransactions   int64 `json:"tableTransactions"`
	QueueTransactions   int64 `json:"queueTransactions"`
	// HostQueueTransactions: the local runner's receive/delete/renew, which the
	// Functions host makes in Azure (billed to the same account).
	HostQueueTransactions int64   `json:"hostQueueTransactions"`
	SecretFetches         int64   `json:"secretFetches"`
	CPUSeconds            float64 `json:"cpuSeconds"`
	PeakRSSBytes          int64   `json:"peakRssBytes"`
}

// snapshot is the handler's cost counters at one moment; either half may be missing
// (no /proc access to the handler, or a handler without the metrics route).
type snapshot struct {
	proc    *devstack.ProcStats
	metrics *handlerMetrics
	// cpu is the CPU time of the stack's other processes and of loadgen itself, by name
	// (see stackProcesses); a process that could not be read is absent, not zero.
	cpu map[string]time.Duration
}

// stackProcesses are the processes sharing the machine during a load, in the order the
// table shows them. The docs say these cores, not the handler, bound throughput: the
// handler's CPU alone cannot show that, the sum of all of them can.
var stackProcesses = []string{"azurite", "dpsemu", "handler", "loadgen"}

// totalKey is the sum of the processes measured in costDelta.StackCPUMsPerDevice.
const totalKey = "total"

// costDelta is what a load cost the handler, per assigned device.
type costDelta struct {
	CPUMsPerDevice          *float64 `json:"cpuMsPerDevice,omitempty"`
	StorageTxPerDevice      *float64 `json:"storageTransactionsPerDevice,omitempty"`
	TableTxPerDevice        *float64 `json:"tableTransactionsPerDevice,omitempty"`
	QueueTxPerDevice        *float64 `json:"queueTransactionsPerDevice,omitempty"`
	HostQueueTxPerDevice    *float64 `json:"hostQueueTransactionsPerDevice,omitempty"`
	SecretReadsPerDevice    *float64 `json:"secretReadsPerDevice,omitempty"`
	HandlerPeakRSSBytes     int64    `json:"handlerPeakRssBytes,omitempty"`
	HandlerCPUSecondsInLoad float64  `json:"handlerCpuSeconds,omitempty"`
	// StackCPUMsPerDevice is the CPU per device of each process measured (stackProcesses)
	// and their "total"; an unmeasured process is left out, never reported as 0.
	StackCPUMsPerDevice map[string]float64 `json:"stackCpuMsPerDevice,omitempty"`
	// CPUBoundDevicesPerSec is cores / total CPU per device: the rate these cores would
	// allow if nothing but CPU limited it. Only when all of stackProcesses were measured,
	// since a partial total would overstate it.
	CPUBoundDevicesPerSec *float64 `json:"cpuBoundDevicesPerSec,omitempty"`
}

// handlerProbe takes snapshots of the handler under test, and of the CPU time of the
// rest of the stack and of loadgen.
type handlerProbe struct {
	pid int // 0: unknown
	// others are the PIDs of the stack's other processes ("azurite", "dpsemu"), known
	// only for a stack the bench started; a stack started elsewhere leaves it empty.
	others map[string]int
	base   string
	hc     *http.Client
}

func (p *handlerProbe) snapshot(ctx context.Context) snapshot {
	s := snapshot{cpu: map[string]time.Duration{}}
	if p.pid > 0 {
		if st, err := devstack.ReadProc(p.pid); err == nil {
			s.proc = &st
		}
	}
	if m, err := p.readMetrics(ctx); err == nil {
		s.metrics = m
	}
	for name, pid := range p.others {
		if pid <= 0 {
			continue
		}
		if st, err := devstack.ReadProc(pid); err == nil {
			s.cpu[name] = st.CPU
		}
	}
	s.cpu["loadgen"] = cpuTime()
	return s
}

// readMetrics reads the handler's counters; a handler without the route answers 404,
// and the bench then reports the storage and secret figures as unknown.
func (p *handlerProbe) readMetrics(ctx context.Context) (*handlerMetrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+metricsPath, nil)
	if err != nil {
		return nil, err
	}
	res, err := p.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", metricsPath, res.Status)
	}
	var m handlerMetrics
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<16)).Decode(&m); err != nil {
		return nil, err
	}
	return &m, nil
}

// delta divides what the handler, and each process of the stack, spent between a and b
// by devices; cores is the machine's CPU count, for the rate its CPU allows.
func delta(a, b snapshot, devices, cores int) *costDelta {
	if devices <= 0 {
		return nil
	}
	per := func(x float64) *float64 { v := round(x/float64(devices), 3); return &v }
	c := &costDelta{}
	// handlerMs is the handler's CPU over the whole load, from one source for both ends.
	var handlerMs *float64
	switch {
	case a.proc != nil && b.proc != nil:
		cpu := b.proc.CPU - a.proc.CPU
		c.CPUMsPerDevice = per(float64(cpu) / float64(time.Millisecond))
		c.HandlerCPUSecondsInLoad = round(cpu.Seconds(), 2)
		c.HandlerPeakRSSBytes = b.proc.PeakRSS
		handlerMs = new(float64(cpu) / float64(time.Millisecond))
	case a.metrics != nil && b.metrics != nil:
		cpu := b.metrics.CPUSeconds - a.metrics.CPUSeconds
		c.CPUMsPerDevice = per(cpu * 1000)
		c.HandlerCPUSecondsInLoad = round(cpu, 2)
		c.HandlerPeakRSSBytes = b.metrics.PeakRSSBytes
		handlerMs = new(cpu * 1000)
	}
	c.StackCPUMsPerDevice = stackCPUPerDevice(a.cpu, b.cpu, handlerMs, devices)
	c.CPUBoundDevicesPerSec = cpuBound(c.StackCPUMsPerDevice, cores)
	if a.metrics != nil && b.metrics != nil {
		c.StorageTxPerDevice = per(float64(b.metrics.StorageTransactions - a.metrics.StorageTransactions))
		c.TableTxPerDevice = per(float64(b.metrics.TableTransactions - a.metrics.TableTransactions))
		c.QueueTxPerDevice = per(float64(b.metrics.QueueTransactions - a.metrics.QueueTransactions))
		c.HostQueueTxPerDevice = per(float64(b.metrics.HostQueueTransactions - a.metrics.HostQueueTransactions))
		c.SecretReadsPerDevice = per(float64(b.metrics.SecretFetches - a.metrics.SecretFetches))
	}
	return c
}

// stackCPUPerDevice is each process's CPU between the snapshots a and b per device, in
// ms, with handlerMs (the handler's CPU over the load, nil if unknown) under "handler",
// and their total. A process missing from either snapshot is left out: its figure is
// unknown, and a 0 would understate the total.
func stackCPUPerDevice(a, b map[string]time.Duration, handlerMs *float64, devices int) map[string]float64 {
	if devices <= 0 {
		return nil
	}
	loadMs := map[string]float64{}
	for name, after := range b {
		if before, ok := a[name]; ok && after >= before {
			loadMs[name] = float64(after-before) / float64(time.Millisecond)
		}
	}
	if handlerMs != nil && *handlerMs >= 0 {
		loadMs["handler"] = *handlerMs
	}
	if len(loadMs) == 0 {
		return nil
	}
	out := map[string]float64{}
	var total float64
	for name, v := range loadMs {
		out[name] = round(v/float64(devices), 3)
		total += v
	}
	out[totalKey] = round(total/float64(devices), 3)
	return out
}

// cpuBound is the devices per second cores CPUs allow at the measured total CPU per
// device: nil unless every one of stackProcesses was measured.
func cpuBound(perDevice map[string]float64, cores int) *float64 {
	for _, name := range stackProcesses {
		if _, ok := perDevice[name]; !ok {
			return nil
		}
	}
	total := perDevice[totalKey]
	if cores <= 0 || total <= 0 {
		return nil
	}
	return new(round(float64(cores)*1000/total, 1))
}

// floorResult is the least CPU one device can cost: what the handler must do whatever
// its design — generate the P-256 key, sign the certificate, and make one mutual-TLS
// handshake with DPS — measured in this process, one device after another.
type floorResult struct {
	Devices        int     `json:"devices"`
	KeygenMs       float64 `json:"keygenCpuMs"`
	SignMs         float64 `json:"signCpuMs"`
	HandshakeMs    float64 `json:"tlsHandshakeCpuMs"`
	TotalMs        float64 `json:"totalCpuMs"`
	HandshakeWall  float64 `json:"tlsHandshakeWallMs"`
	DPSAddress     string  `json:"dpsAddress"`
	SigningCAChain int     `json:"signingChainLength"`
}

// measureFloor runs n devices' worth of key generation, signing and DPS handshakes with
// the stack's CA bundle (the Key Vault secret's stand-in) against the emulator at dpsAddr.
func measureFloor(ctx context.Context, caBundle []byte, dpsAddr string, serverRoots *x509.CertPool, n int) (*floorResult, error) {
	authority, err := ca.ParseAuthority(caBundle, time.Now())
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	profile, err := ca.NewProfile(ca.ProfileConfig{})
	if err != nil {
		return nil, err
	}
	res := &floorResult{Devices: n, DPSAddress: dpsAddr, SigningCAChain: 1 + len(authority.Intermediates)}

	keys := make([]crypto.Signer, n)
	t0 := cpuTime()
	for i := range keys {
		if keys[i], err = ca.GenerateKey(ca.ECDSAP256); err != nil {
			return nil, err
		}
	}
	t1 := cpuTime()
	certs := make([]tls.Certificate, n)
	for i, k := range keys {
		issued, err := profile.Issue(authority, ca.Request{DeviceID: fmt.Sprintf("floor-%05d", i), PublicKey: k.Public()}, time.Now())
		if err != nil {
			return nil, err
		}
		chain := [][]byte{issued.Certificate.Raw, authority.Certificate.Raw}
		for _, c := range authority.Intermediates {
			chain = append(chain, c.Raw)
		}
		certs[i] = tls.Certificate{Certificate: chain, PrivateKey: k}
	}
	t2 := cpuTime()
	host, _, err := net.SplitHostPort(dpsAddr)
	if err != nil {
		return nil, err
	}
	wall := time.Now()
	for _, c := range certs {
		if err := handshake(ctx, dpsAddr, host, serverRoots, c); err != nil {
			return nil, fmt.Errorf("TLS handshake with DPS at %s: %w", dpsAddr, err)
		}
	}
	wallPer := time.Since(wall) / time.Duration(n)
	t3 := cpuTime()
	per := func(d time.Duration) float64 { return round(float64(d)/float64(n)/float64(time.Millisecond), 3) }
	res.KeygenMs, res.SignMs, res.HandshakeMs = per(t1-t0), per(t2-t1), per(t3-t2)
	res.TotalMs = per(t3 - t0)
	res.HandshakeWall = ms(wallPer)
	return res, nil
}

// handshake makes one mutual-TLS handshake as the DPS client does (TLS 1.2+, the device
// chain as client certificate, the server verified) and reads one byte so that, under
// TLS 1.3, the server has processed the client certificate too before we hang up.
func handshake(ctx context.Context, addr, serverName string, roots *x509.CertPool, cert tls.Certificate) error {
	d := tls.Dialer{Config: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	// A minimal request the emulator answers (404: no such path): proves the server
	// accepted our certificate, as a register PUT would.
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+serverName+"\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	buf := make([]byte, 1)
	if _, err := c.Read(buf); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// cpuTime is this process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
