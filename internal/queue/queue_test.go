package queue

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/google/uuid"

	"github.com/iotprov/iotprov/internal/storageconn"
	"github.com/iotprov/iotprov/internal/testenv"
)

func TestParseMessage(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Message
	}{
		{"ok/both fields", `{"operationId":"op-1","deviceId":"dev-1"}`, Message{"op-1", "dev-1"}},
		{"ok/extra fields ignored", `{"operationId":"op","deviceId":"d","x":1}`, Message{"op", "d"}},
		{"ok/whitespace", " {\"deviceId\":\"d\",\"operationId\":\"op\"}\n", Message{"op", "d"}},
		{"fail/empty", ``, Message{}},
		{"fail/not an object", `"op"`, Message{}},
		{"fail/array", `[]`, Message{}},
		{"fail/missing deviceId", `{"operationId":"op"}`, Message{}},
		{"fail/missing operationId", `{"deviceId":"d"}`, Message{}},
		{"fail/empty field", `{"operationId":"","deviceId":"d"}`, Message{}},
		{"fail/wrong type", `{"operationId":1,"deviceId":"d"}`, Message{}},
		{"fail/trailing data", `{"operationId":"op","deviceId":"d"}{}`, Message{}},
		{"fail/slash in key", `{"operationId":"a/b","deviceId":"d"}`, Message{}},
		{"fail/control character", `{"operationId":"a\u0000","deviceId":"d"}`, Message{}},
		{"fail/too long id", `{"operationId":"` + strings.Repeat("a", 300) + `","deviceId":"d"}`, Message{}},
		{"fail/too large", `{"operationId":"op","deviceId":"d","pad":"` + strings.Repeat("a", 5000) + `"}`, Message{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMessage([]byte(tt.in))
			if strings.HasPrefix(tt.name, "ok/") {
				if err != nil || got != tt.want {
					t.Fatalf("ParseMessage = %+v, %v; want %+v", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseMessage = %+v, want an error", got)
			}
		})
	}
}

func FuzzParseMessage(f *testing.F) {
	f.Add([]byte(`{"operationId":"4e77a2d4-0000-4000-8000-000000000000","deviceId":"myDevice-295000012345678"}`))
	f.Add([]byte(`{"operationId":"op"}`))
	f.Add([]byte(`{"operationId":"op","deviceId":"d"} x`))
	f.Add([]byte(`"eyJvcGVyYXRpb25JZCI6Im9wIn0="`))
	f.Add([]byte(`{"operationId":"\ud800","deviceId":"\u00e9"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			if m != (Message{}) {
				t.Fatalf("error with a non-zero message: %+v", m)
			}
			return
		}
		if m.OperationID == "" || m.DeviceID == "" || len(m.OperationID) > maxIDLen || len(m.DeviceID) > maxIDLen {
			t.Fatalf("accepted %+v", m)
		}
		// What we accept survives our own encoding unchanged.
		re, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := ParseMessage(re)
		if err != nil || m2 != m {
			t.Fatalf("round trip: %+v, %v; want %+v", m2, err, m)
		}
	})
}

func TestDecodeText(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"ok/base64", base64.StdEncoding.EncodeToString([]byte(`{"a":1}`)), `{"a":1}`},
		{"ok/raw json is kept", `{"a":1}`, `{"a":1}`},
		{"ok/empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(DecodeText(tt.in)); got != tt.want {
				t.Fatalf("DecodeText(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// newQueue returns a Queue with a name of its own on Azurite, plus the raw SDK client of the
// same service for looking at what is stored.
func newQueue(t *testing.T) (*Queue, *azqueue.ServiceClient) {
	t.Helper()
	_, qc, err := storageconn.Open(storageconn.Settings{ConnectionString: testenv.Azurite(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	q := New(qc, "t-"+uuid.NewString()[:8])
	if err := q.Ensure(context.Background()); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if err := q.Ensure(context.Background()); err != nil {
		t.Fatalf("Ensure again: %v", err)
	}
	return q, qc
}

func receiveOne(t *testing.T, q *Queue, vis time.Duration) Received {
	t.Helper()
	got, err := q.Receive(context.Background(), 32, vis)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	if len(got) != 1 {
		t.Fatalf("Receive got %d messages, want 1", len(got))
	}
	return got[0]
}

func TestEnqueueReceive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, svc := newQueue(t)
	m := Message{OperationID: uuid.NewString(), DeviceID: "myDevice-1"}
	if err := q.Enqueue(ctx, m, 0); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}

	// What is stored is base64(JSON), as the Functions host's messageEncoding expects.
	peek, err := svc.NewQueueClient(q.name).PeekMessages(ctx, &azqueue.PeekMessagesOptions{NumberOfMessages: to.Ptr(int32(32))})
	if err != nil {
		t.Fatal(err)
	}
	if len(peek.Messages) != 1 {
		t.Fatalf("peek: %d messages, want 1", len(peek.Messages))
	}
	text := *peek.Messages[0].MessageText
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		t.Fatalf("stored text %q is not base64: %v", text, err)
	}
	var stored Message
	if err := json.Unmarshal(raw, &stored); err != nil || stored != m {
		t.Fatalf("stored %q decodes to %+v (%v), want %+v", raw, stored, err, m)
	}
	// Never expires: a long outage must not lose operations.
	if exp := *peek.Messages[0].ExpirationTime; exp.Before(time.Now().AddDate(1, 0, 0)) {
		t.Errorf("message expires at %v; want never", exp)
	}

	r := receiveOne(t, q, 30*time.Second)
	got, err := ParseMessage(r.Body)
	if err != nil || got != m {
		t.Fatalf("received %+v (%v), want %+v", got, err, m)
	}
	if r.ID == "" || r.PopReceipt == "" || r.DequeueCount != 1 || r.InsertionTime.IsZero() || r.NextVisibleTime.Before(time.Now().Add(20*time.Second)) {
		t.Fatalf("received metadata %+v", r)
	}
	// Hidden while being processed.
	if more, err := q.Receive(ctx, 32, time.Second); err != nil || len(more) != 0 {
		t.Fatalf("message visible again while hidden: %d, %v", len(more), err)
	}
	if err := q.Delete(ctx, r); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	// Deleting twice (a duplicate completion) is not an error.
	if err := q.Delete(ctx, r); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	peek, err = svc.NewQueueClient(q.name).PeekMessages(ctx, nil)
	if err != nil || len(peek.Messages) != 0 {
		t.Fatalf("after delete, peek = %d messages, %v", len(peek.Messages), err)
	}
}

func TestReleaseCountsDequeues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, svc := newQueue(t)
	m := Message{OperationID: "op-rel", DeviceID: "dev"}
	if err := q.Enqueue(ctx, m, 0); err != nil {
		t.Fatal(err)
	}
	for want := int64(1); want <= 3; want++ {
		r := receiveOne(t, q, 30*time.Second)
		if r.DequeueCount != want {
			t.Fatalf("DequeueCount = %d, want %d", r.DequeueCount, want)
		}
		if got, err := ParseMessage(r.Body); err != nil || got != m {
			t.Fatalf("body after %d releases = %+v, %v", want-1, got, err)
		}
		if err := q.Release(ctx, r, 0); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	// The stored text is still the producer's base64, byte for byte.
	peek, err := svc.NewQueueClient(q.name).PeekMessages(ctx, nil)
	if err != nil || len(peek.Messages) != 1 {
		t.Fatalf("peek: %v, %v", peek.Messages, err)
	}
	want, _ := json.Marshal(m)
	if got := *peek.Messages[0].MessageText; got != base64.StdEncoding.EncodeToString(want) {
		t.Fatalf("text after release = %q", got)
	}

	// Release with a delay hides it again.
	r := receiveOne(t, q, 30*time.Second)
	if err := q.Release(ctx, r, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if more, _ := q.Receive(ctx, 32, time.Second); len(more) != 0 {
		t.Fatalf("released with 2s delay but visible at once")
	}
	waitFor(t, 10*time.Second, func() bool {
		more, err := q.Receive(ctx, 32, 30*time.Second)
		return err == nil && len(more) == 1 && more[0].DequeueCount == 5
	})
}

// TestExtend: extending a lease hands out a new pop receipt, keeps the message hidden past
// its first visibility, counts one transaction, and leaves the stored text as the producer
// wrote it — even a text that is not base64. The old pop receipt then fails with
// ErrLeaseLost, which Release treats as nothing to release.
func TestExtend(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, svc := newQueue(t)
	const raw = `{"operationId":"op-raw","deviceId":"dev"}` // written by another tool, not base64
	if _, err := svc.NewQueueClient(q.name).EnqueueMessage(ctx, raw, nil); err != nil {
		t.Fatal(err)
	}
	r := receiveOne(t, q, 2*time.Second)
	before := q.Transactions()
	ext, err := q.Extend(ctx, r, 4*time.Second)
	if err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if n := q.Transactions() - before; n != 1 {
		t.Errorf("Extend counted %d transactions, want 1", n)
	}
	if ext.PopReceipt == "" || ext.PopReceipt == r.PopReceipt {
		t.Errorf("Extend kept the pop receipt %q", r.PopReceipt)
	}
	if !ext.NextVisibleTime.After(r.NextVisibleTime) {
		t.Errorf("next visible %v, not after the first lease's %v", ext.NextVisibleTime, r.NextVisibleTime)
	}
	if ext.ID != r.ID || ext.DequeueCount != r.DequeueCount || string(ext.Body) != raw {
		t.Errorf("Extend changed the message: %+v", ext)
	}
	if _, err := q.Extend(ctx, r, time.Second); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("Extend with the old pop receipt: %v, want ErrLeaseLost", err)
	}
	if err := q.Release(ctx, r, 0); err != nil {
		t.Errorf("Release with the old pop receipt: %v, want nothing to release", err)
	}
	time.Sleep(2500 * time.Millisecond) // past the first 2 s lease, within the extended 4 s
	if more, err := q.Receive(ctx, 32, time.Second); err != nil || len(more) != 0 {
		t.Fatalf("extended message visible after its first lease: %d, %v", len(more), err)
	}
	// Release with the new pop receipt puts it back at once, text unchanged.
	if err := q.Release(ctx, ext, 0); err != nil {
		t.Fatalf("Release: %v", err)
	}
	peek, err := svc.NewQueueClient(q.name).PeekMessages(ctx, nil)
	if err != nil || len(peek.Messages) != 1 {
		t.Fatalf("peek: %v, %v", peek.Messages, err)
	}
	if got := *peek.Messages[0].MessageText; got != raw {
		t.Fatalf("text after Extend and Release = %q, want the producer's %q", got, raw)
	}
}

func TestDelayRespected(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newQueue(t)
	start := time.Now()
	if err := q.Enqueue(ctx, Message{OperationID: "op-delay", DeviceID: "dev"}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := q.Receive(ctx, 32, time.Second); err != nil || len(got) != 0 {
		t.Fatalf("delayed message received at once: %d, %v", len(got), err)
	}
	waitFor(t, 10*time.Second, func() bool {
		got, err := q.Receive(ctx, 32, 30*time.Second)
		return err == nil && len(got) == 1
	})
	// Azurite keeps whole seconds; allow it to round the visibility time down by one.
	if d := time.Since(start); d < time.Second {
		t.Fatalf("delayed message became visible after %v, want about 2s", d)
	}
}

func TestMoveToPoison(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, svc := newQueue(t)
	m := Message{OperationID: "op-poison", DeviceID: "dev"}
	if err := q.Enqueue(ctx, m, 0); err != nil {
		t.Fatal(err)
	}
	r := receiveOne(t, q, 30*time.Second)
	if err := q.MoveToPoison(ctx, r); err != nil {
		t.Fatalf("MoveToPoison: %v", err)
	}
	peek, err := svc.NewQueueClient(q.name).PeekMessages(ctx, nil)
	if err != nil || len(peek.Messages) != 0 {
		t.Fatalf("source queue after poison: %d messages, %v", len(peek.Messages), err)
	}
	// The poison copy is base64 too, as the Functions host writes poison messages.
	ppeek, err := svc.NewQueueClient(q.name+PoisonSuffix).PeekMessages(ctx, nil)
	if err != nil || len(ppeek.Messages) != 1 {
		t.Fatalf("poison peek: %d messages, %v", len(ppeek.Messages), err)
	}
	if _, err := base64.StdEncoding.DecodeString(*ppeek.Messages[0].MessageText); err != nil {
		t.Fatalf("poison text %q is not base64", *ppeek.Messages[0].MessageText)
	}
	poison := New(svc, q.name+PoisonSuffix)
	pr := receiveOne(t, poison, 30*time.Second)
	got, err := ParseMessage(pr.Body)
	if err != nil || got != m {
		t.Fatalf("poison message = %+v, %v; want %+v", got, err, m)
	}
}

func TestBadArguments(t *testing.T) {
	_, qc, err := storageconn.Open(storageconn.Settings{ConnectionString: "UseDevelopmentStorage=true"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	q := New(qc, Name)
	ctx := context.Background()
	if err := q.Enqueue(ctx, Message{"op", "d"}, -time.Second); err == nil {
		t.Error("negative delay accepted")
	}
	if err := q.Enqueue(ctx, Message{"op", "d"}, 8*24*time.Hour); err == nil {
		t.Error("delay over 7 days accepted")
	}
	if _, err := q.Receive(ctx, 0, time.Second); err == nil {
		t.Error("receive 0 accepted")
	}
	if _, err := q.Receive(ctx, 33, time.Second); err == nil {
		t.Error("receive 33 accepted")
	}
	if _, err := q.Extend(ctx, Received{ID: "m", PopReceipt: "p"}, -time.Second); err == nil {
		t.Error("negative visibility accepted")
	}
	if _, err := q.Extend(ctx, Received{ID: "m", PopReceipt: "p"}, 8*24*time.Hour); err == nil {
		t.Error("visibility over 7 days accepted")
	}
	// A Received not from Receive has no stored text: updating it would have to guess the
	// producer's encoding, and a wrong guess rewrites the message.
	if err := q.Release(ctx, Received{ID: "m", PopReceipt: "p", Body: []byte(`{"operationId":"op","deviceId":"d"}`)}, 0); err == nil {
		t.Error("Release of a message not received from a Queue accepted")
	}
	if q.Transactions() != 0 {
		t.Errorf("bad arguments reached storage: %d requests", q.Transactions())
	}
}

func TestStorageDown(t *testing.T) {
	port := testenv.FreePort(t)
	_, qc, err := storageconn.Open(storageconn.Settings{ConnectionString: testenv.ConnectionString(port, port)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	q := New(qc, Name)
	start := time.Now()
	err = q.Enqueue(context.Background(), Message{"op", "d"}, 0)
	if err == nil {
		t.Fatal("Enqueue to a dead endpoint succeeded")
	}
	var e interface{ Unwrap() error }
	if !errors.As(err, &e) {
		t.Fatalf("error %v carries no cause", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("dead endpoint took %v", d)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("condition not met within %v", d)
}
