package localrun

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/queueerror"

	"github.com/iotprov/iotprov/internal/queue"
)

// LeaseRenewer extends the invisibility of a message being processed. Renew returns the
// message with its new pop receipt, which settling it must use from then on.
type LeaseRenewer interface {
	Renew(ctx context.Context, r queue.Received, visibility time.Duration) (queue.Received, error)
}

// ErrLeaseLost: the message is no longer ours (deleted, or received again by someone else
// after our lease lapsed). The invocation may finish; settling it will be a no-op.
var ErrLeaseLost = errors.New("localrun: message lease lost")

// StorageQueue is the provision queue as the local runner uses it: queue.Queue plus the
// lease renewal the Functions host's listener does, so a message stays invisible while it
// is processed under a short lease, and a killed handler's messages come back within
// seconds instead of after a whole function timeout.
type StorageQueue struct {
	*queue.Queue
	client   *azqueue.QueueClient
	renewals atomic.Int64
}

// Transactions counts the queue's storage requests: receives, deletes, releases and
// lease renewals — what the Functions host makes in Azure, billed to the same account.
func (q *StorageQueue) Transactions() int64 { return q.Queue.Transactions() + q.renewals.Load() }

var (
	_ Queue        = (*StorageQueue)(nil)
	_ LeaseRenewer = (*StorageQueue)(nil)
)

// NewStorageQueue returns the queue called name (queue.Name) on svc, with renewal.
func NewStorageQueue(svc *azqueue.ServiceClient, name string) *StorageQueue {
	return &StorageQueue{Queue: queue.New(svc, name), client: svc.NewQueueClient(name)}
}

// Renew hides r for visibility more from now. The service's update also rewrites the
// text; base64 of the body is what register writes, and a text that was not base64
// decodes (queue.DecodeText) to the same body either way.
func (q *StorageQueue) Renew(ctx context.Context, r queue.Received, visibility time.Duration) (queue.Received, error) {
	secs := int32((visibility + time.Second - 1) / time.Second)
	if secs < 1 || visibility > 7*24*time.Hour {
		return r, fmt.Errorf("localrun: lease %v outside [1 s, 7 days]", visibility)
	}
	q.renewals.Add(1)
	resp, err := q.client.UpdateMessage(ctx, r.ID, r.PopReceipt, base64.StdEncoding.EncodeToString(r.Body),
		&azqueue.UpdateMessageOptions{VisibilityTimeout: to.Ptr(secs)})
	if err != nil {
		if queueerror.HasCode(err, queueerror.MessageNotFound, queueerror.PopReceiptMismatch) {
			return r, fmt.Errorf("%w: %v", ErrLeaseLost, err)
		}
		return r, fmt.Errorf("localrun: renew lease: %w", err)
	}
	if resp.PopReceipt != nil {
		r.PopReceipt = *resp.PopReceipt
	}
	if resp.TimeNextVisible != nil {
		r.NextVisibleTime = resp.TimeNextVisible.UTC()
	}
	return r, nil
}
