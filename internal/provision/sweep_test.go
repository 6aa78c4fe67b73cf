package provision

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/store"
)

// fakeStalls answers Stalled with a function field and records what it was asked.
type fakeStalls struct {
	stalled func(before time.Time, limit int) ([]*store.Operation, error)
	before  []time.Time
	limits  []int
}

func (s *fakeStalls) Stalled(_ context.Context, before time.Time, limit int) ([]*store.Operation, error) {
	s.before = append(s.before, before)
	s.limits = append(s.limits, limit)
	return s.stalled(before, limit)
}

// stalledIn lists f's in-flight operations not updated since before, in key order, as the
// store's server-side filter does.
func stalledIn(f *fakeOps) func(before time.Time, limit int) ([]*store.Operation, error) {
	return func(before time.Time, limit int) ([]*store.Operation, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		keys := make([]string, 0, len(f.ops))
		for k := range f.ops {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var out []*store.Operation
		for _, k := range keys {
			op := f.ops[k]
			if (op.Status == store.StatusQueued || op.Status == store.StatusIssued) && op.UpdatedAt.Before(before) && len(out) < limit {
				out = append(out, &op)
			}
		}
		return out, nil
	}
}

// sweepFixture is a worker over fakes with a settable clock; writes stamp UpdatedAt, as
// the store does.
type sweepFixture struct {
	*fixture
	stalls *fakeStalls
	now    time.Time
	purged int
}

func newSweepFixture(t *testing.T, ops ...store.Operation) *sweepFixture {
	t.Helper()
	sf := &sweepFixture{fixture: newFixture(t, ops...), now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	sf.stalls = &fakeStalls{stalled: stalledIn(sf.ops)}
	sf.ops.onUpdate = func(op *store.Operation) error { op.UpdatedAt = sf.now; return nil }
	sf.worker.Stalls = sf.stalls
	sf.worker.StallAfter = 10 * time.Minute
	sf.worker.Now = func() time.Time { return sf.now }
	sf.worker.Log = slog.New(slog.DiscardHandler)
	return sf
}

// inFlight is an operation with status s last written at updated.
func inFlight(id string, s store.Status, updated time.Time, attempts int) store.Operation {
	op := queued(id)
	op.Status = s
	op.UpdatedAt = updated
	op.Attempts = attempts
	return op
}

func TestSweep(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) // the fixture's clock
	old := t0.Add(-11 * time.Minute)

	tests := []struct {
		name  string
		ops   []store.Operation
		setup func(f *sweepFixture)
		check func(t *testing.T, f *sweepFixture, requeued, failed int, err error)
	}{
		{
			name: "ok/stalled-queued-and-issued-requeued",
			ops: []store.Operation{
				inFlight("s1", store.StatusQueued, old, 0),
				inFlight("s2", store.StatusIssued, old, 3),
				inFlight("fresh", store.StatusQueued, t0.Add(-9*time.Minute), 0),
				inFlight("done", store.StatusAssigned, old, 0),
			},
			check: func(t *testing.T, f *sweepFixture, requeued, failed int, err error) {
				if err != nil || requeued != 2 || failed != 0 {
					t.Fatalf("Sweep = %d, %d, %v; want 2 re-queued", requeued, failed, err)
				}
				if got := f.stalls.before; len(got) != 1 || !got[0].Equal(t0.Add(-10*time.Minute)) {
					t.Errorf("Stalled asked before %v, want now-StallAfter", got)
				}
				if got := f.stalls.limits; len(got) != 1 || got[0] != DefaultSweepLimit {
					t.Errorf("Stalled limit %v, want %d", got, DefaultSweepLimit)
				}
				var sent []string
				for _, e := range f.queue.sent {
					sent = append(sent, e.msg.DeviceID+"/"+e.msg.OperationID)
					if e.delay != 0 {
						t.Errorf("re-queued with delay %v, want at once", e.delay)
					}
				}
				if want := []string{"dev-s1/s1", "dev-s2/s2"}; !slices.Equal(sent, want) {
					t.Errorf("messages %v, want %v", sent, want)
				}
				for id, want := range map[string]int{"s1": 1, "s2": 4} {
					op := f.ops.get(t, "dev-"+id, id)
					if op.Attempts != want || op.Status.Terminal() || !op.UpdatedAt.Equal(t0) {
						t.Errorf("%s: %+v; want attempt %d counted, still in flight, UpdatedAt now", id, op, want)
					}
				}
				if op := f.ops.get(t, "dev-fresh", "fresh"); op.Attempts != 0 {
					t.Errorf("an operation idle for less than StallAfter was counted: %+v", op)
				}
			},
		},
		{
			name: "fail/last-attempt-ends-failed-with-reason",
			ops: []store.Operation{func() store.Operation {
				op := inFlight("x1", store.StatusIssued, old, 9) // MaxAttempts is 10
				op.ErrorCode, op.ErrorMessage = "dps_unavailable", "DPS did not complete the registration (last answer: HTTP 503)."
				return op
			}()},
			check: func(t *testing.T, f *sweepFixture, requeued, failed int, err error) {
				if err != nil || requeued != 0 || failed != 1 {
					t.Fatalf("Sweep = %d, %d, %v; want 1 failed", requeued, failed, err)
				}
				op := f.ops.get(t, "dev-x1", "x1")
				if op.Status != store.StatusFailed || op.ErrorCode != CodeRetriesExhausted || op.Attempts != 10 {
					t.Fatalf("op %+v; want failed %s after 10 attempts", op, CodeRetriesExhausted)
				}
				for _, want := range []string{"stalled", "10m0s", "Retries exhausted", "HTTP 503"} {
					if !strings.Contains(op.ErrorMessage, want) {
						t.Errorf("message %q lacks %q", op.ErrorMessage, want)
					}
				}
				if !op.AssignedAt.Equal(t0) {
					t.Errorf("AssignedAt %v, want the end time %v (key retention starts there)", op.AssignedAt, t0)
				}
				if len(f.queue.sent) != 0 {
					t.Errorf("a failed operation was re-queued: %+v", f.queue.sent)
				}
			},
		},
		{
			name: "ok/moved-since-listed-left-alone",
			ops:  []store.Operation{inFlight("m1", store.StatusQueued, old, 0)},
			setup: func(f *sweepFixture) {
				// A delivery writes the operation between the listing and the sweep's write.
				list := f.stalls.stalled
				f.stalls.stalled = func(before time.Time, limit int) ([]*store.Operation, error) {
					ops, err := list(before, limit)
					live := f.ops.get(t, "dev-m1", "m1")
					live.Status = store.StatusIssued
					if err := f.ops.UpdateOperation(context.Background(), &live); err != nil {
						t.Fatal(err)
					}
					return ops, err
				}
			},
			check: func(t *testing.T, f *sweepFixture, requeued, failed int, err error) {
				if err != nil || requeued != 0 || failed != 0 || len(f.queue.sent) != 0 {
					t.Fatalf("Sweep = %d, %d, %v, sent %d; want the live operation left alone", requeued, failed, err, len(f.queue.sent))
				}
				if op := f.ops.get(t, "dev-m1", "m1"); op.Attempts != 0 || op.Status != store.StatusIssued {
					t.Errorf("op %+v; want the delivery's write kept", op)
				}
			},
		},
		{
			name: "fail/listing-error",
			setup: func(f *sweepFixture) {
				f.stalls.stalled = func(time.Time, int) ([]*store.Operation, error) { return nil, errors.New("tables down") }
			},
			check: func(t *testing.T, f *sweepFixture, requeued, failed int, err error) {
				if err == nil || !strings.Contains(err.Error(), "tables down") || requeued+failed != 0 {
					t.Fatalf("Sweep = %d, %d, %v; want the listing error", requeued, failed, err)
				}
			},
		},
		{
			name: "fail/write-error-stops-the-sweep",
			ops: []store.Operation{
				inFlight("w1", store.StatusQueued, old, 0),
				inFlight("w2", store.StatusQueued, old, 0),
			},
			setup: func(f *sweepFixture) {
				f.ops.onUpdate = func(*store.Operation) error { return errors.New("tables down") }
			},
			check: func(t *testing.T, f *sweepFixture, requeued, failed int, err error) {
				if err == nil || requeued+failed != 0 || len(f.queue.sent) != 0 {
					t.Fatalf("Sweep = %d, %d, %v, sent %d; want an error and nothing sent", requeued, failed, err, len(f.queue.sent))
				}
			},
		},
		{
			name: "fail/queue-down-stops-after-first",
			ops: []store.Operation{
				inFlight("e1", store.StatusQueued, old, 0),
				inFlight("e2", store.StatusQueued, old, 0),
			},
			setup: func(f *sweepFixture) { f.queue.err = errors.New("queues down") },
			check: func(t *testing.T, f *sweepFixture, requeued, failed int, err error) {
				if err == nil || !strings.Contains(err.Error(), "queues down") || requeued != 0 {
					t.Fatalf("Sweep = %d, %d, %v; want the enqueue error", requeued, failed, err)
				}
				// The first one's attempt is recorded (and it comes back after StallAfter);
				// the second is not charged for the outage.
				if op := f.ops.get(t, "dev-e1", "e1"); op.Attempts != 1 || !op.UpdatedAt.Equal(t0) {
					t.Errorf("e1 %+v; want its attempt recorded", op)
				}
				if op := f.ops.get(t, "dev-e2", "e2"); op.Attempts != 0 {
					t.Errorf("e2 %+v; want untouched", op)
				}
			},
		},
		{
			name: "ok/bounded-per-run",
			ops: []store.Operation{
				inFlight("b1", store.StatusQueued, old, 0),
				inFlight("b2", store.StatusQueued, old, 0),
				inFlight("b3", store.StatusQueued, old, 0),
			},
			setup: func(f *sweepFixture) { f.worker.SweepLimit = 2 },
			check: func(t *testing.T, f *sweepFixture, requeued, failed int, err error) {
				if err != nil || requeued != 2 || f.stalls.limits[0] != 2 {
					t.Fatalf("Sweep = %d, %d, %v (limit %v); want 2 of 3", requeued, failed, err, f.stalls.limits)
				}
				// The next run takes the rest: the first two were written just now.
				requeued, _, err = f.worker.Sweep(context.Background())
				if err != nil || requeued != 1 || f.queue.sent[2].msg.OperationID != "b3" {
					t.Fatalf("second Sweep = %d, %v; want b3", requeued, err)
				}
			},
		},
		{
			name: "ok/disabled-without-lister-or-threshold",
			ops:  []store.Operation{inFlight("d1", store.StatusQueued, old, 0)},
			setup: func(f *sweepFixture) {
				f.worker.StallAfter = 0
			},
			check: func(t *testing.T, f *sweepFixture, requeued, failed int, err error) {
				if err != nil || requeued+failed != 0 || len(f.stalls.before) != 0 {
					t.Fatalf("Sweep = %d, %d, %v; want nothing done", requeued, failed, err)
				}
				f.worker.StallAfter, f.worker.Stalls = time.Minute, nil
				if r, fl, err := f.worker.Sweep(context.Background()); err != nil || r+fl != 0 {
					t.Fatalf("Sweep without a lister = %d, %d, %v", r, fl, err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newSweepFixture(t, tc.ops...)
			if tc.setup != nil {
				tc.setup(f)
			}
			requeued, failed, err := f.worker.Sweep(context.Background())
			tc.check(t, f, requeued, failed, err)
		})
	}
}

// An operation whose message was lost (and whose device only polls) is re-queued by the
// sweep and then provisioned by the re-sent message; one that stalls for good ends failed
// after MaxAttempts sweeps, never later.
func TestSweepEndsEveryOperation(t *testing.T) {
	t.Run("ok/lost-message-provisioned", func(t *testing.T) {
		f := newSweepFixture(t, inFlight("l1", store.StatusQueued, time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC), 0))
		if r, _, err := f.worker.Sweep(context.Background()); err != nil || r != 1 {
			t.Fatalf("Sweep = %d, %v", r, err)
		}
		f.now = time.Now() // the fixture's CA is valid from now on
		if err := f.worker.Provision(context.Background(), f.queue.sent[0].msg, 1); err != nil {
			t.Fatal(err)
		}
		if op := f.ops.get(t, "dev-l1", "l1"); op.Status != store.StatusAssigned {
			t.Fatalf("op %+v; want assigned from the re-sent message", op)
		}
		// Assigned: later sweeps leave it alone.
		f.now = f.now.Add(time.Hour)
		if r, fl, err := f.worker.Sweep(context.Background()); err != nil || r+fl != 0 {
			t.Fatalf("Sweep after assignment = %d, %d, %v", r, fl, err)
		}
	})
	t.Run("fail/stalled-for-good", func(t *testing.T) {
		f := newSweepFixture(t, inFlight("g1", store.StatusIssued, time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC), 0))
		runs := 0
		for ; runs < 100; runs++ {
			if op := f.ops.get(t, "dev-g1", "g1"); op.Status.Terminal() {
				break
			}
			f.now = f.now.Add(15 * time.Minute) // the purge timer; messages are lost every time
			if _, _, err := f.worker.Sweep(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		op := f.ops.get(t, "dev-g1", "g1")
		if op.Status != store.StatusFailed || op.ErrorCode != CodeRetriesExhausted || runs != f.worker.MaxAttempts {
			t.Fatalf("after %d sweeps: %+v; want failed %s after MaxAttempts (%d) sweeps", runs, op, CodeRetriesExhausted, f.worker.MaxAttempts)
		}
		if len(f.queue.sent) != f.worker.MaxAttempts-1 {
			t.Errorf("%d messages re-sent, want %d", len(f.queue.sent), f.worker.MaxAttempts-1)
		}
	})
}

// Purge runs the sweep too, and a failing purge does not stop it (nor the reverse).
func TestPurgeSweeps(t *testing.T) {
	f := newSweepFixture(t, inFlight("p1", store.StatusQueued, time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC), 0))
	var logs bytes.Buffer
	f.worker.Log = slog.New(slog.NewTextHandler(&logs, nil))
	purgeOps := &purgeFailingOps{fakeOps: f.ops, err: errors.New("purge broke")}
	f.worker.Ops = purgeOps
	err := f.worker.Purge(context.Background())
	if err == nil || !strings.Contains(err.Error(), "purge broke") {
		t.Fatalf("Purge err = %v, want the purge error", err)
	}
	if purgeOps.calls != 1 || len(f.queue.sent) != 1 || f.queue.sent[0].msg.OperationID != "p1" {
		t.Fatalf("purge ran %d times, %d re-queued; want both done", purgeOps.calls, len(f.queue.sent))
	}
	if !strings.Contains(logs.String(), "requeued=1") {
		t.Errorf("the sweep's figures are not logged:\n%s", logs.String())
	}

	f.stalls.stalled = func(time.Time, int) ([]*store.Operation, error) { return nil, errors.New("list broke") }
	purgeOps.err = nil
	if err := f.worker.Purge(context.Background()); err == nil || !strings.Contains(err.Error(), "list broke") || purgeOps.calls != 2 {
		t.Fatalf("Purge err = %v after %d purges, want the sweep's error after purging", err, purgeOps.calls)
	}
}

// purgeFailingOps is fakeOps whose Purge counts calls and returns err.
type purgeFailingOps struct {
	*fakeOps
	err   error
	calls int
}

func (o *purgeFailingOps) Purge(context.Context, time.Time, time.Duration, time.Duration) (int, int, error) {
	o.calls++
	return 0, 0, o.err
}
