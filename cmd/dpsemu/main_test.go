package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/dps"
	"github.com/iotprov/iotprov/internal/dpsemu/dpsemutest"
)

func TestParseFlags(t *testing.T) {
	base := []string{"-cert", "c.pem", "-key", "k.pem", "-trusted-ca", "ca.pem"}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, o options)
		wantErr string
	}{
		{name: "ok/defaults", args: base, check: func(t *testing.T, o options) {
			if o.listen != "127.0.0.1:8443" || o.idScope != "0ne00000000" || o.hub != "localhost" ||
				o.quota != 0 || o.pollLimit != 0 || o.faultRate != 0 || o.latency != 0 || o.assignDelay != 0 {
				t.Errorf("options = %+v", o)
			}
		}},
		{name: "ok/environment", env: map[string]string{
			"DPSEMU_LISTEN": "127.0.0.1:9000", "DPSEMU_ID_SCOPE": "0ne1", "DPSEMU_HUB": "h", "DPSEMU_QUOTA_PER_MINUTE": "1000",
			"DPSEMU_POLL_LIMIT": "5", "DPSEMU_FAULT_RATE": "0.25", "DPSEMU_LATENCY": "150ms", "DPSEMU_ASSIGN_DELAY": "2s",
			"DPSEMU_CERT": "c", "DPSEMU_KEY": "k", "DPSEMU_TRUSTED_CA": "ca", "DPSEMU_DISABLED": "a,b",
		}, check: func(t *testing.T, o options) {
			want := options{listen: "127.0.0.1:9000", cert: "c", key: "k", trustedCA: "ca", idScope: "0ne1", hub: "h", disabled: "a,b",
				quota: 1000, pollLimit: 5, faultRate: 0.25, latency: 150 * time.Millisecond, assignDelay: 2 * time.Second}
			if o != want {
				t.Errorf("options = %+v, want %+v", o, want)
			}
		}},
		{name: "ok/flag beats environment", args: append([]string{"-quota", "7"}, base...), env: map[string]string{"DPSEMU_QUOTA_PER_MINUTE": "1000"},
			check: func(t *testing.T, o options) {
				if o.quota != 7 {
					t.Errorf("quota = %d", o.quota)
				}
			}},
		{name: "fail/missing cert", args: []string{"-key", "k", "-trusted-ca", "ca"}, wantErr: "-cert is required"},
		{name: "fail/negative quota", args: append([]string{"-quota", "-1"}, base...), wantErr: "-quota"},
		{name: "fail/fault rate above 1", env: map[string]string{"DPSEMU_FAULT_RATE": "1.5"}, args: base, wantErr: "DPSEMU_FAULT_RATE"},
		{name: "fail/latency not a duration", env: map[string]string{"DPSEMU_LATENCY": "100"}, args: base, wantErr: "-latency"},
		{name: "fail/stray argument", args: append(base, "extra"), wantErr: "unexpected argument"},
		{name: "fail/help", args: []string{"-h"}, wantErr: "help requested"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			o, err := parseFlags(tt.args, getenv, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
		})
	}
}

func TestUsageNamesEnvironment(t *testing.T) {
	var b strings.Builder
	_, err := parseFlags([]string{"-h"}, func(string) string { return "" }, &b)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	for _, v := range []string{"DPSEMU_LISTEN", "DPSEMU_ID_SCOPE", "DPSEMU_HUB", "DPSEMU_QUOTA_PER_MINUTE", "DPSEMU_POLL_LIMIT",
		"DPSEMU_FAULT_RATE", "DPSEMU_LATENCY", "DPSEMU_ASSIGN_DELAY", "-trusted-ca", "-cert", "-key"} {
		if !strings.Contains(b.String(), v) {
			t.Errorf("usage does not mention %s", v)
		}
	}
}

// syncWriter lets the test read what run writes from another goroutine.
type syncWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func writePEM(t *testing.T, path, typ string, ders ...[]byte) {
	t.Helper()
	var b []byte
	for _, d := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestRun(t *testing.T) {
	pki := dpsemutest.NewPKI(t)
	dir := t.TempDir()
	srvCert := pki.Server(t)
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvCert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "server.pem"), "CERTIFICATE", srvCert.Certificate...)
	writePEM(t, filepath.Join(dir, "server-key.pem"), "PRIVATE KEY", keyDER)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", pki.Root.Raw)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outR, outW := io.Pipe()
	var logs syncWriter
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-cert", filepath.Join(dir, "server.pem"),
			"-key", filepath.Join(dir, "server-key.pem"), "-trusted-ca", filepath.Join(dir, "ca.pem"),
			"-disabled", "dev-off"}, func(string) string { return "" }, outW, &logs)
		outW.Close()
	}()
	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatalf("no ready line: %v (logs: %s)", err, logs.String())
	}
	go func() { _, _ = io.Copy(io.Discard, outR) }()
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "dpsemu listening on https://")
	if !ok {
		t.Fatalf("ready line = %q", line)
	}

	c, err := dps.New(dps.Config{Endpoint: addr, IDScope: "0ne00000000", RootCAs: pki.Roots, MinPollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		id      string
		wantErr bool
	}{
		{name: "ok/assigned", id: "dev-1"},
		{name: "fail/disabled", id: "dev-off", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
			defer rcancel()
			op, err := c.RegisterAndWait(rctx, tt.id, pki.Device(t, tt.id))
			if tt.wantErr {
				var de *dps.Error
				if !errors.As(err, &de) || de.Transient() || op == nil || op.Status != dps.StatusDisabled {
					t.Fatalf("op = %+v, err = %v", op, err)
				}
				return
			}
			if err != nil || op.State.AssignedHub != "localhost" || op.State.DeviceID != tt.id {
				t.Fatalf("op = %+v, err = %v", op, err)
			}
		})
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
	out := logs.String()
	if !strings.Contains(out, `"registrationId":"dev-1"`) || !strings.Contains(out, `"status":202`) ||
		!strings.Contains(out, `"msg":"dpsemu stopped"`) {
		t.Errorf("logs lack request lines:\n%s", out)
	}
	if strings.Contains(out, "CERTIFICATE") || strings.Contains(out, "PRIVATE KEY") {
		t.Error("logs carry PEM")
	}
}
