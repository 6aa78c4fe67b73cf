package provision

import (
	"context"
	"crypto/tls"
	"testing"

	"github.com/iotprov/iotprov/internal/dps"
	"github.com/iotprov/iotprov/internal/store"
)

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
