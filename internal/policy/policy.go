// Package policy is the optional device policy: which devices may register, which are
// disabled, and which get their own minimum interval between registrations. Entries
// live in the Azure Table "devices" (PartitionKey = device ID, RowKey "policy"), which
// the operator edits with `iotprov devices`; the register route consults them through
// Policy.Admit.
package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/store"
)

// rowKey is the one row per device partition; the partition leaves room for more rows
// (e.g. per-method bindings) without a migration.
const rowKey = "policy"

// CodeDeviceNotAllowed: allow-list mode and the device is not listed.
const CodeDeviceNotAllowed = "device_not_allowed"

// Modes of IOTPROV_DEVICE_POLICY.
const (
	ModeOff       = "off"       // the table is not read
	ModeOpen      = "open"      // unlisted devices may register; listed ones follow their entry
	ModeAllowList = "allowlist" // only listed, enabled devices may register
)

// ErrNotFound: no entry for the device.
var ErrNotFound = errors.New("policy: device not listed")

// Device is one device's policy entry.
type Device struct {
	DeviceID string
	Disabled bool
	// MinInterval overrides the service-wide minimum interval between registrations when
	// HasMinInterval is set (0 then means "no limit" for this device).
	MinInterval    time.Duration
	HasMinInterval bool
	Note           string
	UpdatedAt      time.Time
}

// Devices reads entries (Table, or a fake in tests).
type Devices interface {
	Get(ctx context.Context, deviceID string) (*Device, error)
}

// Admission is what a register of an admitted device must respect.
type Admission struct {
	MinInterval    time.Duration
	HasMinInterval bool
}

// Policy decides whether a device may register.
type Policy struct {
	Mode    string
	Devices Devices
}

// Admit returns the device's admission, or an *errcode.Error: 403 device_disabled,
// 403 device_not_allowed (allow-list mode), 503 when the table cannot be read.
func (p *Policy) Admit(ctx context.Context, deviceID string) (Admission, error) {
	if p == nil || p.Mode == ModeOff || p.Mode == "" {
		return Admission{}, nil
	}
	d, err := p.Devices.Get(ctx, deviceID)
	switch {
	case errors.Is(err, ErrNotFound):
		if p.Mode == ModeAllowList {
			return Admission{}, errcode.New(http.StatusForbidden, CodeDeviceNotAllowed,
				"This device is not on the service's list of allowed devices.")
		}
		return Admission{}, nil
	case err != nil:
		return Admission{}, errcode.Unavailable(err, "The service is temporarily unavailable; retry later.")
	case d.Disabled:
		return Admission{}, errcode.New(http.StatusForbidden, errcode.CodeDeviceDisabled,
			"This device is disabled by the operator.")
	}
	return Admission{MinInterval: d.MinInterval, HasMinInterval: d.HasMinInterval}, nil
}

// Table is the devices table.
type Table struct {
	client       *aztables.Client
	transactions atomic.Int64 // storage requests made, for the handler's metrics
}

// Transactions returns how many storage requests the table has made.
func (t *Table) Transactions() int64 { return t.transactions.Load() }

var _ Devices = (*Table)(nil)

// NewTable returns the devices table of a Tables service.
func NewTable(svc *aztables.ServiceClient) *Table {
	return &Table{client: svc.NewClient(store.DevicesTable)}
}

// Get returns the device's entry or ErrNotFound.
func (t *Table) Get(ctx context.Context, deviceID string) (*Device, error) {
	if !auth.ValidRegistrationID(deviceID) {
		return nil, ErrNotFound
	}
	t.transactions.Add(1)
	resp, err := t.client.GetEntity(ctx, deviceID, rowKey, nil)
	if err != nil {
		var re *azcore.ResponseError
		if errors.As(err, &re) && re.StatusCode == http.StatusNotFound && re.ErrorCode != string(aztables.TableNotFound) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("policy: get %q: %w", deviceID, err)
	}
	return decode(resp.Value)
}

// Put writes the device's entry (insert or replace).
func (t *Table) Put(ctx context.Context, d *Device) error {
	if !auth.ValidRegistrationID(d.DeviceID) {
		return fmt.Errorf("policy: %q is not a usable device ID", d.DeviceID)
	}
	d.UpdatedAt = time.Now().UTC().Truncate(time.Millisecond)
	props := map[string]any{
		"Disabled":  d.Disabled,
		"Note":      d.Note,
		"UpdatedAt": aztables.EDMDateTime(d.UpdatedAt),
	}
	if d.HasMinInterval {
		props["MinIntervalSeconds"] = aztables.EDMInt64(int64(d.MinInterval / time.Second))
	}
	b, err := json.Marshal(aztables.EDMEntity{Entity: aztables.Entity{PartitionKey: d.DeviceID, RowKey: rowKey}, Properties: props})
	if err != nil {
		return err
	}
	t.transactions.Add(1)
	if _, err := t.client.UpsertEntity(ctx, b, &aztables.UpsertEntityOptions{UpdateMode: aztables.UpdateModeReplace}); err != nil {
		return fmt.Errorf("policy: put %q: %w", d.DeviceID, err)
	}
	return nil
}

// List returns every entry, by device ID.
func (t *Table) List(ctx context.Context) ([]*Device, error) {
	filter := "RowKey eq '" + rowKey + "'"
	pager := t.client.NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	var out []*Device
	for pager.More() {
		t.transactions.Add(1)
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("policy: list: %w", err)
		}
		for _, raw := range page.Entities {
			d, err := decode(raw)
			if err != nil {
				return nil, err
			}
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DeviceID < out[j].DeviceID })
	return out, nil
}

func decode(raw []byte) (*Device, error) {
	var e aztables.EDMEntity
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, fmt.Errorf("policy: decode entry: %w", err)
	}
	d := &Device{DeviceID: e.PartitionKey}
	d.Disabled, _ = e.Properties["Disabled"].(bool)
	d.Note, _ = e.Properties["Note"].(string)
	switch v := e.Properties["MinIntervalSeconds"].(type) {
	case aztables.EDMInt64:
		d.MinInterval, d.HasMinInterval = time.Duration(v)*time.Second, true
	case int32:
		d.MinInterval, d.HasMinInterval = time.Duration(v)*time.Second, true
	case float64:
		d.MinInterval, d.HasMinInterval = time.Duration(v)*time.Second, true
	}
	if t, ok := e.Properties["UpdatedAt"].(aztables.EDMDateTime); ok {
		d.UpdatedAt = time.Time(t)
	}
	return d, nil
}
