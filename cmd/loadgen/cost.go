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
	StorageTransactions int64   `json:"storageTransactions"`
	TableTransactions   int64   `json:"tableTransactions"`
	QueueTransactions   int64   `json:"queueTransactions"`
	SecretFetches       int64   `json:"secretFetches"`
	CPUSeconds          float64 `json:"cpuSeconds"`
	PeakRSSBytes        int64   `json:"peakRssBytes"`
}

// snapshot is the handler's cost counters at one moment; either half may be missing
// (no /proc access to the handler, or a handler without the metrics route).
type snapshot struct {
	proc    *devstack.ProcStats
	metrics *handlerMetrics
}

// costDelta is what a load cost the handler, per assigned device.
type costDelta struct {
	CPUMsPerDevice          *float64 `json:"cpuMsPerDevice,omitempty"`
	StorageTxPerDevice      *float64 `json:"storageTransactionsPerDevice,omitempty"`
	TableTxPerDevice        *float64 `json:"tableTransactionsPerDevice,omitempty"`
	QueueTxPerDevice        *float64 `json:"queueTransactionsPerDevice,omitempty"`
	SecretReadsPerDevice    *float64 `json:"secretReadsPerDevice,omitempty"`
	HandlerPeakRSSBytes     int64    `json:"handlerPeakRssBytes,omitempty"`
	HandlerCPUSecondsInLoad float64  `json:"handlerCpuSeconds,omitempty"`
}

// handlerProbe takes snapshots of the handler under test.
type handlerProbe struct {
	pid  int // 0: unknown
	base string
	hc   *http.Client
}

func (p *handlerProbe) snapshot(ctx context.Context) snapshot {
	var s snapshot
	if p.pid > 0 {
		if st, err := devstack.ReadProc(p.pid); err == nil {
			s.proc = &st
		}
	}
	if m, err := p.readMetrics(ctx); err == nil {
		s.metrics = m
	}
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

// delta divides what the handler spent between a and b by devices.
func delta(a, b snapshot, devices int) *costDelta {
	if devices <= 0 {
		return nil
	}
	per := func(x float64) *float64 { v := round(x/float64(devices), 3); return &v }
	c := &costDelta{}
	switch {
	case a.proc != nil && b.proc != nil:
		cpu := b.proc.CPU - a.proc.CPU
		c.CPUMsPerDevice = per(float64(cpu) / float64(time.Millisecond))
		c.HandlerCPUSecondsInLoad = round(cpu.Seconds(), 2)
		c.HandlerPeakRSSBytes = b.proc.PeakRSS
	case a.metrics != nil && b.metrics != nil:
		cpu := b.metrics.CPUSeconds - a.metrics.CPUSeconds
		c.CPUMsPerDevice = per(cpu * 1000)
		c.HandlerCPUSecondsInLoad = round(cpu, 2)
		c.HandlerPeakRSSBytes = b.metrics.PeakRSSBytes
	}
	if a.metrics != nil && b.metrics != nil {
		c.StorageTxPerDevice = per(float64(b.metrics.StorageTransactions - a.metrics.StorageTransactions))
		c.TableTxPerDevice = per(float64(b.metrics.TableTransactions - a.metrics.TableTransactions))
		c.QueueTxPerDevice = per(float64(b.metrics.QueueTransactions - a.metrics.QueueTransactions))
		c.SecretReadsPerDevice = per(float64(b.metrics.SecretFetches - a.metrics.SecretFetches))
	}
	return c
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
