// Command handler is iotprov's Azure Functions custom handler. Started by the Functions
// host (FUNCTIONS_CUSTOMHANDLER_PORT set) it serves the host on 127.0.0.1:<port>: the
// device routes at their own paths (HTTP forwarding), POST /provision (queue trigger) and
// POST /purge (timer trigger). Started without it, it is the local runner: the device
// routes on IOTPROV_LISTEN_ADDR plus /healthz, and an in-process stand-in for the host
// that polls the queue and fires the timer.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/iotprov/iotprov/internal/config"
	"github.com/iotprov/iotprov/internal/localrun"
	"github.com/iotprov/iotprov/internal/queue"
)

func main() {
	os.Exit(run())
}

func run() int {
	tuneGC(os.Getenv)
	cfg, err := config.Load(os.Getenv)
	if err != nil {
		// One line naming the setting: the first thing an operator sees in the host log.
		fmt.Fprintln(os.Stderr, "iotprov handler: bad setting "+err.Error())
		return 2
	}
	log := newLogger(cfg.LogLevel)
	// Packages that log without being handed a logger (the secret cache's stale-value
	// warning) use the default one: make it this one, JSON at the configured level.
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	a, err := newApp(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "iotprov handler: "+err.Error())
		return 2
	}
	if cfg.Functions {
		err = serve(ctx, log, "127.0.0.1:"+cfg.CustomHandlerPort, a.functionsMux(), nil)
	} else {
		err = runLocal(ctx, log, cfg, a)
	}
	if err != nil {
		log.Error("handler stopped", "err", err)
		return 1
	}
	return 0
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// runLocal is the local runner: storage is created if missing, the device API listens on
// the configured address, and the runner drives provision and purge.
func runLocal(ctx context.Context, log *slog.Logger, cfg *config.Config, a *app) error {
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := a.ensureStorage(ectx)
	cancel()
	if err != nil {
		return fmt.Errorf("create tables and queues: %w", err)
	}
	// The runner reads host.json, as the Functions host does: one source of truth.
	host, hostPath, err := localrun.LoadHostJSON(".")
	if err != nil {
		return err
	}
	if host.MaxDequeueCount != int64(cfg.MaxDequeueCount) {
		return fmt.Errorf("%s is %d but %s has maxDequeueCount %d: they must be equal",
			config.MaxDequeueCount, cfg.MaxDequeueCount, hostPath, host.MaxDequeueCount)
	}
	hostQueue := localrun.NewStorageQueue(a.queueService, queue.Name)
	a.hostQueue = hostQueue
	runner := localrun.NewRunner(host, hostQueue, a.functionsMux(), log)
	runner.PurgeInterval = 15 * time.Minute // functions/purge/function.json schedule
	var tlsConf *tls.Config
	if cfg.TLSListenAddr != "" {
		c, err := deviceTLSConfig(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return err
		}
		tlsConf = c
	}
	errc := make(chan error, 2)
	servers := 1
	go func() { errc <- serve(ctx, log, cfg.ListenAddr, a.localMux(), nil) }()
	if tlsConf != nil {
		servers++
		go func() { errc <- serve(ctx, log, cfg.TLSListenAddr, a.localMux(), tlsConf) }()
	}
	runErr := runner.Run(ctx)
	errs := []error{runErr}
	for range servers {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

// deviceTLSConfig is the local runner's HTTPS listener. It asks for a client certificate
// but does not verify it in the handshake: the x509 authenticator does, so that a bad
// certificate gets the API's JSON 401 with a stable code instead of a TLS alert, and
// devices using other methods can use the same listener without one.
func deviceTLSConfig(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", config.TLSCertFile, config.TLSKeyFile, err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// serve listens until ctx ends, then drains in-flight requests; with tlsConf it serves
// HTTPS.
func serve(ctx context.Context, log *slog.Logger, addr string, h http.Handler, tlsConf *tls.Config) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	log.Info("handler listening", "addr", ln.Addr().String(), "tls", tlsConf != nil)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
