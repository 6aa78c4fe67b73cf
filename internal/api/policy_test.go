package api

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/errcode"
	"github.com/iotprov/iotprov/internal/policy"
	"github.com/iotprov/iotprov/internal/store"
)

// fakePolicy is a hand-written Admitter with a function field.
type fakePolicy struct {
	admit func(ctx context.Context, deviceID string) (policy.Admission, error)
	calls int
}

var _ Admitter = (*fakePolicy)(nil)

func (f *fakePolicy) Admit(ctx context.Context, deviceID string) (policy.Admission, error) {
	f.calls++
	return f.admit(ctx, deviceID)
}

// The register route goes through the real policy.Policy over a fake table, so the
// mapping from a table entry to the device's answer is tested end to end.
func TestRegisterDevicePolicy(t *testing.T) {
	entries := map[string]*policy.Device{
		"listed":   {DeviceID: "listed"},
		"disabled": {DeviceID: "disabled", Disabled: true},
		"patient":  {DeviceID: "patient", MinInterval: 0, HasMinInterval: true},
		"slow":     {DeviceID: "slow", MinInterval: 24 * time.Hour, HasMinInterval: true},
	}
	table := policyTable(func(_ context.Context, id string) (*policy.Device, error) {
		if id == "broken" {
			return nil, errors.New("table down")
		}
		if d, ok := entries[id]; ok {
			return d, nil
		}
		return nil, policy.ErrNotFound
	})
	tests := []struct {
		name       string
		mode       string
		device     string
		finished   time.Duration // > 0: the device has a finished operation created this long ago
		wantStatus int
		wantCode   string
	}{
		{name: "ok/open-unlisted", mode: policy.ModeOpen, device: "stranger", wantStatus: 202},
		{name: "ok/allowlist-listed", mode: policy.ModeAllowList, device: "listed", wantStatus: 202},
		{name: "ok/override-zero-interval", mode: policy.ModeOpen, device: "patient", finished: time.Second, wantStatus: 202},
		{name: "ok/default-interval-passed", mode: policy.ModeOpen, device: "listed", finished: 2 * time.Minute, wantStatus: 202},
		{name: "fail/disabled", mode: policy.ModeOpen, device: "disabled", wantStatus: 403, wantCode: errcode.CodeDeviceDisabled},
		{name: "fail/allowlist-unlisted", mode: policy.ModeAllowList, device: "stranger", wantStatus: 403, wantCode: policy.CodeDeviceNotAllowed},
		{name: "fail/default-interval", mode: policy.ModeOpen, device: "listed", finished: 10 * time.Second, wantStatus: 429, wantCode: errcode.CodeTooManyRequests},
		{name: "fail/override-longer-interval", mode: policy.ModeOpen, device: "slow", finished: 2 * time.Hour, wantStatus: 429, wantCode: errcode.CodeTooManyRequests},
		{name: "fail/table-down", mode: policy.ModeOpen, device: "broken", wantStatus: 503, wantCode: errcode.CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, q := newFakeOps(), &fakeQueue{}
			s, mux := newServer(ops, q)
			s.Policy = &policy.Policy{Mode: tt.mode, Devices: table}
			if tt.finished > 0 {
				op := &store.Operation{ID: "old", DeviceID: tt.device, Identity: "sas:" + tt.device,
					Status: store.StatusAssigned, CreatedAt: time.Now().Add(-tt.finished)}
				if err := ops.CreateOperation(context.Background(), op, nil); err != nil {
					t.Fatal(err)
				}
			}
			rec, body := call(t, mux, "POST", RegisterPath, "Test sas:"+tt.device, "", "")
			if rec.Code != tt.wantStatus || errCode(body) != tt.wantCode {
				t.Fatalf("got %d %v, want %d %q", rec.Code, body, tt.wantStatus, tt.wantCode)
			}
			if tt.wantStatus == 429 {
				ra := rec.Header().Get("Retry-After")
				if ra == "" || (tt.device == "slow" && len(ra) < 5) { // ~22h left = 5 digits of seconds
					t.Fatalf("Retry-After %q", ra)
				}
			}
			if tt.wantStatus >= 400 && len(q.sent) != 0 {
				t.Fatalf("refused register enqueued %d messages", len(q.sent))
			}
		})
	}
}

// Polls are not gated by the policy: a device disabled while in flight still collects
// what was issued, and the policy is never consulted (no table read per poll).
func TestPollIgnoresPolicy(t *testing.T) {
	ops, q := newFakeOps(), &fakeQueue{}
	s, mux := newServer(ops, q)
	rec, body := call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", "")
	if rec.Code != 202 {
		t.Fatalf("register: %d %v", rec.Code, body)
	}
	p := &fakePolicy{admit: func(context.Context, string) (policy.Admission, error) {
		return policy.Admission{}, errcode.New(http.StatusForbidden, errcode.CodeDeviceDisabled, "disabled")
	}}
	s.Policy = p
	if rec, _ := call(t, mux, "GET", RegistrationsPath+body["operationId"].(string), "Test sas:dev1", "", ""); rec.Code != 202 {
		t.Fatalf("poll: %d", rec.Code)
	}
	if p.calls != 0 {
		t.Fatalf("policy consulted %d times on poll", p.calls)
	}
	if rec, body := call(t, mux, "POST", RegisterPath, "Test sas:dev1", "", ""); rec.Code != 403 || errCode(body) != errcode.CodeDeviceDisabled {
		t.Fatalf("register when disabled: %d %v", rec.Code, body)
	}
}

// policyTable adapts a function to policy.Devices.
type policyTable func(ctx context.Context, id string) (*policy.Device, error)

func (f policyTable) Get(ctx context.Context, id string) (*policy.Device, error) { return f(ctx, id) }
