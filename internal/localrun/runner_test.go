package localrun

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/funcs"
	"github.com/iotprov/iotprov/internal/queue"
)

// fakeQueue hands out its messages once and records how each was settled.
type fakeQueue struct {
	mu      sync.Mutex
	pending []queue.Received
	settled map[string]string
	done    chan struct{}
}

var _ Queue = (*fakeQueue)(nil)

func (q *fakeQueue) Receive(context.Context, int32, time.Duration) ([]queue.Received, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	m := q.pending
	q.pending = nil
	return m, nil
}

func (q *fakeQueue) settle(r queue.Received, how string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.settled[r.ID] = how
	if len(q.settled) == 3 {
		close(q.done)
	}
	return nil
}
func (q *fakeQueue) Delete(_ context.Context, r queue.Received) error { return q.settle(r, "deleted") }
func (q *fakeQueue) Release(_ context.Context, r queue.Received, _ time.Duration) error {
	return q.settle(r, "released")
}
func (q *fakeQueue) MoveToPoison(_ context.Context, r queue.Received) error {
	return q.settle(r, "poisoned")
}

// TestHostSemantics: success deletes, failure releases for a retry, and failure on the
// last allowed delivery moves the message to the poison queue — with the invocation body
// in the host's shape, decodable by funcs.
func TestHostSemantics(t *testing.T) {
	q := &fakeQueue{settled: map[string]string{}, done: make(chan struct{}), pending: []queue.Received{
		{ID: "ok", DequeueCount: 1, Body: []byte(`{"operationId":"a","deviceId":"ok"}`)},
		{ID: "retry", DequeueCount: 2, Body: []byte(`{"operationId":"a","deviceId":"fail"}`)},
		{ID: "poison", DequeueCount: 5, Body: []byte(`{"operationId":"a","deviceId":"fail"}`)},
	}}
	fn := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		trig, err := funcs.ParseQueueTrigger(body, "message")
		if err != nil {
			t.Errorf("invocation body not in the host's shape: %v", err)
			w.WriteHeader(500)
			return
		}
		m, err := queue.ParseMessage(trig.Item)
		if err != nil || m.DeviceID == "fail" {
			w.WriteHeader(500)
			return
		}
		w.WriteHeader(200)
	})
	r := &Runner{Queue: q, Functions: fn, MaxDequeueCount: 5, VisibilityTimeout: time.Second, BatchSize: 16,
		Lease: time.Minute, MaxPollInterval: 10 * time.Millisecond, PurgeInterval: time.Hour,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-q.done:
		case <-time.After(5 * time.Second):
		}
		cancel()
	}()
	_ = r.Run(ctx)
	want := map[string]string{"ok": "deleted", "retry": "released", "poison": "poisoned"}
	for id, how := range want {
		if q.settled[id] != how {
			t.Errorf("%s: %q, want %q", id, q.settled[id], how)
		}
	}
}
