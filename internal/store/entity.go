package store

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// The entities in the Tables JSON format, as plain structs. aztables.EDMEntity does the
// same through a map and a second json.Unmarshal per property, which made encoding and
// decoding operations ~6 % of the handler's CPU under load; these structs are one pass
// each way. The wire format is the same: strings and Int32 as JSON values, binary as
// base64 and times in the service's DateTime form, each with its "@odata.type"
// annotation, zero values left out. Unknown properties on a read (Timestamp, odata.*)
// are ignored.

// edmDateTime is an Edm.DateTime value: UTC, at most 7 fractional digits.
type edmDateTime struct{ time.Time }

const (
	edmDateTimeLayout = "2006-01-02T15:04:05.9999999Z"
	edmDateTimeType   = "Edm.DateTime"
	edmBinaryType     = "Edm.Binary"
)

func (t edmDateTime) MarshalText() ([]byte, error) {
	return []byte(t.UTC().Format(edmDateTimeLayout)), nil
}

func (t *edmDateTime) UnmarshalText(b []byte) error {
	v, err := time.Parse(time.RFC3339Nano, string(b))
	if err != nil {
		return err
	}
	t.Time = v.UTC()
	return nil
}

// dateTime returns the property value and its annotation for t; nil, "" for zero
// (Tables' DateTime starts in 1601, and an absent property reads back as zero).
func dateTime(t time.Time) (*edmDateTime, string) {
	if t.IsZero() {
		return nil, ""
	}
	return &edmDateTime{norm(t)}, edmDateTimeType
}

func (t *edmDateTime) get() time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.Time
}

// binaryType is the annotation of a binary property, "" when it is left out.
func binaryType(b []byte) string {
	if b == nil {
		return ""
	}
	return edmBinaryType
}

// operationEntity is an Operation as stored. ETag comes only with a read.
type operationEntity struct {
	PartitionKey string `json:"PartitionKey"`
	RowKey       string `json:"RowKey"`
	ETag         string `json:"odata.etag,omitempty"`

	Status           string `json:"Status"`
	Attempts         int32  `json:"Attempts"`
	KeyErased        bool   `json:"KeyErased,omitempty"`
	Identity         string `json:"Identity,omitempty"`
	KeyAlgorithm     string `json:"KeyAlgorithm,omitempty"`
	CertificatePEM   string `json:"CertificatePEM,omitempty"`
	Host             string `json:"Host,omitempty"`
	AssignedDeviceID string `json:"AssignedDeviceID,omitempty"`
	DPSOperationID   string `json:"DPSOperationID,omitempty"`
	ErrorCode        string `json:"ErrorCode,omitempty"`
	ErrorMessage     string `json:"ErrorMessage,omitempty"`

	CSR           []byte `json:"CSR,omitempty"` // encoding/json: standard base64
	CSRType       string `json:"CSR@odata.type,omitempty"`
	SealedKey     []byte `json:"SealedKey,omitempty"`
	SealedKeyType string `json:"SealedKey@odata.type,omitempty"`
	// HasKey is written while SealedKey is, so a purge can ask the service for the rows
	// that still hold a key (a filter cannot test a property's presence). Never read back.
	HasKey bool `json:"HasKey,omitempty"`

	CreatedAt      *edmDateTime `json:"CreatedAt,omitempty"`
	CreatedAtType  string       `json:"CreatedAt@odata.type,omitempty"`
	UpdatedAt      *edmDateTime `json:"UpdatedAt,omitempty"`
	UpdatedAtType  string       `json:"UpdatedAt@odata.type,omitempty"`
	AssignedAt     *edmDateTime `json:"AssignedAt,omitempty"`
	AssignedAtType string       `json:"AssignedAt@odata.type,omitempty"`
}

// linkEntity is a device's link to its current operation (RowKey currentRowKey).
type linkEntity struct {
	PartitionKey  string       `json:"PartitionKey"`
	RowKey        string       `json:"RowKey"`
	OperationID   string       `json:"OperationID"`
	CreatedAt     *edmDateTime `json:"CreatedAt,omitempty"`
	CreatedAtType string       `json:"CreatedAt@odata.type,omitempty"`
}

func marshalLink(deviceID, operationID string, createdAt time.Time) ([]byte, error) {
	e := linkEntity{PartitionKey: deviceID, RowKey: currentRowKey, OperationID: operationID}
	e.CreatedAt, e.CreatedAtType = dateTime(createdAt)
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("store: encode link: %w", err)
	}
	return b, nil
}

func unmarshalLink(b []byte) (*Current, error) {
	var e linkEntity
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, err
	}
	return &Current{DeviceID: e.PartitionKey, OperationID: e.OperationID, CreatedAt: e.CreatedAt.get()}, nil
}

func marshalOperation(op *Operation) ([]byte, error) {
	if err := checkKey(op.DeviceID); err != nil {
		return nil, fmt.Errorf("store: device ID: %w", err)
	}
	if err := checkKey(op.ID); err != nil {
		return nil, fmt.Errorf("store: operation ID: %w", err)
	}
	if !op.Status.valid() {
		return nil, fmt.Errorf("store: invalid status %q", op.Status)
	}
	if op.Attempts < 0 || op.Attempts > 1<<30 {
		return nil, fmt.Errorf("store: attempts out of range")
	}
	op.ErrorMessage = truncate(op.ErrorMessage, maxErrorMessage)
	for _, f := range []struct{ name, v string }{
		{"Identity", op.Identity}, {"KeyAlgorithm", op.KeyAlgorithm}, {"CertificatePEM", op.CertificatePEM},
		{"Host", op.Host}, {"AssignedDeviceID", op.AssignedDeviceID}, {"DPSOperationID", op.DPSOperationID},
		{"ErrorCode", op.ErrorCode}, {"ErrorMessage", op.ErrorMessage},
	} {
		if !utf8.ValidString(f.v) || utf16Len(f.v) > maxStringUnits {
			return nil, fmt.Errorf("store: %s too large or not UTF-8", f.name)
		}
	}
	for _, f := range []struct {
		name string
		v    []byte
	}{{"CSR", op.CSR}, {"SealedKey", op.SealedKey}} {
		if len(f.v) > maxBinary {
			return nil, fmt.Errorf("store: %s larger than %d bytes", f.name, maxBinary)
		}
	}
	e := operationEntity{
		PartitionKey: op.DeviceID, RowKey: op.ID,
		Status: string(op.Status), Attempts: int32(op.Attempts), KeyErased: op.KeyErased,
		Identity: op.Identity, KeyAlgorithm: op.KeyAlgorithm, CertificatePEM: op.CertificatePEM,
		Host: op.Host, AssignedDeviceID: op.AssignedDeviceID, DPSOperationID: op.DPSOperationID,
		ErrorCode: op.ErrorCode, ErrorMessage: op.ErrorMessage,
		CSR: op.CSR, CSRType: binaryType(op.CSR),
		SealedKey: op.SealedKey, SealedKeyType: binaryType(op.SealedKey), HasKey: len(op.SealedKey) > 0,
	}
	e.CreatedAt, e.CreatedAtType = dateTime(op.CreatedAt)
	e.UpdatedAt, e.UpdatedAtType = dateTime(op.UpdatedAt)
	e.AssignedAt, e.AssignedAtType = dateTime(op.AssignedAt)
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("store: encode operation: %w", err)
	}
	return b, nil
}

func unmarshalOperation(b []byte) (*Operation, error) {
	var e operationEntity
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("store: decode operation: %w", err)
	}
	op := &Operation{
		ID:               e.RowKey,
		DeviceID:         e.PartitionKey,
		Identity:         e.Identity,
		Status:           Status(e.Status),
		CSR:              e.CSR,
		KeyAlgorithm:     e.KeyAlgorithm,
		CertificatePEM:   e.CertificatePEM,
		SealedKey:        e.SealedKey,
		KeyErased:        e.KeyErased,
		Host:             e.Host,
		AssignedDeviceID: e.AssignedDeviceID,
		DPSOperationID:   e.DPSOperationID,
		ErrorCode:        e.ErrorCode,
		ErrorMessage:     e.ErrorMessage,
		Attempts:         int(e.Attempts),
		CreatedAt:        e.CreatedAt.get(),
		UpdatedAt:        e.UpdatedAt.get(),
		AssignedAt:       e.AssignedAt.get(),
		ETag:             e.ETag,
	}
	if !op.Status.valid() {
		return nil, fmt.Errorf("store: operation %s/%s has invalid status %q", op.DeviceID, op.ID, op.Status)
	}
	return op, nil
}
