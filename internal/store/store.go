// Package store keeps provisioning operations in Azure Tables, with every write conditional
// on the ETag the writer last read, so that duplicate or concurrent queue deliveries and
// racing register calls cannot fork an operation.
//
// Layout, table "operations": PartitionKey = device ID; RowKey = operation ID for an
// operation, and RowKey "current" for the device's link to its latest operation. Because the
// link and the operation share a partition, creating an operation and moving the link is one
// entity-group transaction, and reading an operation is a point read keyed by the caller's
// own device ID, which makes other devices' operations invisible rather than forbidden.
package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/iotprov/iotprov/internal/errcode"
)

// Table names. "devices" (device policy) is created here so that one EnsureTables call at
// start prepares all of iotprov's tables; its contents belong to the policy code.
const (
	OperationsTable = "operations"
	DevicesTable    = "devices"
)

// currentRowKey is the RowKey of a device's link to its current operation. Operation IDs are
// never "current" (CreateOperation refuses it).
const currentRowKey = "current"

// Status is where an operation is in its lifecycle.
type Status string

const (
	StatusQueued   Status = "queued"
	StatusIssued   Status = "issued"
	StatusAssigned Status = "assigned"
	StatusFailed   Status = "failed"
)

// Terminal reports whether no further work will be done on an operation.
func (s Status) Terminal() bool { return s == StatusAssigned || s == StatusFailed }

func (s Status) valid() bool {
	switch s {
	case StatusQueued, StatusIssued, StatusAssigned, StatusFailed:
		return true
	}
	return false
}

var (
	// ErrNotFound: no such entity (for operations: none under that device, which is how
	// other devices' operations look too).
	ErrNotFound = errors.New("store: not found")
	// ErrConflict: the entity changed since it was read (ETag mismatch) or already exists.
	ErrConflict = errors.New("store: conflict")
)

// Operation is one provisioning run for one device.
type Operation struct {
	ID, DeviceID     string
	Identity         string // "<method>:<subject>" of the credential that created it; polls must match
	Status           Status
	CSR              []byte // DER of the device's CSR, nil for a server-generated key
	KeyAlgorithm     string
	CertificatePEM   string // device certificate + intermediates, once issued
	SealedKey        []byte // AES-GCM sealed PKCS#8 key (server-generated keys); nil for CSR or once erased
	KeyErased        bool
	Host             string // assigned IoT Hub
	AssignedDeviceID string
	DPSOperationID   string
	ErrorCode        string
	ErrorMessage     string
	Attempts         int
	CreatedAt        time.Time
	UpdatedAt        time.Time
	AssignedAt       time.Time
	ETag             string // set by reads and writes; UpdateOperation requires it
}

// Current is a device's link to its latest operation.
type Current struct {
	DeviceID    string
	OperationID string
	CreatedAt   time.Time
	ETag        string
}

// Store reads and writes operations. It is safe for concurrent use.
type Store struct {
	ops          *aztables.Client
	svc          *aztables.ServiceClient
	transactions atomic.Int64
	now          func() time.Time // for UpdatedAt; replaced in tests
}

// New returns a Store over the given Tables service.
func New(svc *aztables.ServiceClient) *Store {
	return &Store{svc: svc, ops: svc.NewClient(OperationsTable), now: time.Now}
}

// Transactions returns how many storage requests this Store has made (for the benchmark).
// A request the SDK retries counts once; a listed page counts once.
func (s *Store) Transactions() int64 { return s.transactions.Load() }

func (s *Store) count() { s.transactions.Add(1) }

// EnsureTables creates the operations and devices tables if they are missing.
func (s *Store) EnsureTables(ctx context.Context) error {
	for _, name := range []string{OperationsTable, DevicesTable} {
		s.count()
		_, err := s.svc.CreateTable(ctx, name, nil)
		if err != nil && !hasCode(err, aztables.TableAlreadyExists) {
			return unavailable("create table "+name, err)
		}
	}
	return nil
}

// GetCurrent returns the device's link to its current operation, or ErrNotFound.
func (s *Store) GetCurrent(ctx context.Context, deviceID string) (*Current, error) {
	if checkKey(deviceID) != nil {
		return nil, ErrNotFound // cannot exist: we never write such a key
	}
	s.count()
	resp, err := s.ops.GetEntity(ctx, deviceID, currentRowKey, nil)
	if err != nil {
		return nil, mapErr("get current", err)
	}
	c, err := unmarshalLink(resp.Value)
	if err != nil {
		return nil, fmt.Errorf("store: decode link of %q: %w", deviceID, err)
	}
	c.ETag = string(resp.ETag)
	return c, nil
}

// CreateOperation inserts op and points the device's link at it in one transaction:
// it inserts the link when prev == nil, else replaces it only if its ETag is still
// prev.ETag. ErrConflict when another register won the race (the link changed, or the
// operation ID exists), or prev == nil and the device has a link; as a *ConflictError
// carrying the link when it could be read. On success op.ETag is empty (see below): GetOperation before
// UpdateOperation.
func (s *Store) CreateOperation(ctx context.Context, op *Operation, prev *Current) error {
	if op.ID == currentRowKey {
		return fmt.Errorf("store: operation ID %q is reserved", op.ID)
	}
	if prev != nil && (prev.DeviceID != op.DeviceID || prev.ETag == "") {
		return fmt.Errorf("store: previous link must be the same device's, as read (with its ETag)")
	}
	now := s.now().UTC()
	if op.CreatedAt.IsZero() {
		op.CreatedAt = now
	}
	// Keep op equal to what is stored (millisecond UTC times), as a read would return it.
	op.CreatedAt, op.UpdatedAt = norm(op.CreatedAt), norm(now)
	opJSON, err := marshalOperation(op)
	if err != nil {
		return err
	}
	linkJSON, err := marshalLink(op.DeviceID, op.ID, op.CreatedAt)
	if err != nil {
		return err
	}
	link := aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: linkJSON}
	if prev != nil {
		link.ActionType = aztables.TransactionTypeUpdateReplace
		link.IfMatch = to.Ptr(azcore.ETag(prev.ETag))
	}
	s.count()
	_, err = s.ops.SubmitTransaction(ctx, []aztables.TransactionAction{
		{ActionType: aztables.TransactionTypeAdd, Entity: opJSON},
		link,
	}, nil)
	if err != nil {
		err = mapErr("create operation", err)
		if errors.Is(err, ErrConflict) {
			landed, cur := s.createLanded(ctx, op)
			switch {
			case landed:
				err = nil
			case cur != nil:
				err = &ConflictError{Current: cur}
			}
		}
	}
	if err != nil {
		return err
	}
	// The transaction answer carries no ETags (the SDK drops them). Reading the operation
	// back would cost a storage transaction on every register for a value only the rare
	// abandon path needs, so op.ETag is left empty: read the operation before updating it.
	op.ETag = ""
	return nil
}

// GetOperation returns the device's operation, or ErrNotFound — also when the ID is that
// of another device's operation, or not a valid key at all.
func (s *Store) GetOperation(ctx context.Context, deviceID, operationID string) (*Operation, error) {
	if checkKey(deviceID) != nil || checkKey(operationID) != nil || operationID == currentRowKey {
		return nil, ErrNotFound
	}
	s.count()
	resp, err := s.ops.GetEntity(ctx, deviceID, operationID, nil)
	if err != nil {
		return nil, mapErr("get operation", err)
	}
	op, err := unmarshalOperation(resp.Value)
	if err != nil {
		return nil, err
	}
	op.ETag = string(resp.ETag)
	return op, nil
}

// UpdateOperation replaces op if its ETag is still op.ETag (ErrConflict otherwise), and
// sets UpdatedAt and the new ETag on op. Replace, not merge: a property set to its zero
// value (an erased key) disappears from storage.
func (s *Store) UpdateOperation(ctx context.Context, op *Operation) error {
	if op.ETag == "" {
		return errors.New("store: UpdateOperation needs the ETag of a read")
	}
	prevUpdated := op.UpdatedAt
	op.UpdatedAt = s.now().UTC()
	err := s.replace(ctx, op)
	if errors.Is(err, ErrConflict) {
		if stored := s.storedAsWritten(ctx, op); stored != nil {
			*op = *stored
			return nil
		}
	}
	if err != nil {
		op.UpdatedAt = prevUpdated
		return err
	}
	return nil
}

// A conditional write can be applied by the service while its answer is lost (a timeout
// under load); the SDK then retries it, and the retry fails its own precondition: 412 on
// an update, 409 on an insert. Taken at face value that conflict tells the caller another
// writer won, and the caller would drop work that is in fact recorded (a worker that
// acknowledges without re-enqueueing loses the operation's only message). So on a
// conflict the store reads what is stored and reports success if it is exactly what was
// written. This costs reads only on the conflict path.

// storedAsWritten returns the stored operation if it is exactly op as just written.
func (s *Store) storedAsWritten(ctx context.Context, op *Operation) *Operation {
	stored, err := s.GetOperation(ctx, op.DeviceID, op.ID)
	if err != nil {
		return nil
	}
	written, err1 := marshalOperation(op)
	got, err2 := marshalOperation(stored)
	if err1 != nil || err2 != nil || !bytes.Equal(written, got) {
		return nil
	}
	return stored
}

// createLanded reports whether the device's link points at op and op is stored exactly
// as written: the transaction that creates both was applied. When it was not, it also
// returns the link it read (nil if there is none or the read failed).
func (s *Store) createLanded(ctx context.Context, op *Operation) (bool, *Current) {
	cur, err := s.GetCurrent(ctx, op.DeviceID)
	if err != nil {
		return false, nil
	}
	if cur.OperationID != op.ID {
		return false, cur
	}
	return s.storedAsWritten(ctx, op) != nil, nil
}

// ConflictError is CreateOperation's ErrConflict when the device's link was read after
// the conflict: the caller's next step is to look at that link, and this saves reading
// it again.
type ConflictError struct{ Current *Current }

func (e *ConflictError) Error() string        { return ErrConflict.Error() + ": create operation" }
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// replace writes op as is, conditional on op.ETag, and stores the new ETag in op.
func (s *Store) replace(ctx context.Context, op *Operation) error {
	b, err := marshalOperation(op)
	if err != nil {
		return err
	}
	s.count()
	resp, err := s.ops.UpdateEntity(ctx, b, &aztables.UpdateEntityOptions{
		UpdateMode: aztables.UpdateModeReplace,
		IfMatch:    to.Ptr(azcore.ETag(op.ETag)),
	})
	if err != nil {
		return mapErr("update operation", err)
	}
	op.ETag = string(resp.ETag)
	op.CreatedAt, op.UpdatedAt, op.AssignedAt = norm(op.CreatedAt), norm(op.UpdatedAt), norm(op.AssignedAt)
	return nil
}

// Purge erases the sealed keys of assigned/failed operations whose AssignedAt (UpdatedAt
// when unset) is older than now-keyRetention, and deletes operations of any status whose
// UpdatedAt is older than now-opRetention, together with the device's link when it points
// at the deleted operation. An operation idle that long is abandoned even if not terminal:
// deleting it (and its link) lets the device start afresh. Writes are ETag-conditional;
// an operation that changed meanwhile is skipped, not an error. Erasing a key does not
// touch UpdatedAt, so it does not postpone the operation's deletion.
func (s *Store) Purge(ctx context.Context, now time.Time, keyRetention, opRetention time.Duration) (keysErased, opsDeleted int, err error) {
	keyCutoff := now.Add(-keyRetention).UTC()
	opCutoff := now.Add(-opRetention).UTC()
	filter := purgeFilter(keyCutoff, opCutoff)
	pager := s.ops.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	for pager.More() {
		s.count()
		page, perr := pager.NextPage(ctx)
		if perr != nil {
			return keysErased, opsDeleted, mapErr("list operations", perr)
		}
		for _, raw := range page.Entities {
			op, derr := unmarshalOperation(raw)
			if derr != nil {
				// One corrupt row must not stop the purge of the rest (nor be retried
				// forever); it stays for an operator to look at.
				continue
			}
			if !op.UpdatedAt.IsZero() && op.UpdatedAt.Before(opCutoff) {
				deleted, derr := s.deleteOperation(ctx, op)
				if derr != nil {
					return keysErased, opsDeleted, derr
				}
				if deleted {
					opsDeleted++
				}
				continue
			}
			ref := op.AssignedAt
			if ref.IsZero() {
				ref = op.UpdatedAt
			}
			if op.Status.Terminal() && len(op.SealedKey) > 0 && !ref.IsZero() && ref.Before(keyCutoff) {
				op.SealedKey, op.KeyErased = nil, true
				switch werr := s.replace(ctx, op); {
				case werr == nil:
					keysErased++
				case errors.Is(werr, ErrConflict), errors.Is(werr, ErrNotFound):
				default:
					return keysErased, opsDeleted, werr
				}
			}
		}
	}
	return keysErased, opsDeleted, nil
}

// purgeFilter selects only the rows a purge acts on, so the service does the filtering
// and a timer run does not ship the table here: operations idle past the operation
// cutoff, and operations that still hold a key (HasKey, written only then) idle or ended
// past the key cutoff. Without HasKey the key clause matched every operation between the
// two retentions (1 to 30 days old by default), erased or keyless ones included.
func purgeFilter(keyCutoff, opCutoff time.Time) string {
	lit := func(t time.Time) string { return "datetime'" + norm(t).Format("2006-01-02T15:04:05.0000000Z") + "'" }
	return fmt.Sprintf("RowKey ne '%s' and (UpdatedAt lt %s or (HasKey eq true and (AssignedAt lt %s or UpdatedAt lt %s)))",
		currentRowKey, lit(opCutoff), lit(keyCutoff), lit(keyCutoff))
}

// Stalled returns at most limit in-flight operations (queued or issued) whose UpdatedAt is
// before the given time: work that no queue message is carrying any more (a message lost
// between the table write and the enqueue, or given up to the poison queue while storage
// was down). The service filters on status and time, so a sweep reads only the stalled
// rows, whatever the size of the table; a page counts as one transaction. Rows come in key
// order, so a sweep that moves each one on (a write bumps UpdatedAt) reaches the rest on
// its next run.
func (s *Store) Stalled(ctx context.Context, before time.Time, limit int) ([]*Operation, error) {
	if limit <= 0 {
		return nil, nil
	}
	lit := "datetime'" + norm(before).Format("2006-01-02T15:04:05.0000000Z") + "'"
	filter := fmt.Sprintf("RowKey ne '%s' and (Status eq '%s' or Status eq '%s') and UpdatedAt lt %s",
		currentRowKey, StatusQueued, StatusIssued, lit)
	pager := s.ops.NewListEntitiesPager(&aztables.ListEntitiesOptions{
		Filter: &filter,
		Top:    to.Ptr(int32(min(limit, 1000))), // Tables' page size limit
	})
	var stalled []*Operation
	for pager.More() && len(stalled) < limit {
		s.count()
		page, err := pager.NextPage(ctx)
		if err != nil {
			return stalled, mapErr("list stalled operations", err)
		}
		for _, raw := range page.Entities {
			op, err := unmarshalOperation(raw)
			if err != nil {
				continue // a corrupt row is left for an operator, as in Purge
			}
			stalled = append(stalled, op)
			if len(stalled) == limit {
				break
			}
		}
	}
	return stalled, nil
}

// deleteOperation deletes op (as read) and, in the same transaction, the device's link if
// it points at op. false, nil when something changed meanwhile.
func (s *Store) deleteOperation(ctx context.Context, op *Operation) (bool, error) {
	keys := func(pk, rk string) []byte {
		b, _ := json.Marshal(map[string]string{"PartitionKey": pk, "RowKey": rk})
		return b
	}
	actions := []aztables.TransactionAction{{
		ActionType: aztables.TransactionTypeDelete,
		Entity:     keys(op.DeviceID, op.ID),
		IfMatch:    to.Ptr(azcore.ETag(op.ETag)),
	}}
	cur, err := s.GetCurrent(ctx, op.DeviceID)
	switch {
	case err == nil && cur.OperationID == op.ID:
		actions = append(actions, aztables.TransactionAction{
			ActionType: aztables.TransactionTypeDelete,
			Entity:     keys(op.DeviceID, currentRowKey),
			IfMatch:    to.Ptr(azcore.ETag(cur.ETag)),
		})
	case err == nil, errors.Is(err, ErrNotFound):
	default:
		return false, err
	}
	s.count()
	if _, err := s.ops.SubmitTransaction(ctx, actions, nil); err != nil {
		err = mapErr("delete operation", err)
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// Tables limits: a string property holds at most 32K UTF-16 code units, a binary one 64 KiB,
// keys at most 1 KiB; an entity at most 1 MiB (which the per-property limits below keep us
// far from: the largest properties are a certificate chain and a CSR).
const (
	maxStringUnits = 32 << 10
	maxBinary      = 64 << 10
	maxKey         = 512 // our keys are device and operation IDs: far shorter in practice
	// ErrorMessage comes partly from DPS; store a bounded prefix rather than fail the write.
	maxErrorMessage = 1024
)

// checkKey refuses what Tables forbids in PartitionKey/RowKey: / \ # ? and control
// characters, and over-long keys; and single quotes.
func checkKey(k string) error {
	if k == "" || len(k) > maxKey || !utf8.ValidString(k) {
		return errors.New("store: invalid key")
	}
	for _, r := range k {
		// A quote too: the SDK doubles quotes in keys it puts in URLs, and ours are never
		// quoted (device IDs follow DPS's rules, operation IDs are UUIDs).
		if r == '/' || r == '\\' || r == '#' || r == '?' || r == '\'' || r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return errors.New("store: invalid key")
		}
	}
	return nil
}

// norm is the form in which times are stored: UTC (the SDK formats with a literal "Z"
// whatever the location) at millisecond precision (what every Tables implementation keeps,
// Azurite included), so that a value read back equals the value written.
func norm(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Millisecond)
}

// utf16Len is the length of s in UTF-16 code units, without encoding it (a certificate
// chain is stored on every write of an issued operation).
func utf16Len(s string) int {
	n := 0
	for _, r := range s {
		n += utf16.RuneLen(r)
	}
	return n
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// mapErr turns a storage error into ErrNotFound, ErrConflict, or a 503 that carries the
// cause for the logs.
func mapErr(what string, err error) error {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		switch {
		case hasCode(err, aztables.EntityAlreadyExists, aztables.UpdateConditionNotSatisfied):
			return fmt.Errorf("%w: %s", ErrConflict, what)
		case hasCode(err, aztables.TableNotFound):
			// A missing table is a deployment fault, not a missing entity.
		case hasCode(err, aztables.ResourceNotFound, aztables.EntityNotFound):
			return fmt.Errorf("%w: %s", ErrNotFound, what)
		case re.StatusCode == http.StatusConflict || re.StatusCode == http.StatusPreconditionFailed:
			return fmt.Errorf("%w: %s", ErrConflict, what)
		case re.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%w: %s", ErrNotFound, what)
		case re.StatusCode == http.StatusAccepted:
			// A failed transaction whose sub-response carried no code we know: go by
			// the sub-response's status.
			switch transactionStatus(transactionErrorBody(re)) {
			case http.StatusConflict, http.StatusPreconditionFailed:
				return fmt.Errorf("%w: %s", ErrConflict, what)
			case http.StatusNotFound:
				return fmt.Errorf("%w: %s", ErrNotFound, what)
			}
		}
	}
	return unavailable(what, err)
}

func unavailable(what string, err error) error {
	return errcode.Unavailable(fmt.Errorf("store: %s: %w", what, err), "The service is temporarily unavailable; try again later.")
}

// hasCode reports whether err is a storage response error with one of codes. A failed
// entity-group transaction comes back as a 202 whose multipart body holds the failing
// sub-request's error, so its code is looked for in the body too.
func hasCode(err error, codes ...aztables.TableErrorCode) bool {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	for _, c := range codes {
		if re.ErrorCode == string(c) {
			return true
		}
	}
	if re.StatusCode != http.StatusAccepted {
		return false
	}
	body := transactionErrorBody(re)
	for _, c := range codes {
		if strings.Contains(body, `"`+string(c)+`"`) {
			return true
		}
	}
	return false
}

// transactionErrorBody returns the (bounded) body of a failed transaction's response.
func transactionErrorBody(re *azcore.ResponseError) string {
	if re.RawResponse == nil {
		return ""
	}
	b, err := runtime.Payload(re.RawResponse)
	if err != nil {
		return ""
	}
	if len(b) > 64<<10 {
		b = b[:64<<10]
	}
	return string(b)
}

// transactionStatus returns the status of the first failed sub-response ("HTTP/1.1 412 …")
// in a transaction's multipart response body, or 0.
func transactionStatus(body string) int {
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "HTTP/1.1 ")
		if !ok || len(rest) < 3 {
			continue
		}
		if code, err := strconv.Atoi(rest[:3]); err == nil && code >= 400 {
			return code
		}
	}
	return 0
}
