package store

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/storageconn"
	"github.com/iotprov/iotprov/internal/testenv"
)

func TestStalled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// Stalled scans the whole table, so it gets an Azurite of its own.
	s := newStore(t, testenv.StartAzurite(t, "").ConnectionString)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }

	create := func(dev string, status Status) *Operation {
		t.Helper()
		op := newOp(dev)
		op.Status = status
		if err := s.CreateOperation(ctx, op, nil); err != nil {
			t.Fatal(err)
		}
		return op
	}
	// At day 0: one operation of every status (and each device's link row, which must
	// never come back as an operation).
	oldQueued := create("q-old", StatusQueued)
	oldIssued := create("i-old", StatusIssued)
	create("a-old", StatusAssigned)
	create("f-old", StatusFailed)
	clock = clock.Add(time.Hour)
	create("q-new", StatusQueued)
	create("i-new", StatusIssued)

	cutoff := clock // exactly the newer ones' UpdatedAt: "before" is strict
	before := s.Transactions()
	got, err := s.Stalled(ctx, cutoff, 100)
	if err != nil {
		t.Fatalf("Stalled: %v", err)
	}
	if n := s.Transactions() - before; n != 1 {
		t.Errorf("Stalled made %d storage requests, want 1 (one page)", n)
	}
	ids := func(ops []*Operation) []string {
		var out []string
		for _, op := range ops {
			out = append(out, op.DeviceID+"/"+string(op.Status))
		}
		slices.Sort(out)
		return out
	}
	if want := []string{"i-old/issued", "q-old/queued"}; !slices.Equal(ids(got), want) {
		t.Fatalf("Stalled = %v, want %v", ids(got), want)
	}
	for _, op := range got {
		want := oldQueued
		if op.DeviceID == oldIssued.DeviceID {
			want = oldIssued
		}
		if op.ID != want.ID || op.ETag == "" || !op.UpdatedAt.Equal(want.UpdatedAt) || op.Identity != want.Identity {
			t.Errorf("Stalled returned %+v, want the stored %s with its ETag", op, want.ID)
		}
	}

	// Nothing is older than day 0.
	if got, err := s.Stalled(ctx, oldQueued.UpdatedAt, 100); err != nil || len(got) != 0 {
		t.Errorf("Stalled(before day 0) = %v, %v; want none", ids(got), err)
	}
	// The limit bounds one sweep; zero reads nothing.
	if got, err := s.Stalled(ctx, cutoff, 1); err != nil || len(got) != 1 {
		t.Errorf("Stalled(limit 1) = %v, %v; want one", ids(got), err)
	}
	before = s.Transactions()
	if got, err := s.Stalled(ctx, cutoff, 0); err != nil || len(got) != 0 || s.Transactions() != before {
		t.Errorf("Stalled(limit 0) = %v, %v; want none and no request", ids(got), err)
	}

	// The returned ETag is good for a conditional write, and the write (UpdatedAt now)
	// takes the operation out of the stalled set.
	clock = clock.Add(time.Hour)
	moved := got[0]
	if moved.DeviceID != oldQueued.DeviceID {
		moved = got[1]
	}
	moved.Attempts++
	if err := s.UpdateOperation(ctx, moved); err != nil {
		t.Fatalf("UpdateOperation with the listed ETag: %v", err)
	}
	got, err = s.Stalled(ctx, cutoff, 100)
	if err != nil || !slices.Equal(ids(got), []string{"i-old/issued"}) {
		t.Fatalf("Stalled after a write = %v, %v; want only i-old", ids(got), err)
	}
}

// A sweep bounded per run still reaches every stalled operation over successive runs,
// because each one it handles is written (and so leaves the set).
func TestStalledPagesThroughBatches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t, testenv.StartAzurite(t, "").ConnectionString)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	const n, limit = 7, 3
	want := map[string]bool{}
	for i := range n {
		op := newOp(uniqueDevice("batch"))
		if i%2 == 1 {
			op.Status = StatusIssued
		}
		if err := s.CreateOperation(ctx, op, nil); err != nil {
			t.Fatal(err)
		}
		want[op.ID] = true
	}
	clock = clock.Add(time.Hour)
	seen := map[string]bool{}
	for run := 1; ; run++ {
		if run > n {
			t.Fatalf("after %d runs still not done; seen %d of %d", run-1, len(seen), n)
		}
		got, err := s.Stalled(ctx, clock.Add(-time.Minute), limit)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > limit {
			t.Fatalf("run %d: %d operations, limit %d", run, len(got), limit)
		}
		if len(got) == 0 {
			break
		}
		for _, op := range got {
			if seen[op.ID] {
				t.Errorf("run %d: %s came back after it was written", run, op.ID)
			}
			seen[op.ID] = true
			if err := s.UpdateOperation(ctx, op); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(seen) != len(want) {
		t.Errorf("swept %d operations, want %d", len(seen), len(want))
	}
	for id := range want {
		if !seen[id] {
			t.Errorf("operation %s never came back as stalled", id)
		}
	}
}

func TestStalledStorageDown(t *testing.T) {
	port := testenv.FreePort(t)
	tc, _, err := storageconn.Open(storageconn.Settings{ConnectionString: testenv.ConnectionString(port, port)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = New(tc).Stalled(ctx, time.Now(), 10)
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want unavailable", err)
	}
	if e := errcode.As(err); e.Code != errcode.CodeUnavailable {
		t.Fatalf("errcode = %+v, want %s", e, errcode.CodeUnavailable)
	}
}
