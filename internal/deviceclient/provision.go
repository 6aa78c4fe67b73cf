package deviceclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/iotprov/iotprov/internal/pause"
)

// ProvisionOptions paces Provision and lets a caller watch it.
type ProvisionOptions struct {
	// MinPoll is the shortest wait before any request after the first, whatever
	// Retry-After says (0: exactly what the service asks for).
	MinPoll time.Duration
	// MaxWait is the longest wait (0: MaxRetryAfter), so an absurd Retry-After does not
	// stall a device.
	MaxWait time.Duration
	// RetryRegister makes a register answered with a temporary error (503, 429 with
	// Retry-After) wait and register again, as a fleet of devices would; otherwise
	// Provision returns that error for the caller to report.
	RetryRegister bool
	// Progress, when set, is called after every answer of the service, before the wait
	// or the return it leads to.
	Progress func(Event)
}

// Event is one answer of the service during Provision.
type Event struct {
	// OperationID is "" until register has answered with one.
	OperationID string
	// Poll counts the registration GETs answered so far: 0 for a register answer.
	Poll int
	// Status is the operation's state after this answer; "" for an error answer.
	Status Status
	// Err is the answer's error, an *APIError or *MalformedError; Provision waits out
	// the temporary ones (see APIError.Temporary) and returns on the others.
	Err error
	// Wait is how long Provision waits before its next request; 0 when it is returning.
	Wait time.Duration
}

// minTemporaryWait is the least a device waits after a 503 or 429: asking a service that
// is down or throttling it again at once helps no one.
const minTemporaryWait = time.Second

// Provision registers (with csrPEM, or nil for a server-generated key) and polls until
// the operation is assigned or failed, honouring Retry-After within opts' bounds. It
// returns the final result — check its Status: a failed operation is a result, not an
// error — or the first error it does not wait out, prefixed "register: " or "poll: ",
// or ctx's error.
func (c *Client) Provision(ctx context.Context, csrPEM []byte, opts ProvisionOptions) (*Result, error) {
	progress := func(ev Event) {
		if opts.Progress != nil {
			opts.Progress(ev)
		}
	}
	pace := func(retryAfter time.Duration, temporary bool) time.Duration {
		w := max(retryAfter, opts.MinPoll)
		if temporary {
			w = max(w, minTemporaryWait)
		}
		limit := opts.MaxWait
		if limit <= 0 {
			limit = MaxRetryAfter
		}
		return min(w, limit)
	}

	var (
		opID string
		wait time.Duration
	)
	for opID == "" {
		id, retryAfter, err := c.Register(ctx, csrPEM)
		if err == nil {
			opID, wait = id, pace(retryAfter, false)
			progress(Event{OperationID: opID, Status: StatusAssigning, Wait: wait})
			break
		}
		if !isAnswer(err) {
			return nil, fmt.Errorf("register: %w", err)
		}
		var ae *APIError
		if !opts.RetryRegister || !errors.As(err, &ae) || !ae.Temporary() {
			progress(Event{Err: err})
			return nil, fmt.Errorf("register: %w", err)
		}
		wait = pace(ae.RetryAfter, true)
		progress(Event{Err: err, Wait: wait})
		if err := pause.For(ctx, wait); err != nil {
			return nil, fmt.Errorf("register: %w", err)
		}
	}

	for polls := 0; ; {
		if err := pause.For(ctx, wait); err != nil {
			return nil, fmt.Errorf("operation %s still %s: %w", opID, StatusAssigning, err)
		}
		res, err := c.Poll(ctx, opID)
		if err != nil && !isAnswer(err) {
			return nil, fmt.Errorf("poll: %w", err)
		}
		polls++
		var ae *APIError
		switch {
		case err != nil && errors.As(err, &ae) && ae.Temporary():
			wait = pace(ae.RetryAfter, true)
			progress(Event{OperationID: opID, Poll: polls, Err: err, Wait: wait})
		case err != nil:
			progress(Event{OperationID: opID, Poll: polls, Err: err})
			return nil, fmt.Errorf("poll: %w", err)
		case res.Status == StatusAssigning:
			wait = pace(res.RetryAfter, false)
			progress(Event{OperationID: opID, Poll: polls, Status: res.Status, Wait: wait})
		default:
			progress(Event{OperationID: opID, Poll: polls, Status: res.Status})
			return res, nil
		}
	}
}

// isAnswer says err came from an answer of the service rather than from the transport.
func isAnswer(err error) bool {
	var ae *APIError
	var me *MalformedError
	return errors.As(err, &ae) || errors.As(err, &me)
}
