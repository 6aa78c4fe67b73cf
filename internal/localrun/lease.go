package localrun

import (
	"context"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/iotprov/iotprov/internal/queue"
)

// LeaseRenewer extends the invisibility of a message being processed. Renew returns the
// message with its new pop receipt, which settling it must use from then on.
type LeaseRenewer interface {
	Renew(ctx context.Context, r queue.Received, visibility time.Duration) (queue.Received, error)
}

// ErrLeaseLost: the message is no longer ours (deleted, or received again by someone else
// after our lease lapsed). The invocation may finish; settling it will be a no-op. It is
// queue.ErrLeaseLost, so errors.Is matches either name.
var ErrLeaseLost = queue.ErrLeaseLost

// StorageQueue is the provision queue as the local runner uses it: queue.Queue plus the
// lease renewal the Functions host's listener does, so a message stays invisible while it
// is processed under a short lease, and a killed handler's messages come back within
// seconds instead of after a whole function timeout. Its Transactions (queue.Queue's)
// count receives, deletes, releases and lease renewals alike — what the Functions host
// makes in Azure, billed to the same account.
type StorageQueue struct {
	*queue.Queue
}

var (
	_ Queue        = (*StorageQueue)(nil)
	_ LeaseRenewer = (*StorageQueue)(nil)
)

// NewStorageQueue returns the queue called name (queue.Name) on svc, with renewal.
func NewStorageQueue(svc *azqueue.ServiceClient, name string) *StorageQueue {
	return &StorageQueue{Queue: queue.New(svc, name)}
}

// Renew hides r for visibility more from now (queue.Queue.Extend). A lease must be
// positive: renewing with 0 would make the message visible while it is processed.
func (q *StorageQueue) Renew(ctx context.Context, r queue.Received, visibility time.Duration) (queue.Received, error) {
	if visibility <= 0 {
		return r, fmt.Errorf("localrun: lease %v outside [1 s, 7 days]", visibility)
	}
	return q.Extend(ctx, r, visibility)
}
