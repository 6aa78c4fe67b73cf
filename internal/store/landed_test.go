package store

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/iotprov/iotprov/internal/testenv"
)

// lossyTransport delivers every request, but when armed it throws away the answer to the
// next write, as a timeout under load does: the service applied the write, the client
// never heard, and the SDK retries it.
type lossyTransport struct {
	armed   atomic.Bool
	dropped atomic.Int32
}

func (l *lossyTransport) Do(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultClient.Do(req)
	write := req.Method == http.MethodPut || req.Method == http.MethodPost
	if err == nil && write && l.armed.CompareAndSwap(true, false) {
		resp.Body.Close()
		l.dropped.Add(1)
		return nil, errors.New("lossy transport: answer lost after the write was applied")
	}
	return resp, err
}

// lossyStore is a Store on Azurite whose table client goes through a lossyTransport.
func lossyStore(t *testing.T) (*Store, *lossyTransport) {
	t.Helper()
	conn := testenv.Azurite(t)
	m := regexp.MustCompile(`TableEndpoint=([^;]+)`).FindStringSubmatch(conn)
	if m == nil {
		t.Skipf("no TableEndpoint in %q", conn)
	}
	cred, err := aztables.NewSharedKeyCredential(testenv.DevAccountName, testenv.DevAccountKey)
	if err != nil {
		t.Fatal(err)
	}
	lossy := &lossyTransport{}
	svc, err := aztables.NewServiceClientWithSharedKey(strings.TrimSuffix(m[1], "/"), cred, &aztables.ClientOptions{
		ClientOptions: azcore.ClientOptions{Transport: lossy,
			Retry: policy.RetryOptions{MaxRetries: 2, RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 50 * time.Millisecond}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := New(svc)
	if err := s.EnsureTables(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, lossy
}

// A write the service applied but whose answer was lost is retried by the SDK, and the
// retry conflicts with the write itself. The store must report it as done — the worker
// once acknowledged such a deferral without re-enqueueing and lost the operation — and
// must still report a real conflict as one.
func TestConditionalWriteWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, lossy := lossyStore(t)
	dev := uniqueDevice("lossy")

	op := newOp(dev)
	lossy.armed.Store(true)
	if err := s.CreateOperation(ctx, op, nil); err != nil {
		t.Fatalf("create whose answer was lost: %v, want success (it was applied)", err)
	}
	if lossy.dropped.Load() != 1 {
		t.Fatalf("the transport dropped %d answers, want 1: the test did not exercise the retry", lossy.dropped.Load())
	}
	if cur, err := s.GetCurrent(ctx, dev); err != nil || cur.OperationID != op.ID {
		t.Fatalf("link after create: %+v, %v", cur, err)
	}

	got, err := s.GetOperation(ctx, dev, op.ID)
	if err != nil {
		t.Fatal(err)
	}
	got.Attempts, got.ErrorCode = 1, "dps_unavailable"
	lossy.armed.Store(true)
	if err := s.UpdateOperation(ctx, got); err != nil {
		t.Fatalf("update whose answer was lost: %v, want success (it was applied)", err)
	}
	if lossy.dropped.Load() != 2 {
		t.Fatalf("the transport dropped %d answers, want 2", lossy.dropped.Load())
	}
	stored, err := s.GetOperation(ctx, dev, op.ID)
	if err != nil || stored.Attempts != 1 || stored.ETag != got.ETag {
		t.Fatalf("after the update: %+v (caller has ETag %q), %v", stored, got.ETag, err)
	}

	// A real conflict: another writer changed the operation since our read.
	stale := *stored
	stored.Attempts = 2
	if err := s.UpdateOperation(ctx, stored); err != nil {
		t.Fatal(err)
	}
	stale.Attempts = 5
	if err := s.UpdateOperation(ctx, &stale); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale update: %v, want ErrConflict", err)
	}
	// And a real lost race on create: another operation holds the link.
	if err := s.CreateOperation(ctx, newOp(dev), nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("create over an existing link: %v, want ErrConflict", err)
	}
}
