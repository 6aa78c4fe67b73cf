// Package queue is the provision queue: the register endpoint enqueues one small message per
// operation, and the provision function (or the local runner standing in for the Functions
// host's queue listener) receives it. A message carries only the operation and device IDs —
// never key material; everything else is read from the operation in the store.
package queue

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/queueerror"

	"github.com/iotprov/iotprov/internal/errcode"
)

// Name is the provision queue; its poison queue is Name + PoisonSuffix, as the Functions
// host names it.
const Name = "provision-requests"

// PoisonSuffix is appended to a queue's name to name its poison queue.
const PoisonSuffix = "-poison"

// neverExpire is the message time-to-live: -1, never. The default (7 days) would silently
// drop operations queued during a long DPS or Key Vault outage; an operation that can no
// longer be served is failed by the worker or removed by purge instead, explicitly.
const neverExpire int32 = -1

// Bounds on what ParseMessage accepts: IDs are keys in Tables (≤ 1 KiB) and in practice a
// UUID and a ≤ 64-character device ID; a message is a small JSON object.
const (
	maxMessageBytes = 4 << 10
	maxIDLen        = 256
)

// Message is the body of a provision request.
type Message struct {
	OperationID string `json:"operationId"`
	DeviceID    string `json:"deviceId"`
}

// ParseMessage decodes a message body: a JSON object with both fields set, of bounded
// length, without control characters or characters Tables forbids in keys.
func ParseMessage(b []byte) (Message, error) {
	if len(b) > maxMessageBytes {
		return Message{}, fmt.Errorf("queue: message of %d bytes is larger than %d", len(b), maxMessageBytes)
	}
	var m Message
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return Message{}, fmt.Errorf("queue: message is not a JSON object: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Message{}, errors.New("queue: trailing data after the message object")
	}
	if err := checkID("operationId", m.OperationID); err != nil {
		return Message{}, err
	}
	if err := checkID("deviceId", m.DeviceID); err != nil {
		return Message{}, err
	}
	return m, nil
}

func checkID(name, v string) error {
	if v == "" {
		return fmt.Errorf("queue: message has no %s", name)
	}
	if len(v) > maxIDLen || !utf8.ValidString(v) {
		return fmt.Errorf("queue: message %s is too long or not UTF-8", name)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || r == '/' || r == '\\' || r == '#' || r == '?' {
			return fmt.Errorf("queue: message %s has a forbidden character", name)
		}
	}
	return nil
}

// Queue is one storage queue and its poison queue. It is safe for concurrent use.
type Queue struct {
	q, poison    *azqueue.QueueClient
	svc          *azqueue.ServiceClient
	name         string
	transactions atomic.Int64
}

// New returns the queue called name (usually Name) on svc.
func New(svc *azqueue.ServiceClient, name string) *Queue {
	return &Queue{
		svc:    svc,
		name:   name,
		q:      svc.NewQueueClient(name),
		poison: svc.NewQueueClient(name + PoisonSuffix),
	}
}

// Transactions returns how many storage requests this Queue has made.
func (q *Queue) Transactions() int64 { return q.transactions.Load() }

func (q *Queue) count() { q.transactions.Add(1) }

// Ensure creates the queue and its poison queue if they are missing.
func (q *Queue) Ensure(ctx context.Context) error {
	for _, name := range []string{q.name, q.name + PoisonSuffix} {
		q.count()
		if _, err := q.svc.CreateQueue(ctx, name, nil); err != nil && !queueerror.HasCode(err, queueerror.QueueAlreadyExists) {
			return unavailable("create queue "+name, err)
		}
	}
	return nil
}

// Enqueue sends m as base64(JSON(m)), visible after delay (0 = now) and never expiring.
// Base64 because that is the Functions host's default messageEncoding, and the azqueue SDK
// sends text as given.
func (q *Queue) Enqueue(ctx context.Context, m Message, delay time.Duration) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("queue: encode message: %w", err)
	}
	return q.send(ctx, q.q, b, delay)
}

func (q *Queue) send(ctx context.Context, c *azqueue.QueueClient, body []byte, delay time.Duration) error {
	vis, err := seconds(delay)
	if err != nil {
		return err
	}
	q.count()
	_, err = c.EnqueueMessage(ctx, base64.StdEncoding.EncodeToString(body), &azqueue.EnqueueMessageOptions{
		TimeToLive:        to.Ptr(neverExpire),
		VisibilityTimeout: to.Ptr(vis),
	})
	if err != nil {
		return unavailable("enqueue", err)
	}
	return nil
}

// maxVisibility is the service's upper bound on a visibility timeout.
const maxVisibility = 7 * 24 * time.Hour

// seconds converts a delay to the whole seconds the service takes, rounding up so that
// "not before" is never early.
func seconds(d time.Duration) (int32, error) {
	if d < 0 || d > maxVisibility {
		return 0, fmt.Errorf("queue: visibility delay %v outside [0, 7 days]", d)
	}
	return int32((d + time.Second - 1) / time.Second), nil
}

// Received is a message as dequeued, with the metadata the Functions host passes along.
type Received struct {
	ID, PopReceipt                                 string
	DequeueCount                                   int64
	InsertionTime, ExpirationTime, NextVisibleTime time.Time
	Body                                           []byte // base64-decoded message text (raw text if it was not base64)

	text string // the message text as stored, so Extend and Release put back exactly that
}

// Receive dequeues up to max messages (1..32), hiding them for visibility (at least 1 s).
func (q *Queue) Receive(ctx context.Context, max int32, visibility time.Duration) ([]Received, error) {
	if max < 1 || max > 32 {
		return nil, fmt.Errorf("queue: receive count %d outside [1, 32]", max)
	}
	vis, err := seconds(visibility)
	if err != nil {
		return nil, err
	}
	if vis < 1 {
		vis = 1
	}
	q.count()
	resp, err := q.q.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{
		NumberOfMessages:  to.Ptr(max),
		VisibilityTimeout: to.Ptr(vis),
	})
	if err != nil {
		return nil, unavailable("receive", err)
	}
	out := make([]Received, 0, len(resp.Messages))
	for _, m := range resp.Messages {
		if m == nil {
			continue
		}
		r := Received{
			ID:              deref(m.MessageID),
			PopReceipt:      deref(m.PopReceipt),
			InsertionTime:   derefTime(m.InsertionTime),
			ExpirationTime:  derefTime(m.ExpirationTime),
			NextVisibleTime: derefTime(m.TimeNextVisible),
			Body:            DecodeText(deref(m.MessageText)),
			text:            deref(m.MessageText),
		}
		if m.DequeueCount != nil {
			r.DequeueCount = *m.DequeueCount
		}
		out = append(out, r)
	}
	return out, nil
}

// DecodeText returns the bytes a queue message text stands for: base64-decoded when it is
// valid base64 (what Enqueue and the Functions host send), else the text itself, as the
// Functions host does for messages written by other tools.
func DecodeText(s string) []byte {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(s) > 0 {
		return b
	}
	return []byte(s)
}

// Delete removes a received message; a message already gone counts as deleted.
func (q *Queue) Delete(ctx context.Context, r Received) error {
	q.count()
	_, err := q.q.DeleteMessage(ctx, r.ID, r.PopReceipt, nil)
	if err != nil && !queueerror.HasCode(err, queueerror.MessageNotFound) {
		return unavailable("delete message", err)
	}
	return nil
}

// ErrLeaseLost: the message is no longer ours to update — deleted, or received again by
// someone else (with a new pop receipt) after our visibility lapsed.
var ErrLeaseLost = errors.New("queue: message lease lost")

// Extend hides a received message for visibility from now (0 = visible now) and returns it
// with the new pop receipt and next-visible time, which every later Delete, Release or
// Extend of it must use. The service's update also rewrites the content, so Extend puts
// back the message text as stored: the message stays what the producer wrote. A message
// that is no longer ours fails with ErrLeaseLost.
func (q *Queue) Extend(ctx context.Context, r Received, visibility time.Duration) (Received, error) {
	vis, err := seconds(visibility)
	if err != nil {
		return r, err
	}
	if r.text == "" && len(r.Body) > 0 {
		// Only Receive sets the stored text, and writing any other text could change the
		// message (its producer's encoding is not ours to guess).
		return r, fmt.Errorf("queue: message %q was not received from a Queue; its stored text is unknown", r.ID)
	}
	q.count()
	resp, err := q.q.UpdateMessage(ctx, r.ID, r.PopReceipt, r.text,
		&azqueue.UpdateMessageOptions{VisibilityTimeout: to.Ptr(vis)})
	if err != nil {
		if queueerror.HasCode(err, queueerror.MessageNotFound, queueerror.PopReceiptMismatch) {
			return r, fmt.Errorf("%w: %w", ErrLeaseLost, err)
		}
		return r, unavailable("update message", err)
	}
	if resp.PopReceipt != nil {
		r.PopReceipt = *resp.PopReceipt
	}
	if resp.TimeNextVisible != nil {
		r.NextVisibleTime = resp.TimeNextVisible.UTC()
	}
	return r, nil
}

// Release makes a received message visible again after visibility (0 = now), as a failed
// invocation does; its dequeue count goes up when it is received again. A message that is
// no longer ours (our visibility lapsed and someone else holds it) has nothing to release.
func (q *Queue) Release(ctx context.Context, r Received, visibility time.Duration) error {
	if _, err := q.Extend(ctx, r, visibility); err != nil && !errors.Is(err, ErrLeaseLost) {
		return err
	}
	return nil
}

// MoveToPoison enqueues the message body (base64) to the poison queue, then deletes it from
// this queue. A crash in between leaves it in both, which is the safe side: the worker
// treats a redelivered message for a finished operation as done.
func (q *Queue) MoveToPoison(ctx context.Context, r Received) error {
	if err := q.send(ctx, q.poison, r.Body, 0); err != nil {
		return err
	}
	return q.Delete(ctx, r)
}

func unavailable(what string, err error) error {
	return errcode.Unavailable(fmt.Errorf("queue: %s: %w", what, err), "The service is temporarily unavailable; try again later.")
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func derefTime(p *time.Time) time.Time {
	if p == nil {
		return time.Time{}
	}
	return p.UTC()
}
