package policy

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/storageconn"
	"github.com/iotprov/iotprov/internal/store"
	"github.com/iotprov/iotprov/internal/testenv"
)

// fakeDevices is a hand-written Devices with a function field.
type fakeDevices struct {
	get func(ctx context.Context, id string) (*Device, error)
}

var _ Devices = (*fakeDevices)(nil)

func (f *fakeDevices) Get(ctx context.Context, id string) (*Device, error) { return f.get(ctx, id) }

func TestAdmit(t *testing.T) {
	entries := map[string]*Device{
		"on":       {DeviceID: "on"},
		"off":      {DeviceID: "off", Disabled: true},
		"slow":     {DeviceID: "slow", MinInterval: time.Hour, HasMinInterval: true},
		"no-limit": {DeviceID: "no-limit", MinInterval: 0, HasMinInterval: true},
	}
	devices := &fakeDevices{get: func(_ context.Context, id string) (*Device, error) {
		if id == "broken" {
			return nil, errors.New("table down")
		}
		if d, ok := entries[id]; ok {
			return d, nil
		}
		return nil, ErrNotFound
	}}
	tests := []struct {
		name       string
		mode       string
		device     string
		want       Admission
		wantStatus int
		wantCode   string
	}{
		{name: "ok/off-ignores-table", mode: ModeOff, device: "off"},
		{name: "ok/off-table-down", mode: ModeOff, device: "broken"},
		{name: "ok/open-unlisted", mode: ModeOpen, device: "stranger"},
		{name: "ok/open-listed", mode: ModeOpen, device: "on"},
		{name: "ok/allowlist-listed", mode: ModeAllowList, device: "on"},
		{name: "ok/interval-override", mode: ModeOpen, device: "slow", want: Admission{MinInterval: time.Hour, HasMinInterval: true}},
		{name: "ok/interval-override-zero", mode: ModeAllowList, device: "no-limit", want: Admission{HasMinInterval: true}},
		{name: "fail/open-disabled", mode: ModeOpen, device: "off", wantStatus: 403, wantCode: errcode.CodeDeviceDisabled},
		{name: "fail/allowlist-disabled", mode: ModeAllowList, device: "off", wantStatus: 403, wantCode: errcode.CodeDeviceDisabled},
		{name: "fail/allowlist-unlisted", mode: ModeAllowList, device: "stranger", wantStatus: 403, wantCode: CodeDeviceNotAllowed},
		{name: "fail/table-down", mode: ModeOpen, device: "broken", wantStatus: 503, wantCode: errcode.CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Policy{Mode: tt.mode, Devices: devices}
			got, err := p.Admit(context.Background(), tt.device)
			if tt.wantCode != "" {
				e := errcode.As(err)
				if e.Status != tt.wantStatus || e.Code != tt.wantCode {
					t.Fatalf("got %d %s, want %d %s", e.Status, e.Code, tt.wantStatus, tt.wantCode)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	var nilPolicy *Policy
	if _, err := nilPolicy.Admit(context.Background(), "x"); err != nil {
		t.Fatalf("nil policy: %v", err)
	}
}

func TestTableAzurite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	svc, _, err := storageconn.Open(storageconn.Settings{ConnectionString: testenv.Azurite(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tbl := NewTable(svc)
	if err := store.New(svc).EnsureTables(ctx); err != nil {
		t.Fatal(err)
	}
	a, b := "dev-a-"+uuid.NewString()[:8], "dev-b-"+uuid.NewString()[:8]
	if _, err := tbl.Get(ctx, a); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get unlisted: %v", err)
	}
	if _, err := tbl.Get(ctx, "bad/key"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get bad key: %v", err)
	}
	if err := tbl.Put(ctx, &Device{DeviceID: a, Note: "line 3"}); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Put(ctx, &Device{DeviceID: b, Disabled: true, MinInterval: 90 * time.Second, HasMinInterval: true}); err != nil {
		t.Fatal(err)
	}
	got, err := tbl.Get(ctx, b)
	if err != nil || !got.Disabled || !got.HasMinInterval || got.MinInterval != 90*time.Second || got.UpdatedAt.IsZero() {
		t.Fatalf("Get b: %+v, %v", got, err)
	}
	got.Disabled = false
	if err := tbl.Put(ctx, got); err != nil {
		t.Fatal(err)
	}
	if got, _ := tbl.Get(ctx, b); got.Disabled || got.MinInterval != 90*time.Second {
		t.Fatalf("after enable: %+v", got)
	}
	if got, _ := tbl.Get(ctx, a); got.HasMinInterval || got.Note != "line 3" {
		t.Fatalf("a: %+v", got)
	}
	list, err := tbl.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, d := range list {
		if d.DeviceID == a || d.DeviceID == b {
			seen++
		}
	}
	if seen != 2 {
		t.Fatalf("List found %d of 2", seen)
	}
	// Through the policy, against real storage.
	p := &Policy{Mode: ModeAllowList, Devices: tbl}
	if _, err := p.Admit(ctx, a); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Admit(ctx, "stranger-"+uuid.NewString()[:8]); errcode.As(err).Status != http.StatusForbidden {
		t.Fatalf("stranger admitted: %v", err)
	}
}
