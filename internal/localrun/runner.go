// Package localrun stands in for the Azure Functions host on the local stack: it polls
// the provision queue and fires the purge timer, and invokes the handler's /provision and
// /purge functions in-process with the host's own (double-encoded) invocation payloads
// and the host's queue semantics: a failed invocation makes the message visible again
// after visibilityTimeout, and once its dequeue count reaches maxDequeueCount it moves
// to the poison queue.
package localrun

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/iotprov/iotprov/internal/funcs"
	"github.com/iotprov/iotprov/internal/queue"
)

// Queue is the part of queue.Queue the runner needs.
type Queue interface {
	Receive(ctx context.Context, max int32, visibility time.Duration) ([]queue.Received, error)
	Delete(ctx context.Context, r queue.Received) error
	Release(ctx context.Context, r queue.Received, visibility time.Duration) error
	MoveToPoison(ctx context.Context, r queue.Received) error
}

// Runner is the local Functions host.
type Runner struct {
	Queue     Queue
	Functions http.Handler // serves POST /provision and POST /purge

	MaxDequeueCount   int64         // host.json extensions.queues.maxDequeueCount
	VisibilityTimeout time.Duration // host.json: delay before a failed message is retried
	BatchSize         int32         // host.json: messages fetched per poll
	Lease             time.Duration // invisibility while a message is being processed
	MaxPollInterval   time.Duration // host.json maxPollingInterval: longest idle wait
	PurgeInterval     time.Duration // the timer's period (function.json schedule)
	Log               *slog.Logger
}

// Run polls until ctx ends. It waits for in-flight invocations before returning.
func (r *Runner) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.timer(ctx) }()
	idle := 50 * time.Millisecond
	for ctx.Err() == nil {
		msgs, err := r.Queue.Receive(ctx, r.BatchSize, r.Lease)
		if err != nil {
			if ctx.Err() == nil {
				r.Log.Warn("localrun: queue receive failed", "err", err)
			}
			sleep(ctx, r.MaxPollInterval)
			continue
		}
		if len(msgs) == 0 {
			sleep(ctx, idle)
			idle = min(idle*2, r.MaxPollInterval)
			continue
		}
		idle = 50 * time.Millisecond
		var batch sync.WaitGroup
		for _, m := range msgs {
			batch.Add(1)
			go func() { defer batch.Done(); r.deliver(ctx, m) }()
		}
		batch.Wait()
	}
	wg.Wait()
	return nil
}

// deliver invokes provision for one message and settles it as the host would.
func (r *Runner) deliver(ctx context.Context, m queue.Received) {
	body := funcs.NewQueueInvocation("message", m.Body, funcs.QueueMetadata{
		DequeueCount: m.DequeueCount, ID: m.ID, PopReceipt: m.PopReceipt,
		InsertionTime: m.InsertionTime, ExpirationTime: m.ExpirationTime, NextVisibleTime: m.NextVisibleTime,
	})
	status := r.invoke(ctx, "/provision", body)
	// Settling uses a context of its own: a message we processed must be deleted even
	// while the runner is shutting down, or it would be delivered again.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	log := r.Log.With("messageId", m.ID, "dequeueCount", m.DequeueCount)
	var err error
	switch {
	case status >= 200 && status < 300:
		err = r.Queue.Delete(sctx, m)
	case m.DequeueCount >= r.MaxDequeueCount:
		log.Error("localrun: message moved to the poison queue", "status", status)
		err = r.Queue.MoveToPoison(sctx, m)
	default:
		log.Warn("localrun: invocation failed; message will be retried", "status", status)
		err = r.Queue.Release(sctx, m, r.VisibilityTimeout)
	}
	if err != nil {
		log.Error("localrun: could not settle message", "err", err)
	}
}

func (r *Runner) timer(ctx context.Context) {
	t := time.NewTicker(r.PurgeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if status := r.invoke(ctx, "/purge", funcs.NewTimerInvocation("timer", false)); status != http.StatusOK {
				r.Log.Warn("localrun: purge invocation failed", "status", status)
			}
		}
	}
}

// invoke posts an invocation to the handler in-process, exactly as the host would over HTTP.
func (r *Runner) invoke(ctx context.Context, path string, body []byte) int {
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	r.Functions.ServeHTTP(rec, req)
	return rec.Code
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
