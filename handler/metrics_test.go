package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/secrets"
)

// countingSource is a secret source that answers every name with the same bytes.
type countingSource struct{ calls int }

func (s *countingSource) Secret(context.Context, string) ([]byte, error) {
	s.calls++
	return []byte("value"), nil
}

var _ secrets.Source = (*countingSource)(nil)

type fixedCount int64

func (n fixedCount) Transactions() int64 { return int64(n) }

// The devices table's reads and the runner's queue requests are storage transactions
// too: the total is every counter's sum.
func TestHandleMetricsCountsEveryStorageClient(t *testing.T) {
	a := testApp(&recordingOps{})
	a.devices, a.hostQueue = fixedCount(3), fixedCount(5)
	rec := httptest.NewRecorder()
	a.handleMetrics(rec, httptest.NewRequest(http.MethodGet, "/debug/metrics", nil))
	var m metrics
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m.TableTransactions != 3 || m.HostQueueTransactions != 5 || m.StorageTransactions != 8 {
		t.Errorf("tables %d, host queue %d, total %d; want 3, 5, 8", m.TableTransactions, m.HostQueueTransactions, m.StorageTransactions)
	}
}

func TestHandleMetrics(t *testing.T) {
	src := &countingSource{}
	cached := secrets.NewCached(src, time.Hour, nil)
	// Two reads of one name within the TTL: one fetch from the source.
	for range 2 {
		if _, err := cached.Secret(context.Background(), "iotprov-ca"); err != nil {
			t.Fatal(err)
		}
	}
	a := testApp(&recordingOps{})
	a.secrets = cached // store and queue stay nil: their counters read as zero

	rec := httptest.NewRecorder()
	a.handleMetrics(rec, httptest.NewRequest(http.MethodGet, "/debug/metrics", nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	if m["secretFetches"] != float64(1) || src.calls != 1 {
		t.Errorf("secretFetches = %v (source called %d times), want 1", m["secretFetches"], src.calls)
	}
	if m["storageTransactions"] != float64(0) {
		t.Errorf("storageTransactions = %v, want 0 without storage", m["storageTransactions"])
	}
	for _, k := range []string{"tableTransactions", "queueTransactions", "hostQueueTransactions", "cpuSeconds", "peakRssBytes", "heapBytes", "goroutines", "uptimeSeconds"} {
		if _, ok := m[k].(float64); !ok {
			t.Errorf("%s missing or not a number: %v", k, m[k])
		}
	}
	if m["peakRssBytes"].(float64) <= 0 || m["goroutines"].(float64) < 1 {
		t.Errorf("process figures implausible: %v", m)
	}
}
