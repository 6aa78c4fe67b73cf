package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/google/uuid"

	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/storageconn"
	"github.com/iotprov/iotprov/internal/testenv"
)

// newStore returns a Store on the given Azurite connection string with its tables created.
func newStore(t *testing.T, conn string) *Store {
	t.Helper()
	tc, _, err := storageconn.Open(storageconn.Settings{ConnectionString: conn}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := New(tc)
	if err := s.EnsureTables(context.Background()); err != nil {
		t.Fatalf("EnsureTables: %v", err)
	}
	// Idempotent: a second start must not fail on the existing tables.
	if err := s.EnsureTables(context.Background()); err != nil {
		t.Fatalf("EnsureTables again: %v", err)
	}
	return s
}

func newOp(deviceID string) *Operation {
	return &Operation{
		ID:           uuid.NewString(),
		DeviceID:     deviceID,
		Identity:     "sas:" + deviceID,
		Status:       StatusQueued,
		KeyAlgorithm: "ecdsa-p256",
	}
}

func uniqueDevice(prefix string) string { return prefix + "-" + uuid.NewString()[:8] }

func TestOperationLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t, testenv.Azurite(t))
	dev := uniqueDevice("dev")

	if _, err := s.GetCurrent(ctx, dev); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetCurrent of a new device: err = %v, want ErrNotFound", err)
	}

	op := newOp(dev)
	op.CSR = []byte{0x30, 0x82, 0x01, 0x00, 0xff}
	// A time given in another zone is stored, and read back, as the same instant in UTC.
	op.CreatedAt = time.Date(2030, 1, 2, 3, 4, 5, 678_000_000, time.FixedZone("x", 3600))
	before := s.Transactions()
	if err := s.CreateOperation(ctx, op, nil); err != nil {
		t.Fatalf("CreateOperation: %v", err)
	}
	if op.ETag != "" || op.CreatedAt.IsZero() || op.UpdatedAt.IsZero() {
		t.Fatalf("CreateOperation: want CreatedAt/UpdatedAt set and no ETag (the transaction returns none): %+v", op)
	}
	// One entity-group transaction: register's cost per device.
	if got := s.Transactions() - before; got != 1 {
		t.Errorf("CreateOperation made %d storage requests, want 1", got)
	}

	cur, err := s.GetCurrent(ctx, dev)
	if err != nil {
		t.Fatalf("GetCurrent: %v", err)
	}
	if cur.OperationID != op.ID || cur.DeviceID != dev || cur.ETag == "" || !cur.CreatedAt.Equal(op.CreatedAt) {
		t.Fatalf("GetCurrent = %+v, want link to %s created %v", cur, op.ID, op.CreatedAt)
	}

	got, err := s.GetOperation(ctx, dev, op.ID)
	if err != nil {
		t.Fatalf("GetOperation: %v", err)
	}
	// What was written reads back field for field; the read adds the ETag, and times come
	// back in UTC (CreatedAt's instant is checked below).
	want := *op
	want.ETag = got.ETag
	if got.ETag == "" || fmt.Sprintf("%+v", *got) != fmt.Sprintf("%+v", want) {
		t.Fatalf("GetOperation =\n%+v\nwant\n%+v", got, want)
	}
	op.ETag = got.ETag
	if !got.CreatedAt.Equal(time.Date(2030, 1, 2, 2, 4, 5, 678_000_000, time.UTC)) || got.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt = %v, want the same instant in UTC", got.CreatedAt)
	}
	if got.SealedKey != nil || got.KeyErased || got.AssignedAt.IsZero() == false {
		t.Errorf("unset fields read back set: %+v", got)
	}

	// Move it along: issued with a sealed key, then assigned.
	got.Status = StatusIssued
	got.SealedKey = []byte("sealed-key-bytes")
	got.CertificatePEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
	got.Attempts = 3
	oldETag := got.ETag
	if err := s.UpdateOperation(ctx, got); err != nil {
		t.Fatalf("UpdateOperation: %v", err)
	}
	if got.ETag == oldETag || got.ETag == "" {
		t.Fatalf("UpdateOperation did not move the ETag: %q -> %q", oldETag, got.ETag)
	}
	again, err := s.GetOperation(ctx, dev, op.ID)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", again) != fmt.Sprintf("%+v", got) {
		t.Fatalf("after update read\n%+v\nwant\n%+v", again, got)
	}

	// A writer holding the old ETag (a duplicate delivery) must lose.
	stale := *op
	stale.Status = StatusFailed
	if err := s.UpdateOperation(ctx, &stale); !errors.Is(err, ErrConflict) {
		t.Fatalf("UpdateOperation with stale ETag: err = %v, want ErrConflict", err)
	}
	if stale.UpdatedAt != op.UpdatedAt {
		t.Errorf("a failed update changed UpdatedAt on the caller's copy")
	}

	// Erasing by setting nil removes the property (replace, not merge).
	again.SealedKey, again.KeyErased = nil, true
	if err := s.UpdateOperation(ctx, again); err != nil {
		t.Fatal(err)
	}
	erased, err := s.GetOperation(ctx, dev, op.ID)
	if err != nil {
		t.Fatal(err)
	}
	if erased.SealedKey != nil || !erased.KeyErased || erased.Attempts != 3 {
		t.Fatalf("after erase: SealedKey=%v KeyErased=%v Attempts=%d", erased.SealedKey, erased.KeyErased, erased.Attempts)
	}
}

func TestGetOperationNotFound(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t, testenv.Azurite(t))
	owner, other := uniqueDevice("owner"), uniqueDevice("other")
	op := newOp(owner)
	if err := s.CreateOperation(ctx, op, nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, device, id string
	}{
		{"fail/other device's operation", other, op.ID},
		{"fail/unknown operation", owner, uuid.NewString()},
		{"fail/link row is not an operation", owner, "current"},
		{"fail/key with slash", owner, "a/b"},
		{"fail/key with quote", owner, "x' or PartitionKey ne '"},
		{"fail/empty", owner, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.GetOperation(ctx, tt.device, tt.id); !errors.Is(err, ErrNotFound) {
				t.Fatalf("err = %v, want ErrNotFound", err)
			}
		})
	}
	t.Run("ok/owner", func(t *testing.T) {
		if _, err := s.GetOperation(ctx, owner, op.ID); err != nil {
			t.Fatal(err)
		}
	})
}

// Two registers racing from the same view of the link: exactly one may win, whether the
// device had no link yet or an older operation.
func TestCreateOperationRace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t, testenv.Azurite(t))
	for _, tc := range []struct {
		name     string
		existing bool
	}{{"ok/first registration", false}, {"ok/re-registration", true}} {
		t.Run(tc.name, func(t *testing.T) {
			dev := uniqueDevice("race")
			var prev *Current
			if tc.existing {
				first := newOp(dev)
				first.Status = StatusAssigned
				if err := s.CreateOperation(ctx, first, nil); err != nil {
					t.Fatal(err)
				}
				var err error
				if prev, err = s.GetCurrent(ctx, dev); err != nil {
					t.Fatal(err)
				}
			}
			const n = 4
			ops := make([]*Operation, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				ops[i] = newOp(dev)
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					errs[i] = s.CreateOperation(ctx, ops[i], prev)
				}()
			}
			close(start)
			wg.Wait()
			winner := -1
			for i, err := range errs {
				switch {
				case err == nil:
					if winner >= 0 {
						t.Fatalf("two CreateOperation calls won: %d and %d", winner, i)
					}
					winner = i
				case errors.Is(err, ErrConflict):
				default:
					t.Fatalf("CreateOperation %d: err = %v, want nil or ErrConflict", i, err)
				}
			}
			if winner < 0 {
				t.Fatalf("no CreateOperation won: %v", errs)
			}
			cur, err := s.GetCurrent(ctx, dev)
			if err != nil {
				t.Fatal(err)
			}
			if cur.OperationID != ops[winner].ID {
				t.Fatalf("link points at %s, want the winner %s", cur.OperationID, ops[winner].ID)
			}
			// The losers' operations must not exist: the transaction is atomic.
			for i, op := range ops {
				if i == winner {
					continue
				}
				if _, err := s.GetOperation(ctx, dev, op.ID); !errors.Is(err, ErrNotFound) {
					t.Errorf("loser %d's operation: err = %v, want ErrNotFound", i, err)
				}
			}
		})
	}
}

func TestCreateOperationConflicts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t, testenv.Azurite(t))
	dev := uniqueDevice("conflict")
	op := newOp(dev)
	if err := s.CreateOperation(ctx, op, nil); err != nil {
		t.Fatal(err)
	}
	cur, err := s.GetCurrent(ctx, dev)
	if err != nil {
		t.Fatal(err)
	}
	dup := newOp(dev)
	dup.ID = op.ID
	tests := []struct {
		name     string
		op       *Operation
		prev     *Current
		wantLink bool // the error carries the link (it points at another operation)
	}{
		{"fail/link exists but prev is nil", newOp(dev), nil, true},
		{"fail/operation ID exists", dup, cur, false},
		{"fail/stale link ETag", newOp(dev), &Current{DeviceID: dev, OperationID: "x", ETag: `W/"datetime'2020-01-01T00%3A00%3A00.0000000Z'"`}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CreateOperation(ctx, tt.op, tt.prev)
			if !errors.Is(err, ErrConflict) {
				t.Fatalf("err = %v, want ErrConflict", err)
			}
			// The link read after the conflict comes with it, so register need not
			// read it again.
			var ce *ConflictError
			if !tt.wantLink {
				return
			}
			if !errors.As(err, &ce) || ce.Current == nil || ce.Current.OperationID != op.ID || ce.Current.ETag != cur.ETag {
				t.Errorf("err = %#v, want a *ConflictError carrying the link to %s", err, op.ID)
			}
		})
	}
	// The link still points at the original.
	if now, err := s.GetCurrent(ctx, dev); err != nil || now.OperationID != op.ID {
		t.Fatalf("link after conflicts = %+v, %v", now, err)
	}
}

func TestCreateOperationRejectsBadInput(t *testing.T) {
	s := New(mustServiceClient(t)) // never reaches storage
	tests := []struct {
		name string
		mod  func(*Operation)
	}{
		{"fail/reserved ID", func(o *Operation) { o.ID = "current" }},
		{"fail/slash in device ID", func(o *Operation) { o.DeviceID = "a/b" }},
		{"fail/empty operation ID", func(o *Operation) { o.ID = "" }},
		{"fail/unknown status", func(o *Operation) { o.Status = "done" }},
		{"fail/CSR over 64 KiB", func(o *Operation) { o.CSR = make([]byte, 64<<10+1) }},
		{"fail/certificate too long", func(o *Operation) { o.CertificatePEM = string(make([]byte, 33<<10)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := newOp("dev")
			tt.mod(op)
			err := s.CreateOperation(context.Background(), op, nil)
			if err == nil || errors.Is(err, ErrConflict) {
				t.Fatalf("err = %v, want a validation error", err)
			}
			if s.Transactions() != 0 {
				t.Fatalf("invalid input reached storage")
			}
		})
	}
}

func TestStorageDown(t *testing.T) {
	// A port nothing listens on: the error must be a 503 for the device, not ErrNotFound.
	port := testenv.FreePort(t)
	tc, _, err := storageconn.Open(storageconn.Settings{ConnectionString: testenv.ConnectionString(port, port)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := New(tc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err = s.GetCurrent(ctx, "dev")
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
		t.Fatalf("err = %v, want an unavailable error", err)
	}
	if e := errcode.As(err); e.Status != 503 || e.Code != errcode.CodeUnavailable || e.RetryAfter <= 0 {
		t.Fatalf("errcode = %+v, want 503 %s with Retry-After", e, errcode.CodeUnavailable)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("a dead endpoint took %v to answer; register must answer 503 fast", d)
	}
}

func TestPurge(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// Purge scans the whole table, so it gets an Azurite of its own.
	s := newStore(t, testenv.StartAzurite(t, "").ConnectionString)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }

	make := func(dev string, status Status, key []byte, assignedAt time.Time) *Operation {
		t.Helper()
		op := newOp(dev)
		op.Status = status
		op.SealedKey = key
		op.AssignedAt = assignedAt
		var prev *Current
		if c, err := s.GetCurrent(ctx, dev); err == nil {
			prev = c
		}
		if err := s.CreateOperation(ctx, op, prev); err != nil {
			t.Fatal(err)
		}
		return op
	}
	const day = 24 * time.Hour
	// Created at clock: day 0.
	assigned := make("d1", StatusAssigned, []byte("k1"), clock)
	failed := make("d2", StatusFailed, []byte("k2"), time.Time{})
	queued := make("d3", StatusQueued, []byte("k3"), time.Time{}) // in flight: key kept
	csr := make("d4", StatusAssigned, nil, clock)                 // no key to erase
	older := make("d5", StatusAssigned, []byte("k5"), clock)      // d5's old operation...
	clock = clock.Add(3 * day)
	newer := make("d5", StatusAssigned, []byte("k6"), clock) // ...and its newer one, which the link points at
	clock = clock.Add(-3 * day)

	keyRet, opRet := day, 30*day
	// The service does the filtering: two days on, only the rows that still hold a key
	// and are past the key cutoff come back (the in-flight one too; Purge skips it), not
	// the keyless CSR operation nor the newer one.
	filter := purgeFilter(clock.Add(2*day-keyRet), clock.Add(2*day-opRet))
	listed := map[string]bool{}
	for pager := s.ops.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter}); pager.More(); {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, raw := range page.Entities {
			op, err := unmarshalOperation(raw)
			if err != nil {
				t.Fatal(err)
			}
			listed[op.ID] = true
		}
	}
	for _, op := range []*Operation{assigned, failed, queued, older} {
		if !listed[op.ID] {
			t.Errorf("purge filter left out %s/%s, which holds a key past the cutoff", op.DeviceID, op.ID)
		}
	}
	for _, op := range []*Operation{csr, newer} {
		if listed[op.ID] {
			t.Errorf("purge filter listed %s/%s, which has nothing due", op.DeviceID, op.ID)
		}
	}
	// Half a day later nothing is due.
	if k, d, err := s.Purge(ctx, clock.Add(day/2), keyRet, opRet); err != nil || k != 0 || d != 0 {
		t.Fatalf("Purge at +12h = %d, %d, %v; want 0, 0", k, d, err)
	}
	// Two days later: the day-0 terminal keys are erased; in-flight and day-3 keys stay.
	k, d, err := s.Purge(ctx, clock.Add(2*day), keyRet, opRet)
	if err != nil || k != 3 || d != 0 {
		t.Fatalf("Purge at +2d = %d, %d, %v; want 3 erased, 0 deleted", k, d, err)
	}
	for _, tc := range []struct {
		op     *Operation
		erased bool
	}{{assigned, true}, {failed, true}, {queued, false}, {csr, false}, {older, true}, {newer, false}} {
		got, err := s.GetOperation(ctx, tc.op.DeviceID, tc.op.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.KeyErased != tc.erased || (got.SealedKey == nil) != (tc.erased || tc.op.SealedKey == nil) {
			t.Errorf("%s/%s: KeyErased=%v SealedKey=%q, want erased=%v", got.DeviceID, got.Status, got.KeyErased, got.SealedKey, tc.erased)
		}
		if !got.UpdatedAt.Equal(tc.op.UpdatedAt) {
			t.Errorf("%s: erasing moved UpdatedAt %v -> %v", got.DeviceID, tc.op.UpdatedAt, got.UpdatedAt)
		}
	}
	// Running it again finds nothing more to erase.
	if k, d, err := s.Purge(ctx, clock.Add(2*day), keyRet, opRet); err != nil || k != 0 || d != 0 {
		t.Fatalf("second Purge at +2d = %d, %d, %v; want 0, 0", k, d, err)
	}

	// 31 days: all day-0 operations go (with their links), d5's newer one and its link stay.
	k, d, err = s.Purge(ctx, clock.Add(31*day), keyRet, opRet)
	if err != nil || d != 5 {
		t.Fatalf("Purge at +31d = %d, %d, %v; want 5 deleted", k, d, err)
	}
	if k != 1 { // newer's key is past retention too
		t.Errorf("Purge at +31d erased %d keys, want 1", k)
	}
	for _, op := range []*Operation{assigned, failed, queued, csr, older} {
		if _, err := s.GetOperation(ctx, op.DeviceID, op.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: old operation still there: %v", op.DeviceID, err)
		}
	}
	for _, dev := range []string{"d1", "d2", "d3", "d4"} {
		if _, err := s.GetCurrent(ctx, dev); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: link to a deleted operation still there: %v", dev, err)
		}
	}
	if cur, err := s.GetCurrent(ctx, "d5"); err != nil || cur.OperationID != newer.ID {
		t.Errorf("d5: link = %+v, %v; want it kept, pointing at the newer operation", cur, err)
	}
	if _, err := s.GetOperation(ctx, "d5", newer.ID); err != nil {
		t.Errorf("d5: newer operation: %v", err)
	}
}

// Purge skips an operation that changed between its listing and its write.
func TestPurgeSkipsConflicts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t, testenv.StartAzurite(t, "").ConnectionString)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	op := newOp("dx")
	op.Status = StatusAssigned
	op.SealedKey = []byte("k")
	op.AssignedAt = clock
	if err := s.CreateOperation(ctx, op, nil); err != nil {
		t.Fatal(err)
	}
	stale := *op
	stale.ETag = `W/"datetime'2020-01-01T00%3A00%3A00.0000000Z'"`
	if err := s.replace(ctx, &stale); !errors.Is(err, ErrConflict) {
		t.Fatalf("replace with stale ETag: %v, want ErrConflict", err)
	}
	if ok, err := s.deleteOperation(ctx, &stale); ok || err != nil {
		t.Fatalf("deleteOperation with stale ETag = %v, %v; want skipped without error", ok, err)
	}
	if _, err := s.GetOperation(ctx, "dx", op.ID); err != nil {
		t.Fatalf("operation deleted despite stale ETag: %v", err)
	}
}

func mustServiceClient(t *testing.T) *aztables.ServiceClient {
	t.Helper()
	tc, _, err := storageconn.Open(storageconn.Settings{ConnectionString: "UseDevelopmentStorage=true"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tc
}
