package provision

import (
	"context"
	"crypto/tls"
	"strconv"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/dps"
	"github.com/iotprov/iotprov/internal/store"
)

// A deferral whose write landed but was answered with a conflict (the SDK retried a
// request that had succeeded) must still re-enqueue: acknowledging would lose the
// operation's only message. This happened in the burst bench.
func TestDeferWhenOwnWriteLandedAsConflict(t *testing.T) {
	f := newFixture(t, queued("l1"))
	f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) {
		return nil, &dps.Error{StatusCode: 429, ErrorCode: 429001, Message: "throttled", RetryAfter: time.Second}
	}
	f.ops.onUpdate = func(op *store.Operation) error {
		if op.Attempts == 0 {
			return nil // the issue step
		}
		// Store the write, then answer as a retried request would: 412.
		f.ops.mu.Lock()
		f.ops.etag++
		stored := *op
		stored.ETag = strconv.Itoa(f.ops.etag)
		f.ops.ops[op.DeviceID+"/"+op.ID] = stored
		f.ops.mu.Unlock()
		return store.ErrConflict
	}
	if err := f.worker.Provision(context.Background(), msgFor(queued("l1")), 1); err != nil {
		t.Fatal(err)
	}
	if op := f.ops.get(t, "dev-l1", "l1"); op.Attempts != 1 || op.Status != store.StatusIssued {
		t.Fatalf("op %+v", op)
	}
	if len(f.queue.sent) != 1 {
		t.Fatalf("re-enqueued %d messages, want 1: the operation would be stuck", len(f.queue.sent))
	}
}

// A real conflict (another delivery moved the operation on) is still acknowledged.
func TestDeferYieldsToAnotherDelivery(t *testing.T) {
	f := newFixture(t, queued("l2"))
	f.dps.register = func(string, tls.Certificate) (*dps.Operation, error) {
		return nil, &dps.Error{StatusCode: 503, Message: "unavailable"}
	}
	f.ops.onUpdate = func(op *store.Operation) error {
		if op.Attempts == 0 {
			return nil
		}
		f.ops.mu.Lock()
		cur := f.ops.ops[op.DeviceID+"/"+op.ID]
		cur.Status, cur.Host, cur.ETag = store.StatusAssigned, "winner", "other"
		f.ops.ops[op.DeviceID+"/"+op.ID] = cur
		f.ops.mu.Unlock()
		return store.ErrConflict
	}
	if err := f.worker.Provision(context.Background(), msgFor(queued("l2")), 1); err != nil {
		t.Fatal(err)
	}
	if len(f.queue.sent) != 0 {
		t.Errorf("re-enqueued %d messages for an operation another delivery finished", len(f.queue.sent))
	}
}
