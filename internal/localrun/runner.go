// Package localrun stands in for the Azure Functions host on the local stack: it polls
// the provision queue and fires the purge timer, and invokes the handler's /provision and
// /purge functions in-process with the host's own (double-encoded) invocation payloads
// and the host's queue semantics, read from the same host.json: batches of batchSize,
// a new batch once in-flight work drops to newBatchThreshold, a failed invocation makes
// the message visible again after visibilityTimeout, and once its dequeue count reaches
// maxDequeueCount it moves to the poison queue. While a message is processed it is kept
// invisible under a short lease that is renewed, so the messages of a killed handler come
// back within seconds.
package localrun

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotprov/iotprov/internal/funcs"
	"github.com/iotprov/iotprov/internal/pause"
	"github.com/iotprov/iotprov/internal/queue"
)

// Queue is the part of queue.Queue the runner needs. A Queue that is also a LeaseRenewer
// (StorageQueue) gets short, renewed leases.
type Queue interface {
	Receive(ctx context.Context, max int32, visibility time.Duration) ([]queue.Received, error)
	Delete(ctx context.Context, r queue.Received) error
	Release(ctx context.Context, r queue.Received, visibility time.Duration) error
	MoveToPoison(ctx context.Context, r queue.Received) error
}

// DefaultLeaseRenewal is the lease a message is received under when the queue can renew
// it: a killed handler's messages are visible again at most this long after the kill.
const DefaultLeaseRenewal = 30 * time.Second

// Runner is the local Functions host.
type Runner struct {
	Queue     Queue
	Functions http.Handler // serves POST /provision and POST /purge

	MaxDequeueCount   int64         // host.json extensions.queues.maxDequeueCount
	VisibilityTimeout time.Duration // host.json: delay before a failed message is retried
	BatchSize         int32         // host.json: messages fetched per poll
	NewBatchThreshold int           // host.json: fetch the next batch when in-flight work drops to this
	Lease             time.Duration // host.json functionTimeout: the longest one invocation holds a message
	LeaseRenewal      time.Duration // short lease, renewed while processing (LeaseRenewer queues); 0 → DefaultLeaseRenewal
	MaxPollInterval   time.Duration // host.json maxPollingInterval: longest idle wait
	PurgeInterval     time.Duration // the timer's period (function.json schedule)
	Log               *slog.Logger
}

// NewRunner is a runner configured from host.json's settings (LoadHostJSON). The caller
// sets PurgeInterval.
func NewRunner(h HostSettings, q Queue, functions http.Handler, log *slog.Logger) *Runner {
	return &Runner{
		Queue: q, Functions: functions, Log: log,
		MaxDequeueCount:   h.MaxDequeueCount,
		VisibilityTimeout: h.VisibilityTimeout,
		BatchSize:         h.BatchSize,
		NewBatchThreshold: h.NewBatchThreshold,
		Lease:             h.FunctionTimeout,
		MaxPollInterval:   h.MaxPollingInterval,
	}
}

// Run polls until ctx ends. It waits for in-flight invocations before returning.
func (r *Runner) Run(ctx context.Context) error {
	log := r.logger()
	renewer, renews := r.Queue.(LeaseRenewer)
	lease := r.Lease
	if renews {
		lease = r.leaseRenewal()
	}
	log.Info("localrun: queue listener started", "batchSize", r.BatchSize, "newBatchThreshold", r.NewBatchThreshold,
		"maxDequeueCount", r.MaxDequeueCount, "visibilityTimeout", r.VisibilityTimeout, "lease", lease,
		"leaseRenewed", renews, "functionTimeout", r.Lease, "maxPollingInterval", r.MaxPollInterval)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.timer(ctx) }()

	var inFlight atomic.Int64
	wake := make(chan struct{}, 1) // an invocation finished
	idle := 50 * time.Millisecond
	for ctx.Err() == nil {
		// The host fetches the next batch once in-flight work has drained to the
		// threshold, not when the whole batch is done: one slow DPS registration must not
		// hold back the rest of the queue.
		if inFlight.Load() > int64(r.NewBatchThreshold) {
			select {
			case <-wake:
			case <-ctx.Done():
			}
			continue
		}
		msgs, err := r.Queue.Receive(ctx, r.BatchSize, lease)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("localrun: queue receive failed", "err", err)
			}
			_ = pause.For(ctx, r.MaxPollInterval)
			continue
		}
		if len(msgs) == 0 {
			_ = pause.For(ctx, idle)
			idle = min(idle*2, r.MaxPollInterval)
			continue
		}
		idle = 50 * time.Millisecond
		for _, m := range msgs {
			inFlight.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if renews {
					r.deliverRenewing(ctx, renewer, m, lease)
				} else {
					r.deliver(ctx, func() queue.Received { return m }, m)
				}
				inFlight.Add(-1)
				select {
				case wake <- struct{}{}:
				default:
				}
			}()
		}
	}
	wg.Wait()
	return nil
}

func (r *Runner) leaseRenewal() time.Duration {
	if r.LeaseRenewal > 0 {
		return r.LeaseRenewal
	}
	return DefaultLeaseRenewal
}

// deliverRenewing delivers m while renewing its lease every third of it, up to the
// function timeout, then settles it with the latest pop receipt.
func (r *Runner) deliverRenewing(ctx context.Context, renewer LeaseRenewer, m queue.Received, lease time.Duration) {
	var (
		mu      sync.Mutex
		current = m
	)
	get := func() queue.Received { mu.Lock(); defer mu.Unlock(); return current }
	rctx, stop := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(lease / 3)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
			}
			next, err := renewer.Renew(rctx, get(), lease)
			switch {
			case err == nil:
				mu.Lock()
				current = next
				mu.Unlock()
			case errors.Is(err, ErrLeaseLost):
				r.logger().Warn("localrun: message lease lost while processing", "messageId", m.ID, "err", err)
				return
			case rctx.Err() == nil:
				// Storage blip: try again at the next tick; the lease has two more thirds.
				r.logger().Warn("localrun: lease renewal failed", "messageId", m.ID, "err", err)
			}
		}
	}()
	r.deliver(ctx, get, m, func() { stop(); <-renewed })
	stop()
	<-renewed
}

// deliver invokes provision for one message and settles it as the host would. current
// gives the message as last renewed; beforeSettle stops renewals before settling.
func (r *Runner) deliver(ctx context.Context, current func() queue.Received, m queue.Received, beforeSettle ...func()) {
	body := funcs.NewQueueInvocation("message", m.Body, funcs.QueueMetadata{
		DequeueCount: m.DequeueCount, ID: m.ID, PopReceipt: m.PopReceipt,
		InsertionTime: m.InsertionTime, ExpirationTime: m.ExpirationTime, NextVisibleTime: m.NextVisibleTime,
		MethodName: provisionFunction, // sys.MethodName: the host sends the function's name
	})
	ictx := ctx
	if r.Lease > 0 {
		// The function timeout: the host abandons an invocation that runs longer.
		var cancel context.CancelFunc
		ictx, cancel = context.WithTimeout(ctx, r.Lease)
		defer cancel()
	}
	start := time.Now()
	status := r.invoke(ictx, "/"+provisionFunction, body)
	took := time.Since(start)
	for _, f := range beforeSettle {
		f()
	}
	// Settling uses a context of its own: a message we processed must be deleted even
	// while the runner is shutting down, or it would be delivered again.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	settle := current()
	log := r.logger().With("messageId", m.ID, "dequeueCount", m.DequeueCount)
	log.Debug("localrun: provision invoked", "status", status, "took", took)
	var err error
	switch {
	case ok(status):
		err = r.Queue.Delete(sctx, settle)
	case m.DequeueCount >= r.MaxDequeueCount:
		log.Error("localrun: message moved to the poison queue", "status", status)
		err = r.Queue.MoveToPoison(sctx, settle)
	default:
		log.Warn("localrun: invocation failed; message will be retried", "status", status)
		err = r.Queue.Release(sctx, settle, r.VisibilityTimeout)
	}
	if err != nil {
		log.Error("localrun: could not settle message", "err", err)
	}
}

func (r *Runner) logger() *slog.Logger {
	if r.Log != nil {
		return r.Log
	}
	return slog.Default()
}

func (r *Runner) timer(ctx context.Context) {
	if r.PurgeInterval <= 0 {
		return // no timer configured
	}
	t := time.NewTicker(r.PurgeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if status := r.invoke(ctx, "/"+purgeFunction, funcs.NewTimerInvocation("timer", false)); !ok(status) {
				r.logger().Warn("localrun: purge invocation failed", "status", status)
			}
		}
	}
}

// The function names (functions/<name>/function.json): the path the host posts an
// invocation to, and the sys.MethodName it sends.
const (
	provisionFunction = "provision"
	purgeFunction     = "purge"
)

// invoke posts an invocation to the handler in-process, exactly as the host would over
// HTTP. Like the host, it does not surface a failed invocation's Logs (the Functions host
// logs them only for a 2xx answer): the handler logs its own failures.
func (r *Runner) invoke(ctx context.Context, path string, body []byte) int {
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	r.Functions.ServeHTTP(rec, req)
	return rec.Code
}

func ok(status int) bool { return status >= 200 && status < 300 }
