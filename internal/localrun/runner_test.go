package localrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/funcs"
	"github.com/iotprov/iotprov/internal/queue"
	"github.com/iotprov/iotprov/internal/storageconn"
	"github.com/iotprov/iotprov/internal/testenv"
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
		// The host names the function in sys.MethodName.
		var env struct {
			Metadata struct {
				Sys struct{ MethodName string } `json:"sys"`
			}
		}
		if err := json.Unmarshal(body, &env); err != nil || env.Metadata.Sys.MethodName != "provision" {
			t.Errorf("sys.MethodName = %q (%v), want the function name provision", env.Metadata.Sys.MethodName, err)
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

// batchQueue serves n messages in batches and records, at each Receive, how many
// invocations were still running.
type batchQueue struct {
	mu        sync.Mutex
	next, n   int
	inFlight  *atomic.Int64
	atReceive []int64
	deleted   int
	allDone   chan struct{}
}

func (q *batchQueue) Receive(_ context.Context, max int32, _ time.Duration) ([]queue.Received, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []queue.Received
	for len(out) < int(max) && q.next < q.n {
		out = append(out, queue.Received{ID: fmt.Sprint(q.next), DequeueCount: 1, Body: []byte(`{"operationId":"a","deviceId":"b"}`)})
		q.next++
	}
	if len(out) > 0 {
		q.atReceive = append(q.atReceive, q.inFlight.Load())
	}
	return out, nil
}
func (q *batchQueue) Delete(context.Context, queue.Received) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.deleted++
	if q.deleted == q.n {
		close(q.allDone)
	}
	return nil
}
func (q *batchQueue) Release(context.Context, queue.Received, time.Duration) error { return nil }
func (q *batchQueue) MoveToPoison(context.Context, queue.Received) error           { return nil }

// TestNewBatchThreshold: like the host, the runner fetches the next batch as soon as
// in-flight work drops to newBatchThreshold — not when the whole batch is done — and never
// runs more than batchSize + newBatchThreshold at once.
func TestNewBatchThreshold(t *testing.T) {
	var inFlight, peak atomic.Int64
	q := &batchQueue{n: 40, inFlight: &inFlight, allDone: make(chan struct{})}
	var calls atomic.Int64
	fn := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		// Every fourth invocation is slow: with "wait for the whole batch" the run
		// would take 10 × 300 ms; with the threshold the slow ones overlap.
		if calls.Add(1)%4 == 0 {
			time.Sleep(300 * time.Millisecond)
		} else {
			time.Sleep(10 * time.Millisecond)
		}
		inFlight.Add(-1)
		w.WriteHeader(200)
	})
	r := &Runner{Queue: q, Functions: fn, MaxDequeueCount: 5, BatchSize: 8, NewBatchThreshold: 4,
		Lease: time.Minute, MaxPollInterval: 10 * time.Millisecond, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	go func() {
		select {
		case <-q.allDone:
		case <-time.After(10 * time.Second):
			t.Error("not every message was delivered in 10s")
		}
		cancel()
	}()
	_ = r.Run(ctx)
	took := time.Since(start)
	q.mu.Lock()
	defer q.mu.Unlock()
	overlapped := false
	for _, n := range q.atReceive {
		if n > 4 {
			t.Errorf("fetched a batch with %d in flight, above the threshold 4", n)
		}
		if n > 0 {
			overlapped = true
		}
	}
	if !overlapped {
		t.Errorf("every batch was fetched with nothing in flight (%v): the threshold is not used", q.atReceive)
	}
	if p := peak.Load(); p > 8+4 {
		t.Errorf("peak concurrency %d above batchSize + newBatchThreshold = 12", p)
	}
	if took > 2500*time.Millisecond {
		t.Errorf("40 messages took %v: batches are waiting for their slowest message", took)
	}
}

// renewingQueue is a fakeQueue that can renew leases: each renewal hands out a new pop
// receipt, and settling with an old one is an error (as the service answers).
type renewingQueue struct {
	mu       sync.Mutex
	msg      queue.Received
	given    bool
	renewals int
	settled  string
	lease    time.Duration
	failNext bool
	done     chan struct{}
}

var _ LeaseRenewer = (*renewingQueue)(nil)

func (q *renewingQueue) Receive(_ context.Context, _ int32, vis time.Duration) ([]queue.Received, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.given {
		return nil, nil
	}
	q.given, q.lease = true, vis
	return []queue.Received{q.msg}, nil
}
func (q *renewingQueue) Renew(_ context.Context, r queue.Received, vis time.Duration) (queue.Received, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.failNext {
		q.failNext = false
		return r, fmt.Errorf("storage blip")
	}
	if r.PopReceipt != q.msg.PopReceipt || vis != q.lease {
		return r, ErrLeaseLost
	}
	q.renewals++
	q.msg.PopReceipt = fmt.Sprintf("pop-%d", q.renewals)
	return q.msg, nil
}
func (q *renewingQueue) Delete(_ context.Context, r queue.Received) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if r.PopReceipt != q.msg.PopReceipt {
		q.settled = "stale pop receipt " + r.PopReceipt
	} else {
		q.settled = "deleted"
	}
	close(q.done)
	return nil
}
func (q *renewingQueue) Release(context.Context, queue.Received, time.Duration) error { return nil }
func (q *renewingQueue) MoveToPoison(context.Context, queue.Received) error           { return nil }

// TestLeaseRenewal: a message is received under the short lease, renewed while a long
// invocation runs (surviving one failed renewal), and deleted with the latest pop receipt.
func TestLeaseRenewal(t *testing.T) {
	q := &renewingQueue{msg: queue.Received{ID: "m", PopReceipt: "pop-0", DequeueCount: 1,
		Body: []byte(`{"operationId":"a","deviceId":"b"}`)}, failNext: true, done: make(chan struct{})}
	fn := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(1500 * time.Millisecond) // five renewal periods of a 900 ms lease
		w.WriteHeader(200)
	})
	r := &Runner{Queue: q, Functions: fn, MaxDequeueCount: 5, BatchSize: 16, Lease: time.Minute,
		LeaseRenewal: 900 * time.Millisecond, MaxPollInterval: 10 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-q.done:
		case <-time.After(10 * time.Second):
			t.Error("the message was never settled")
		}
		cancel()
	}()
	_ = r.Run(ctx)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.lease != 900*time.Millisecond {
		t.Errorf("received under a %v lease, want the 900ms renewal lease", q.lease)
	}
	if q.renewals < 2 {
		t.Errorf("%d renewals during a 1.5 s invocation, want at least 2", q.renewals)
	}
	if q.settled != "deleted" {
		t.Errorf("settled: %s", q.settled)
	}
}

// TestStorageQueueRenew runs renewal against Azurite: a renewed message stays invisible
// past its first lease and is deleted with the new pop receipt; one whose holder stops
// renewing (a killed handler) is visible again after its lease.
func TestStorageQueueRenew(t *testing.T) {
	cs := testenv.Azurite(t)
	_, svc, err := storageconn.Open(storageconn.Settings{ConnectionString: cs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("renew-%d", time.Now().UnixNano())
	q := NewStorageQueue(svc, name)
	ctx := context.Background()
	if err := q.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	msg := queue.Message{OperationID: "op-1", DeviceID: "dev-1"}
	for range 2 {
		if err := q.Enqueue(ctx, msg, 0); err != nil {
			t.Fatal(err)
		}
	}
	got, err := q.Receive(ctx, 2, 2*time.Second)
	if err != nil || len(got) != 2 {
		t.Fatalf("receive: %v, %d messages", err, len(got))
	}
	kept, abandoned := got[0], got[1]
	time.Sleep(1200 * time.Millisecond)
	before := q.Transactions()
	if kept, err = q.Renew(ctx, kept, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	// A renewal is a storage request, billed like the rest (handler/metrics.go).
	if n := q.Transactions() - before; n != 1 {
		t.Errorf("a renewal counted %d transactions, want 1", n)
	}
	if kept.PopReceipt == got[0].PopReceipt {
		t.Error("renewal kept the old pop receipt")
	}
	if _, err := q.Renew(ctx, got[0], 3*time.Second); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("renewing with a stale pop receipt: %v, want ErrLeaseLost", err)
	}
	time.Sleep(1500 * time.Millisecond) // past the first 2 s lease, within the renewed 3 s
	again, err := q.Receive(ctx, 32, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 || again[0].ID != abandoned.ID || again[0].DequeueCount != 2 {
		t.Fatalf("after the first lease got %+v, want only the abandoned message, dequeue count 2", again)
	}
	if m, err := queue.ParseMessage(again[0].Body); err != nil || m != msg {
		t.Errorf("redelivered body %q: %v", again[0].Body, err)
	}
	if err := q.Delete(ctx, kept); err != nil {
		t.Errorf("delete with the renewed pop receipt: %v", err)
	}
	if m, err := queue.ParseMessage(kept.Body); err != nil || m != msg {
		t.Errorf("renewed body %q: %v", kept.Body, err)
	}
}
