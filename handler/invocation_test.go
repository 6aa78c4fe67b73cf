package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/api"
	"github.com/iotprov/iotprov/internal/provision"
	"github.com/iotprov/iotprov/internal/store"
)

// recordingOps records which operations the worker asked for; it knows none of them,
// so the worker acknowledges (an unknown operation is not retried to poison).
type recordingOps struct {
	mu     sync.Mutex
	reads  []string
	err    error
	purged int
}

func (o *recordingOps) GetOperation(_ context.Context, dev, id string) (*store.Operation, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reads = append(o.reads, dev+"/"+id)
	if o.err != nil {
		return nil, o.err
	}
	return nil, store.ErrNotFound
}
func (o *recordingOps) UpdateOperation(context.Context, *store.Operation) error { return nil }
func (o *recordingOps) Purge(context.Context, time.Time, time.Duration, time.Duration) (int, int, error) {
	o.purged++
	return 0, 0, o.err
}

func testApp(ops *recordingOps) *app {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return &app{log: log, api: &api.Server{Log: log},
		worker: &provision.Worker{Ops: ops, MaxDequeueCount: 5, Log: log}}
}

// Bodies in the shapes the Functions host really sends (DESIGN.md §1).
const (
	objectItem = `{"Data":{"message":{"operationId":"0f1e2d3c-aaaa-bbbb-cccc-000000000001","deviceId":"dev-1"}},
	  "Metadata":{"DequeueCount":1,"Id":"4e77c5a5-7c1e-4b8e-9a38-0d7f1d3b6a11","PopReceipt":"AgAAAA==",
	  "InsertionTime":"2026-11-28T10:00:00+00:00","sys":{"MethodName":"provision","UtcNow":"2026-11-28T10:00:01Z","RandGuid":"x"}}}`
	stringItem = `{"Data":{"message":"{\"operationId\":\"0f1e2d3c-aaaa-bbbb-cccc-000000000002\",\"deviceId\":\"dev-2\"}"},
	  "Metadata":{"DequeueCount":"1","Id":"\"4e77c5a5-7c1e-4b8e-9a38-0d7f1d3b6a11\"","PopReceipt":"\"AgAAAA==\"",
	  "InsertionTime":"\"2026-11-28T10:00:00+00:00\"","ExpirationTime":"\"2026-12-05T10:00:00+00:00\"",
	  "NextVisibleTime":"\"2026-11-28T10:10:00+00:00\"","sys":{"MethodName":"provision","UtcNow":"\"2026-11-28T10:00:01Z\"","RandGuid":"\"x\""}}}`
)

func invoke(t *testing.T, h http.Handler, path, body string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
	var res map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
		t.Fatalf("%s: answer is not an invocation result: %q", path, rec.Body.String())
	}
	for _, k := range []string{"Outputs", "Logs"} {
		if _, ok := res[k]; !ok {
			t.Errorf("%s: result lacks %s: %v", path, k, res)
		}
	}
	return rec.Code, res
}

func TestProvisionInvocationShapes(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		opsErr error
		status int
		read   string
	}{
		{"ok/object-item", objectItem, nil, 200, "dev-1/0f1e2d3c-aaaa-bbbb-cccc-000000000001"},
		{"ok/string-item-double-encoded-metadata", stringItem, nil, 200, "dev-2/0f1e2d3c-aaaa-bbbb-cccc-000000000002"},
		{"ok/malformed-envelope-acknowledged", `{"Data":{}}`, nil, 200, ""},
		{"ok/malformed-message-acknowledged", `{"Data":{"message":"{\"nope\":1}"},"Metadata":{"DequeueCount":"1"}}`, nil, 200, ""},
		{"fail/storage-error-asks-for-redelivery", objectItem, errors.New("storage down"), 500, "dev-1/0f1e2d3c-aaaa-bbbb-cccc-000000000001"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ops := &recordingOps{err: tc.opsErr}
			status, _ := invoke(t, testApp(ops).functionsMux(), "/provision", tc.body)
			if status != tc.status {
				t.Errorf("status %d, want %d", status, tc.status)
			}
			if tc.read == "" && len(ops.reads) != 0 || tc.read != "" && (len(ops.reads) != 1 || ops.reads[0] != tc.read) {
				t.Errorf("worker read %v, want %q", ops.reads, tc.read)
			}
		})
	}
}

func TestPurgeInvocation(t *testing.T) {
	ops := &recordingOps{}
	for _, body := range []string{
		`{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{"sys":{"MethodName":"purge"}}}`,
		`{"Data":{"timer":"{\"Schedule\":{},\"IsPastDue\":true}"},"Metadata":{}}`,
	} {
		if status, _ := invoke(t, testApp(ops).functionsMux(), "/purge", body); status != 200 {
			t.Errorf("purge status %d", status)
		}
	}
	if ops.purged != 2 {
		t.Errorf("purge ran %d times, want 2", ops.purged)
	}
}

func TestReadinessAndLocalMux(t *testing.T) {
	a := testApp(&recordingOps{})
	rec := httptest.NewRecorder()
	a.functionsMux().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != 200 {
		t.Errorf("GET / = %d: the host waits for any answer here", rec.Code)
	}
	// The local runner's public listener must not expose the function endpoints.
	rec = httptest.NewRecorder()
	a.localMux().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/provision", strings.NewReader(objectItem)))
	if rec.Code != 404 {
		t.Errorf("local POST /provision = %d, want 404", rec.Code)
	}
	rec = httptest.NewRecorder()
	a.localMux().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != 200 {
		t.Errorf("GET /healthz = %d", rec.Code)
	}
}
