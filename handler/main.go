// Command handler is iotprov's Azure Functions custom handler. Started by the Functions
// host (FUNCTIONS_CUSTOMHANDLER_PORT set) it serves the host on 127.0.0.1:<port>: the
// device routes at their own paths (HTTP forwarding), POST /provision (queue trigger) and
// POST /purge (timer trigger). Started without it, it is the local runner: the device
// routes on IOTPROV_LISTEN_ADDR plus /healthz, and an in-process stand-in for the host
// that polls the queue and fires the timer.
package main

import (
	"context"
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
)

func main() {
	os.Exit(run())
}

func run() int {
	cfg, err := config.Load(os.Getenv)
	if err != nil {
		// One line naming the setting: the first thing an operator sees in the host log.
		fmt.Fprintln(os.Stderr, "iotprov handler: bad setting "+err.Error())
		return 2
	}
	log := newLogger(cfg.LogLevel)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	a, err := newApp(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "iotprov handler: "+err.Error())
		return 2
	}
	if cfg.Functions {
		err = serve(ctx, log, "127.0.0.1:"+cfg.CustomHandlerPort, a.functionsMux())
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
	runner := &localrun.Runner{
		Queue:             a.queue,
		Functions:         a.functionsMux(),
		MaxDequeueCount:   int64(cfg.MaxDequeueCount),
		VisibilityTimeout: 30 * time.Second, // host.json visibilityTimeout
		BatchSize:         16,               // host.json batchSize
		Lease:             5 * time.Minute,  // the function timeout
		MaxPollInterval:   2 * time.Second,  // host.json maxPollingInterval
		PurgeInterval:     15 * time.Minute, // functions/purge/function.json schedule
		Log:               log,
	}
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx, log, cfg.ListenAddr, a.localMux()) }()
	runErr := runner.Run(ctx)
	return errors.Join(<-errc, runErr)
}

// serve listens until ctx ends, then drains in-flight requests.
func serve(ctx context.Context, log *slog.Logger, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	log.Info("handler listening", "addr", ln.Addr().String())
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
