package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/queue"
	"github.com/iotprov/iotprov/internal/store"
)

// registerRequest is the optional register body.
type registerRequest struct {
	CSR string `json:"csr"`
}

// operationStatus is the answer while an operation is in flight.
type operationStatus struct {
	OperationID string `json:"operationId"`
	Status      string `json:"status"`
}

// statusAssigning is what devices see for every state before assigned or failed.
const statusAssigning = "assigning"

// raceRetries bounds how often register re-reads after losing a race to a concurrent
// register of the same device; losing more than this means something is wrong.
const raceRetries = 3

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		s.methodNotAllowed(w, r, http.MethodPost)
		return
	}
	identity, deviceID, err := s.authenticate(r)
	if err != nil {
		s.renderError(w, r, err)
		return
	}
	var req registerRequest
	if err := readJSON(w, r, &req); err != nil {
		s.renderError(w, r, err)
		return
	}
	var csrDER []byte
	if req.CSR != "" {
		csr, err := ca.ParseCSR([]byte(req.CSR))
		if err != nil {
			s.renderError(w, r, err)
			return
		}
		csrDER = csr.Raw
	}
	// The device policy costs a table read: only for a request that is otherwise valid.
	minInterval := s.MinInterval
	if s.Policy != nil {
		// Polls are not gated: a device disabled mid-flight can still collect what was
		// already issued to it, but it cannot start anything new.
		adm, err := s.Policy.Admit(r.Context(), deviceID)
		if err != nil {
			s.renderError(w, r, err)
			return
		}
		if adm.HasMinInterval {
			minInterval = adm.MinInterval
		}
	}
	op, err := s.register(r.Context(), identity, deviceID, csrDER, minInterval)
	if err != nil {
		s.renderError(w, r, err)
		return
	}
	w.Header().Set("Location", RegistrationsPath+op.ID)
	setRetryAfter(w, s.RetryAfter)
	renderJSON(w, http.StatusAccepted, operationStatus{OperationID: op.ID, Status: statusAssigning})
}

// register returns the device's in-flight operation, or creates, records and enqueues a
// new one. The operation and the device's link to it are written in one transaction, so
// concurrent registers of one device agree on one operation.
func (s *Server) register(ctx context.Context, identity auth.Identity, deviceID string, csrDER []byte, minInterval time.Duration) (*store.Operation, error) {
	log := s.Log.With("deviceId", deviceID, "auth", identity.Method)
	// Most registers are a device's first, so the first attempt creates the operation and
	// inserts the device's link without reading first: one storage transaction instead of
	// two. A device that has a link makes that insert fail, and carries on from the link
	// as read after the conflict (a re-registration costs one transaction more).
	var cur *store.Current
	for attempt := 0; ; attempt++ {
		if cur != nil {
			prev, err := s.Ops.GetOperation(ctx, deviceID, cur.OperationID)
			switch {
			case errors.Is(err, store.ErrNotFound):
				// The linked operation was purged: the device starts afresh.
			case err != nil:
				return nil, unavailable(err)
			case !prev.Status.Terminal():
				log.Info("register: operation already in flight", "operationId", prev.ID)
				s.requeueIfStuck(ctx, log, prev)
				return prev, nil
			case prev.ErrorCode == errcode.CodeUnavailable:
				// The service abandoned it (it could not be queued) and told the device to
				// register again: that retry is not a re-registration to throttle.
			default:
				if wait := cur.CreatedAt.Add(minInterval).Sub(s.now()); wait > 0 {
					return nil, errcode.New(http.StatusTooManyRequests, errcode.CodeTooManyRequests,
						"This device registered recently; retry after the interval.").WithRetryAfter(wait)
				}
			}
		}
		now := s.now().UTC()
		op := &store.Operation{
			ID:        s.NewID(),
			DeviceID:  deviceID,
			Identity:  identity.Key(),
			Status:    store.StatusQueued,
			CSR:       csrDER,
			CreatedAt: now,
		}
		err := s.Ops.CreateOperation(ctx, op, cur)
		if errors.Is(err, store.ErrConflict) && attempt < raceRetries {
			// The device has a link, or another register of it won: go by the link, as
			// the store read it checking the conflict, or read it now.
			var ce *store.ConflictError
			if errors.As(err, &ce) {
				cur = ce.Current
				continue
			}
			switch cur, err = s.Ops.GetCurrent(ctx, deviceID); {
			case errors.Is(err, store.ErrNotFound):
				cur = nil
			case err != nil:
				return nil, unavailable(err)
			}
			continue
		}
		if err != nil {
			return nil, unavailable(err)
		}
		if err := s.Queue.Enqueue(ctx, queue.Message{OperationID: op.ID, DeviceID: deviceID}, 0); err != nil {
			s.abandon(ctx, log, op)
			return nil, unavailable(err)
		}
		log.Info("register: operation created", "operationId", op.ID, "csr", csrDER != nil)
		return op, nil
	}
}

// stuckAfter is how long an operation may stay queued, never attempted, before register
// assumes its first queue message was lost (the handler died between the table write and
// the enqueue) and sends it again, sooner than the purge timer's sweep would.
const stuckAfter = time.Minute

// requeueIfStuck re-sends the queue message of an operation that never moved, so a
// device that registers again is not handed work nobody will do. Only one never
// attempted: a deferred operation (Attempts > 0) has a message waiting out its delay,
// and a second one would only double the work and DPS's quota. The worker records the
// attempt before sending (ETag-conditional), so concurrent registers send one message.
func (s *Server) requeueIfStuck(ctx context.Context, log *slog.Logger, op *store.Operation) {
	if s.Requeue == nil || op.Status != store.StatusQueued || op.Attempts > 0 || s.now().Sub(op.UpdatedAt) < stuckAfter {
		return
	}
	if err := s.Requeue(ctx, op, s.now().Sub(op.UpdatedAt)); err != nil {
		log.Warn("register: could not re-queue a stuck operation", "operationId", op.ID, "err", err)
	}
}

// abandon marks an operation that could not be enqueued as failed, so the device's next
// register starts a new one instead of waiting on work nobody will do.
func (s *Server) abandon(ctx context.Context, log *slog.Logger, created *store.Operation) {
	// CreateOperation leaves no ETag; read the operation (nothing else has touched it,
	// since it was never queued) to make the conditional write.
	op, err := s.Ops.GetOperation(ctx, created.DeviceID, created.ID)
	if err != nil {
		log.Error("register: could not read unqueued operation to mark it failed", "operationId", created.ID, "err", err)
		return
	}
	op.Status = store.StatusFailed
	op.ErrorCode = errcode.CodeUnavailable
	op.ErrorMessage = "The operation could not be queued; register again."
	if err := s.Ops.UpdateOperation(ctx, op); err != nil {
		log.Error("register: could not mark unqueued operation failed", "operationId", op.ID, "err", err)
	}
}
