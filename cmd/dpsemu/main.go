// Command dpsemu serves the DPS device-registration emulator (internal/dpsemu) over
// HTTPS with mutual TLS, for the local stack: the provisioning worker registers devices
// with it exactly as it would with Azure IoT Hub DPS.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/iotprov/iotprov/internal/dpsemu"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "dpsemu:", err)
		os.Exit(1)
	}
}

// options are the command's settings after flags and environment.
type options struct {
	listen, cert, key, trustedCA, idScope, hub, disabled string
	quota, pollLimit                                     int
	faultRate                                            float64
	latency, assignDelay                                 time.Duration
}

// parseFlags reads flags, each defaulting to its environment variable.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("dpsemu", flag.ContinueOnError)
	fs.SetOutput(stderr)
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	fs.StringVar(&o.listen, "listen", env("DPSEMU_LISTEN", "127.0.0.1:8443"), "address to listen on (env DPSEMU_LISTEN)")
	fs.StringVar(&o.cert, "cert", env("DPSEMU_CERT", ""), "server certificate chain, PEM file (env DPSEMU_CERT)")
	fs.StringVar(&o.key, "key", env("DPSEMU_KEY", ""), "server private key, PEM file (env DPSEMU_KEY)")
	fs.StringVar(&o.trustedCA, "trusted-ca", env("DPSEMU_TRUSTED_CA", ""), "enrollment-group root CAs, PEM bundle file; device chains must verify to one (env DPSEMU_TRUSTED_CA)")
	fs.StringVar(&o.idScope, "id-scope", env("DPSEMU_ID_SCOPE", "0ne00000000"), "ID scope; other scopes get 404 (env DPSEMU_ID_SCOPE)")
	fs.StringVar(&o.hub, "hub", env("DPSEMU_HUB", "localhost"), "IoT Hub hostname devices are assigned to (env DPSEMU_HUB)")
	fs.StringVar(&o.disabled, "disabled", env("DPSEMU_DISABLED", ""), "comma-separated registration IDs whose registration ends \"disabled\" (env DPSEMU_DISABLED)")
	var quota, pollLimit, faultRate, latency, assignDelay string
	fs.StringVar(&quota, "quota", env("DPSEMU_QUOTA_PER_MINUTE", "0"), "registrations per rolling minute, 0 = unlimited; beyond: 429 + Retry-After (env DPSEMU_QUOTA_PER_MINUTE)")
	fs.StringVar(&pollLimit, "poll-limit", env("DPSEMU_POLL_LIMIT", "0"), "status polls per device per 10 s, 0 = unlimited; DPS allows 5 (env DPSEMU_POLL_LIMIT)")
	fs.StringVar(&faultRate, "fault-rate", env("DPSEMU_FAULT_RATE", "0"), "fraction 0..1 of requests answered 500/503 (env DPSEMU_FAULT_RATE)")
	fs.StringVar(&latency, "latency", env("DPSEMU_LATENCY", "0s"), "delay added to every request, a Go duration (env DPSEMU_LATENCY)")
	fs.StringVar(&assignDelay, "assign-delay", env("DPSEMU_ASSIGN_DELAY", "0s"), "how long an operation stays \"assigning\", a Go duration (env DPSEMU_ASSIGN_DELAY)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: dpsemu -cert server.pem -key server-key.pem -trusted-ca ca.pem [flags]")
		fmt.Fprintln(fs.Output(), "\nServes the Azure IoT Hub DPS device-registration API (X.509 attestation over mutual TLS).")
		fmt.Fprintln(fs.Output(), "Every flag defaults to the environment variable named in its description.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	// Settings come from flags or env; a bad one names itself.
	var err error
	if o.quota, err = nonNegativeInt("quota", quota); err != nil {
		return o, err
	}
	if o.pollLimit, err = nonNegativeInt("poll-limit", pollLimit); err != nil {
		return o, err
	}
	if o.faultRate, err = strconv.ParseFloat(faultRate, 64); err != nil || o.faultRate < 0 || o.faultRate > 1 {
		return o, fmt.Errorf("-fault-rate (DPSEMU_FAULT_RATE) must be a number from 0 to 1, got %q", faultRate)
	}
	if o.latency, err = nonNegativeDuration("latency", latency); err != nil {
		return o, err
	}
	if o.assignDelay, err = nonNegativeDuration("assign-delay", assignDelay); err != nil {
		return o, err
	}
	for _, req := range []struct{ name, v string }{{"cert", o.cert}, {"key", o.key}, {"trusted-ca", o.trustedCA}, {"id-scope", o.idScope}} {
		if req.v == "" {
			return o, fmt.Errorf("-%s is required", req.name)
		}
	}
	return o, nil
}

func nonNegativeInt(name, v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("-%s must be a whole number ≥ 0, got %q", name, v)
	}
	return n, nil
}

func nonNegativeDuration(name, v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("-%s must be a Go duration ≥ 0 such as 250ms, got %q", name, v)
	}
	return d, nil
}

// run serves until ctx ends or SIGINT/SIGTERM arrives.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	serverCert, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return fmt.Errorf("loading -cert/-key: %w", err)
	}
	roots, err := loadRoots(o.trustedCA)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))

	disabled := map[string]bool{}
	for _, id := range strings.Split(o.disabled, ",") {
		if id = strings.TrimSpace(id); id != "" {
			disabled[id] = true
		}
	}
	emu := dpsemu.New(dpsemu.Config{
		IDScope:        o.idScope,
		AssignedHub:    o.hub,
		TrustedRoots:   roots,
		QuotaPerMinute: o.quota,
		PollLimit:      o.pollLimit,
		FaultRate:      o.faultRate,
		Latency:        o.latency,
		AssignDelay:    o.assignDelay,
		Logger:         log,
		Outcome: func(id string) (string, int, string) {
			if disabled[id] {
				return "disabled", 0, "The enrollment is disabled."
			}
			return "", 0, ""
		},
	})

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           emu.Handler(),
		TLSConfig:         emu.TLSConfig(serverCert),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	fmt.Fprintf(stdout, "dpsemu listening on https://%s\n", ln.Addr())
	log.Info("dpsemu started", "addr", ln.Addr().String(), "idScope", o.idScope, "hub", o.hub,
		"quotaPerMinute", o.quota, "pollLimit", o.pollLimit, "faultRate", o.faultRate,
		"latency", o.latency, "assignDelay", o.assignDelay)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		return err
	}
	st := emu.Stats()
	log.Info("dpsemu stopped", "registrations", st.Registrations, "assigned", st.Assigned,
		"throttled", st.Throttled, "faults", st.Faults, "polls", st.Polls)
	return nil
}

func loadRoots(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading -trusted-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-trusted-ca %s holds no PEM certificate", path)
	}
	return pool, nil
}
