// Package provision is the worker behind the provision queue (boulder's "RA" for this
// service): it moves one operation through queued → issued → assigned (or failed),
// issuing the certificate with the Key Vault–held CA and registering the device with DPS
// on its behalf. Every transition is an ETag-conditional write, so duplicate or
// concurrent deliveries of one message cannot fork an operation.
package provision

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/iotprov/iotprov/internal/ca"
	"github.com/iotprov/iotprov/internal/dps"
	"github.com/iotprov/iotprov/internal/keyseal"
	"github.com/iotprov/iotprov/internal/queue"
	"github.com/iotprov/iotprov/internal/store"
)

// Operations is the part of the store the worker uses.
type Operations interface {
	GetOperation(ctx context.Context, deviceID, operationID string) (*store.Operation, error)
	UpdateOperation(ctx context.Context, op *store.Operation) error
	Purge(ctx context.Context, now time.Time, keyRetention, opRetention time.Duration) (int, int, error)
}

// StalledLister finds in-flight operations that have not moved since a time (store.Store).
type StalledLister interface {
	Stalled(ctx context.Context, before time.Time, limit int) ([]*store.Operation, error)
}

// Enqueuer puts an operation back on the queue with a delay (throttling, outages).
type Enqueuer interface {
	Enqueue(ctx context.Context, m queue.Message, delay time.Duration) error
}

// Authorities yields the current signing CA (AuthorityLoader).
type Authorities interface {
	Authority(ctx context.Context) (*ca.Authority, error)
}

// KeySealer encrypts private keys at rest (DataKeySealer).
type KeySealer interface {
	Seal(ctx context.Context, plaintext []byte, operationID, deviceID string) ([]byte, error)
	Open(ctx context.Context, sealed []byte, operationID, deviceID string) ([]byte, error)
}

// Registrar registers a device with DPS (dps.Client).
type Registrar interface {
	RegisterAndWait(ctx context.Context, registrationID string, cert tls.Certificate) (*dps.Operation, error)
}

// Error codes recorded on failed operations.
const (
	CodeDPSRegistrationFailed = "dps_registration_failed"
	CodeRetriesExhausted      = "provisioning_retries_exhausted"
	CodeDeliveryExhausted     = "provisioning_failed"
	CodeBadOperation          = "invalid_operation"
)

// Worker provisions operations.
type Worker struct {
	Ops          Operations
	Queue        Enqueuer
	CA           Authorities
	Keys         KeySealer
	DPS          Registrar
	Profile      *ca.Profile // device certificates
	RegProfile   *ca.Profile // short-lived certificates for registering CSR devices with DPS
	KeyAlgorithm ca.KeyAlgorithm

	MaxDequeueCount int64         // host.json maxDequeueCount
	MaxAttempts     int           // deferrals before an operation fails
	DPSTimeout      time.Duration // one register-and-poll attempt
	KeyRetention    time.Duration
	OpRetention     time.Duration
	Stalls          StalledLister // nil: purge does not sweep stalled operations
	StallAfter      time.Duration // an in-flight operation idle this long is re-queued by purge
	SweepLimit      int           // operations one sweep handles; 0 means DefaultSweepLimit
	Now             func() time.Time
	Log             *slog.Logger
}

// transientError defers an operation: it goes back on the queue after Delay, and its
// attempt count grows, without burning the message's dequeue count.
type transientError struct {
	Delay   time.Duration
	Code    string // recorded if the attempts run out
	Message string
	Cause   error
}

func (e *transientError) Error() string { return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Cause) }
func (e *transientError) Unwrap() error { return e.Cause }

// permanentError fails the operation at once.
type permanentError struct {
	Code, Message string
	Cause         error
}

func (e *permanentError) Error() string { return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Cause) }
func (e *permanentError) Unwrap() error { return e.Cause }

// Provision runs one delivery of a queue message. A nil error acknowledges the message;
// an error asks the host to redeliver it, which only helps for failures a retry can fix
// (storage blips); everything else is recorded on the operation.
func (w *Worker) Provision(ctx context.Context, msg queue.Message, dequeueCount int64) error {
	log := w.logger().With("operationId", msg.OperationID, "deviceId", msg.DeviceID, "dequeueCount", dequeueCount)
	op, err := w.Ops.GetOperation(ctx, msg.DeviceID, msg.OperationID)
	if errors.Is(err, store.ErrNotFound) {
		// Purged, or never created: nothing to do, and retrying would only feed the poison queue.
		log.Warn("provision: unknown operation, message acknowledged")
		return nil
	}
	if err != nil {
		return fmt.Errorf("provision: read operation: %w", err)
	}
	if op.Status.Terminal() {
		// A redelivery, or a duplicate of a message another delivery finished.
		log.Info("provision: operation already finished", "status", op.Status)
		return nil
	}
	// cred is the DPS client credential issue just made, so register need not rebuild it
	// from storage (unseal the key, parse the chain); nil on a redelivery or for a CSR.
	var cred *tls.Certificate
	for !op.Status.Terminal() {
		var step error
		switch op.Status {
		case store.StatusQueued:
			cred, step = w.issue(ctx, op)
		case store.StatusIssued:
			step = w.register(ctx, op, cred)
		default:
			step = &permanentError{Code: CodeBadOperation, Message: "The operation is in an unknown state.",
				Cause: fmt.Errorf("status %q", op.Status)}
		}
		if step == nil {
			log.Info("provision: step done", "status", op.Status)
			continue
		}
		var (
			transient *transientError
			permanent *permanentError
		)
		switch {
		case errors.Is(step, store.ErrConflict):
			// Another delivery moved the operation on: continue from what it wrote.
			log.Info("provision: concurrent update, reloading")
			if op, err = w.Ops.GetOperation(ctx, msg.DeviceID, msg.OperationID); err != nil {
				return fmt.Errorf("provision: reload operation: %w", err)
			}
			if op.Status.Terminal() {
				log.Info("provision: operation finished by another delivery", "status", op.Status)
			}
			continue
		case errors.As(step, &transient):
			return w.deferOperation(ctx, log, op, msg, transient, dequeueCount >= w.MaxDequeueCount)
		case errors.As(step, &permanent):
			return w.fail(ctx, log, op, permanent.Code, permanent.Message, permanent.Cause)
		case dequeueCount >= w.MaxDequeueCount:
			// The host will not deliver this message again: record why instead of leaving
			// the device polling an operation that never ends.
			return w.fail(ctx, log, op, CodeDeliveryExhausted,
				"Provisioning failed repeatedly; register again.", step)
		default:
			log.Warn("provision: step failed, host will redeliver", "err", step)
			return step
		}
	}
	return nil
}

// issue signs the device certificate and stores it (with the sealed key) before DPS is
// called, so a redelivery resumes with the same certificate.
// For a server-generated key it also returns the device's TLS credential, once stored.
func (w *Worker) issue(ctx context.Context, op *store.Operation) (*tls.Certificate, error) {
	authority, err := w.CA.Authority(ctx)
	if err != nil {
		return nil, &transientError{Delay: time.Minute, Code: "ca_unavailable",
			Message: "The signing CA is not available.", Cause: err}
	}
	var (
		pub    crypto.PublicKey
		key    crypto.Signer
		keyPEM []byte
	)
	if op.CSR != nil {
		csr, err := x509.ParseCertificateRequest(op.CSR)
		if err != nil {
			return nil, &permanentError{Code: "invalid_csr", Message: "The stored CSR cannot be read.", Cause: err}
		}
		pub = csr.PublicKey
	} else {
		if key, err = ca.GenerateKey(w.KeyAlgorithm); err != nil {
			return nil, fmt.Errorf("generate key: %w", err)
		}
		if keyPEM, err = ca.MarshalPrivateKeyPEM(key); err != nil {
			return nil, fmt.Errorf("marshal key: %w", err)
		}
		pub = key.Public()
	}
	issued, err := w.Profile.Issue(authority, ca.Request{DeviceID: op.DeviceID, PublicKey: pub}, w.now())
	if err != nil {
		return nil, &permanentError{Code: "issuance_failed", Message: "The certificate could not be issued.", Cause: err}
	}
	if keyPEM != nil {
		sealed, err := w.Keys.Seal(ctx, keyPEM, op.ID, op.DeviceID)
		if err != nil {
			return nil, &transientError{Delay: 30 * time.Second, Code: "data_key_unavailable",
				Message: "The data key is not available.", Cause: err}
		}
		op.SealedKey = sealed
		op.KeyAlgorithm = string(w.KeyAlgorithm)
	}
	op.CertificatePEM = string(issued.ChainPEM)
	op.Status = store.StatusIssued
	if err := w.Ops.UpdateOperation(ctx, op); err != nil {
		return nil, err
	}
	if key == nil {
		return nil, nil
	}
	c := credential(issued, key)
	return &c, nil
}

// register registers the device with DPS over mutual TLS and records the assignment.
// cred is the credential issue just made, or nil to build it from the operation.
func (w *Worker) register(ctx context.Context, op *store.Operation, cred *tls.Certificate) error {
	if cred == nil {
		c, err := w.dpsCredential(ctx, op)
		if err != nil {
			return err
		}
		cred = &c
	}
	cert := *cred
	dctx, cancel := context.WithTimeout(ctx, w.DPSTimeout)
	defer cancel()
	start := time.Now()
	res, err := w.DPS.RegisterAndWait(dctx, op.DeviceID, cert)
	log := w.logger().With("operationId", op.ID, "deviceId", op.DeviceID, "took", time.Since(start))
	if err != nil {
		log.Debug("provision: DPS registration did not complete", "err", err)
		return w.classifyDPSError(op, err)
	}
	log.Debug("provision: DPS registration done", "dpsOperationId", res.OperationID, "dpsStatus", res.Status)
	if res.State == nil || res.State.AssignedHub == "" || res.State.DeviceID == "" {
		return &permanentError{Code: CodeDPSRegistrationFailed, Message: "DPS assigned the device without a hub or device ID."}
	}
	now := w.now().UTC()
	op.Status = store.StatusAssigned
	op.Host = res.State.AssignedHub
	op.AssignedDeviceID = res.State.DeviceID
	op.DPSOperationID = res.OperationID
	op.AssignedAt = now
	op.ErrorCode, op.ErrorMessage = "", ""
	return w.Ops.UpdateOperation(ctx, op)
}

func (w *Worker) classifyDPSError(op *store.Operation, err error) error {
	var derr *dps.Error
	if errors.As(err, &derr) && !derr.Transient() {
		msg := fmt.Sprintf("DPS refused the registration (HTTP %d, errorCode %d): %s", derr.StatusCode, derr.ErrorCode, derr.Message)
		return &permanentError{Code: CodeDPSRegistrationFailed, Message: msg, Cause: err}
	}
	delay := backoff(op.Attempts)
	message := "DPS did not complete the registration in time."
	if derr != nil {
		if derr.RetryAfter > 0 {
			delay = derr.RetryAfter + jitter(derr.RetryAfter)
		}
		// Kept on the operation, so that if the attempts run out the device and the
		// operator see DPS's last word, not only that we gave up.
		message = fmt.Sprintf("DPS did not complete the registration (last answer: HTTP %d, errorCode %d: %s).",
			derr.StatusCode, derr.ErrorCode, derr.Message)
	}
	return &transientError{Delay: delay, Code: "dps_unavailable", Message: message, Cause: err}
}

// dpsCredential is the client certificate the worker presents to DPS. For a
// server-generated key it is the device's own certificate; for a CSR the service never
// holds the device's key, so it registers with a short-lived certificate for the same
// device ID from the same CA (DPS and IoT Hub authenticate the device by CA and CN).
func (w *Worker) dpsCredential(ctx context.Context, op *store.Operation) (tls.Certificate, error) {
	if op.CSR == nil {
		keyPEM, err := w.Keys.Open(ctx, op.SealedKey, op.ID, op.DeviceID)
		if errors.Is(err, keyseal.ErrOpen) {
			// Sealed under a data key that is no longer current, or damaged: waiting
			// will not open it. Fail now; the device registers again for a new key.
			return tls.Certificate{}, &permanentError{Code: "issuance_failed",
				Message: "The stored private key can no longer be decrypted (the data key changed); register again.", Cause: err}
		}
		if err != nil {
			return tls.Certificate{}, &transientError{Delay: 30 * time.Second, Code: "data_key_unavailable",
				Message: "The data key is not available.", Cause: err}
		}
		cert, err := tls.X509KeyPair([]byte(op.CertificatePEM), keyPEM)
		if err != nil {
			return tls.Certificate{}, &permanentError{Code: "issuance_failed", Message: "The stored credentials are unusable.", Cause: err}
		}
		return cert, nil
	}
	authority, err := w.CA.Authority(ctx)
	if err != nil {
		return tls.Certificate{}, &transientError{Delay: time.Minute, Code: "ca_unavailable",
			Message: "The signing CA is not available.", Cause: err}
	}
	key, err := ca.GenerateKey(ca.ECDSAP256)
	if err != nil {
		return tls.Certificate{}, err
	}
	issued, err := w.RegProfile.Issue(authority, ca.Request{DeviceID: op.DeviceID, PublicKey: key.Public()}, w.now())
	if err != nil {
		return tls.Certificate{}, &permanentError{Code: "issuance_failed", Message: "The registration certificate could not be issued.", Cause: err}
	}
	return credential(issued, key), nil
}

// credential is the TLS client credential for a certificate just issued for key.
func credential(issued *ca.Issued, key crypto.Signer) tls.Certificate {
	return tls.Certificate{Certificate: issued.Chain, PrivateKey: key, Leaf: issued.Certificate}
}

// deferOperation records the attempt and puts the operation back on the queue after the
// delay. The message is acknowledged, so throttling never counts against maxDequeueCount.
// On the last delivery a deferral that cannot be re-enqueued fails the operation: the host
// is about to give the message up, and nothing else would ever pick the operation up again.
func (w *Worker) deferOperation(ctx context.Context, log *slog.Logger, op *store.Operation, msg queue.Message, t *transientError, lastDelivery bool) error {
	op.Attempts++
	if op.Attempts >= w.MaxAttempts {
		return w.fail(ctx, log, op, CodeRetriesExhausted, t.Message+" Retries exhausted.", t)
	}
	op.ErrorCode, op.ErrorMessage = t.Code, t.Message // last transient error, for operators
	if err := w.Ops.UpdateOperation(ctx, op); err != nil {
		if errors.Is(err, store.ErrConflict) {
			// A real conflict: the store has already ruled out a retry of our own write
			// (store.UpdateOperation), so another delivery moved the operation on.
			log.Info("provision: operation moved on while deferring; acknowledged")
			return nil
		}
		return fmt.Errorf("provision: record attempt: %w", err)
	}
	if err := w.Queue.Enqueue(ctx, msg, t.Delay); err != nil {
		if lastDelivery {
			return w.fail(ctx, log, op, CodeDeliveryExhausted, "Provisioning could not be rescheduled; register again.", err)
		}
		return fmt.Errorf("provision: re-enqueue: %w", err)
	}
	log.Warn("provision: deferred", "code", t.Code, "attempt", op.Attempts, "delay", t.Delay.Round(time.Millisecond), "err", t.Cause)
	return nil
}

// fail ends the operation with a stable code and a message the device may see.
func (w *Worker) fail(ctx context.Context, log *slog.Logger, op *store.Operation, code, message string, cause error) error {
	op.Status = store.StatusFailed
	op.ErrorCode, op.ErrorMessage = code, message
	op.AssignedAt = w.now().UTC() // when it ended: the key-retention clock starts here
	if err := w.Ops.UpdateOperation(ctx, op); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil
		}
		return fmt.Errorf("provision: record failure: %w", err)
	}
	log.Error("provision: operation failed", "code", code, "err", cause)
	return nil
}

// Purge erases key material past its retention, deletes old operations, and sweeps
// stalled ones. A failure of one does not stop the other: they guard different promises.
func (w *Worker) Purge(ctx context.Context) error {
	keys, ops, perr := w.Ops.Purge(ctx, w.now(), w.KeyRetention, w.OpRetention)
	w.logger().Info("purge", "keysErased", keys, "operationsDeleted", ops, "err", perr)
	requeued, failed, serr := w.Sweep(ctx)
	w.logger().Info("purge: stalled operations swept", "requeued", requeued, "failed", failed, "err", serr)
	return errors.Join(perr, serr)
}

// DefaultSweepLimit bounds one sweep, so a timer run stays short even after an outage
// that stranded many operations; the next run (whose writes moved these on) takes the rest.
const DefaultSweepLimit = 500

// Sweep re-queues in-flight operations (queued or issued) that have not moved for
// StallAfter: their message was lost (the handler died between the table write and the
// enqueue) or went to the poison queue while storage was down, and a device that only
// polls would otherwise wait forever. Each re-queue counts as an attempt, so an operation
// that stalls for good ends failed (provisioning_retries_exhausted) after MaxAttempts.
//
// The attempt is written (ETag-conditional) before the message is sent: an operation
// that moved since it was listed is alive and left alone, and two sweeps cannot both
// re-queue it. A duplicate of a message still in flight is harmless: the worker's writes
// are ETag-conditional and a finished operation's message is acknowledged.
func (w *Worker) Sweep(ctx context.Context) (requeued, failed int, err error) {
	if w.Stalls == nil || w.StallAfter <= 0 {
		return 0, 0, nil
	}
	limit := w.SweepLimit
	if limit <= 0 {
		limit = DefaultSweepLimit
	}
	stalled, err := w.Stalls.Stalled(ctx, w.now().Add(-w.StallAfter), limit)
	if err != nil {
		return 0, 0, fmt.Errorf("sweep: list stalled operations: %w", err)
	}
	for _, op := range stalled {
		switch outcome, err := w.Requeue(ctx, op, "sweep", w.StallAfter); {
		case err != nil:
			// Storage or the queue is failing: stop here; the next timer run starts over
			// (an attempt recorded before a failed enqueue moved UpdatedAt, so the
			// operation comes up again after StallAfter).
			return requeued, failed, fmt.Errorf("sweep: %w", err)
		case outcome == Requeued:
			requeued++
		case outcome == FailedExhausted:
			failed++
		}
	}
	return requeued, failed, nil
}

// RequeueOutcome is what Requeue did with an operation.
type RequeueOutcome int

const (
	MovedOn         RequeueOutcome = iota // changed since it was read: alive, left alone
	Requeued                              // attempt recorded, message sent again
	FailedExhausted                       // attempts ran out: the operation failed
)

// Requeue sends the queue message of an in-flight operation again, for the sweep and for
// register when a device comes back to an operation that never moved. It records one
// more attempt first, ETag-conditional on op as read: of concurrent callers only one
// goes on, an operation that moved since is left alone, and one that has stalled for
// good ends failed (provisioning_retries_exhausted) after MaxAttempts. by names the
// caller in the log; stalledFor is how long the caller saw the operation not move.
func (w *Worker) Requeue(ctx context.Context, op *store.Operation, by string, stalledFor time.Duration) (RequeueOutcome, error) {
	log := w.logger().With("operationId", op.ID, "deviceId", op.DeviceID, "status", op.Status, "since", op.UpdatedAt, "by", by)
	op.Attempts++
	exhausted := op.Attempts >= w.MaxAttempts
	if exhausted {
		message := fmt.Sprintf("Provisioning stalled: the operation made no progress for %s, %d times. Retries exhausted; register again.",
			stalledFor, op.Attempts)
		if op.ErrorMessage != "" {
			message += " Last error: " + op.ErrorMessage
		}
		op.Status = store.StatusFailed
		op.ErrorCode, op.ErrorMessage = CodeRetriesExhausted, message
		op.AssignedAt = w.now().UTC() // when it ended: the key-retention clock starts here
	}
	switch err := w.Ops.UpdateOperation(ctx, op); {
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
		log.Info("requeue: operation moved on since it was read; left alone")
		return MovedOn, nil
	case err != nil:
		return MovedOn, fmt.Errorf("record attempt: %w", err)
	}
	if exhausted {
		log.Error("requeue: stalled operation failed", "code", CodeRetriesExhausted, "attempts", op.Attempts)
		return FailedExhausted, nil
	}
	if err := w.Queue.Enqueue(ctx, queue.Message{OperationID: op.ID, DeviceID: op.DeviceID}, 0); err != nil {
		return MovedOn, fmt.Errorf("re-enqueue: %w", err)
	}
	log.Warn("requeue: re-queued an operation that had not moved", "attempt", op.Attempts)
	return Requeued, nil
}

func (w *Worker) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}

func (w *Worker) logger() *slog.Logger {
	if w.Log != nil {
		return w.Log
	}
	return slog.Default()
}

// maxBackoff caps the exponential backoff. The attempt count it grows with includes the
// deferrals for DPS's quota (429 + Retry-After), so a device that waited its turn in a
// burst must not then wait many minutes for one 500: a minute is a gentle enough pace
// against a DPS that is down.
const maxBackoff = time.Minute

// backoff is exponential from 2 s, capped at maxBackoff, with jitter, for transient
// failures that came without a Retry-After.
func backoff(attempt int) time.Duration {
	d := 2 * time.Second
	for i := 0; i < attempt && d < maxBackoff; i++ {
		d *= 2
	}
	d = min(d, maxBackoff)
	return d + jitter(d)
}

// jitter spreads a burst of deferred operations over up to a fifth of d (at least 1 s),
// so they do not all return to DPS in the same second.
func jitter(d time.Duration) time.Duration {
	span := max(d/5, time.Second)
	return rand.N(span)
}
