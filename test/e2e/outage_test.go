package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

	"github.com/iotprov/iotprov/internal/queue"
	"github.com/iotprov/iotprov/internal/store"
)

// TestRegisterWhileStorageDown: with Azure Storage unreachable, register answers 503 with
// Retry-After and writes nothing; once storage is back the same device registers and is
// provisioned as if nothing happened.
func TestRegisterWhileStorageDown(t *testing.T) {
	s := startStack(t, stackOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFleet(t, s, "outage", 1)
	d := f.devices[0]

	s.StopAzurite()
	began := time.Now()
	status, hdr, body := f.call(ctx, d, http.MethodPost, "/v1/provisioning/azure/iot/register")
	took := time.Since(began)
	e, _ := body["error"].(map[string]any)
	if status != http.StatusServiceUnavailable || e["code"] != "service_unavailable" || hdr.Get("Retry-After") == "" {
		t.Errorf("register with storage down: %d %v Retry-After %q; want 503 service_unavailable with Retry-After",
			status, body, hdr.Get("Retry-After"))
	}
	if took > 30*time.Second {
		t.Errorf("register took %v to report the outage", took)
	}
	if err := s.StartAzurite(ctx); err != nil {
		t.Fatal(err)
	}

	// Nothing half-written: no operation, no link, no message for the device.
	tables, queues := storageClients(t, s)
	filter := "PartitionKey eq '" + d.id + "'"
	page, err := tables.NewClient(store.OperationsTable).NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter}).NextPage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Entities) != 0 {
		t.Errorf("after the refused register the table holds %d rows for the device", len(page.Entities))
	}
	if n := queueDepth(t, queues, queue.Name); n != 0 {
		t.Errorf("after the refused register the queue holds %d messages", n)
	}

	f.registerAll(ctx, t, 1)
	f.awaitAll(ctx, t, 1)
	if d.result == nil {
		t.Fatal("the device was not provisioned after storage came back")
	}
	if err := checkCredential(s, d); err != nil {
		t.Error(err)
	}
	t.Logf("storage outage: register answered %d in %v; nothing written; provisioned after storage came back", status, took.Round(time.Millisecond))
}

// TestAzuriteRestartLosesNothing restarts Azurite (data on disk) while operations are in
// flight; every operation still ends assigned, once, and the queues end empty.
func TestAzuriteRestartLosesNothing(t *testing.T) {
	const devices = 60
	s := startStack(t, stackOptions{DPSEnv: []string{"DPSEMU_ASSIGN_DELAY=1s"}})
	if !leaseRenewed(s) {
		// A failure, not a skip: skipping would hide a runner that lost lease renewal.
		t.Fatal("the handler's local runner does not renew its message leases (localrun.NewStorageQueue in handler/main.go)")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newFleet(t, s, "restart", devices)
	f.registerAll(ctx, t, 16)

	var assignedN atomic.Int64
	restarted := make(chan time.Duration, 1)
	go func() {
		for assignedN.Load() < devices/3 && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		began := time.Now()
		if err := s.RestartAzurite(ctx); err != nil {
			t.Errorf("restart Azurite: %v", err)
		}
		t.Logf("%5.1fs: Azurite restarted with %d/%d assigned (down %v)", time.Since(start).Seconds(), assignedN.Load(), devices,
			time.Since(began).Round(time.Millisecond))
		restarted <- time.Since(began)
	}()
	f.each(devices, func(d *fleetDevice) {
		for ctx.Err() == nil && d.opID != "" {
			status, _, body := f.call(ctx, d, http.MethodGet, "/v1/provisioning/azure/iot/registrations/"+d.opID)
			if status == http.StatusOK {
				d.result = body
				assignedN.Add(1)
				return
			}
			time.Sleep(time.Second)
		}
	})
	var down time.Duration
	select {
	case down = <-restarted:
	case <-ctx.Done():
		t.Fatal("Azurite was never restarted")
	}

	tables, queues := storageClients(t, s)
	rows := rawOperations(t, tables)
	lost := 0
	for _, d := range f.devices {
		if d.result == nil {
			lost++
			t.Errorf("%s: operation %q never finished", d.id, d.opID)
			continue
		}
		if err := checkCredential(s, d); err != nil {
			t.Errorf("%s: %v", d.id, err)
		}
		var row struct{ CertificatePEM string }
		_ = json.Unmarshal(rows[d.opID], &row)
		if row.CertificatePEM != d.result["certificate"] {
			t.Errorf("%s: the answer's certificate is not the stored one", d.id)
		}
	}
	if len(rows) != devices {
		t.Errorf("%d operations stored, want %d", len(rows), devices)
	}
	if n := queueDepth(t, queues, queue.Name+queue.PoisonSuffix); n != 0 {
		t.Errorf("%d messages on the poison queue", n)
	}
	t.Logf("Azurite restart: %d devices, %d assigned, %d lost; storage down %v; all finished in %.1fs",
		devices, f.assigned(), lost, down.Round(time.Millisecond), time.Since(start).Seconds())
}

// TestRegisterWhileQueueUnusable: tables work but the provision queue does not (here it
// is deleted, as a misconfiguration or an outage of the queue service alone would look).
// register has already written the operation when the enqueue fails, so it marks the
// operation failed with service_unavailable and answers 503 + Retry-After: the device is
// never left polling work nobody will do. Once the queue is back, the device's next
// register starts a new operation at once (no minimum-interval refusal) and is
// provisioned.
func TestRegisterWhileQueueUnusable(t *testing.T) {
	s := startStack(t, stackOptions{Settings: map[string]string{"IOTPROV_REGISTRATION_MIN_INTERVAL": "1h"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFleet(t, s, "queue-outage", 1)
	d := f.devices[0]
	tables, queues := storageClients(t, s)

	if _, err := queues.DeleteQueue(ctx, queue.Name, nil); err != nil {
		t.Fatal(err)
	}
	status, hdr, body := f.call(ctx, d, http.MethodPost, "/v1/provisioning/azure/iot/register")
	e, _ := body["error"].(map[string]any)
	if status != http.StatusServiceUnavailable || e["code"] != "service_unavailable" || hdr.Get("Retry-After") == "" {
		t.Fatalf("register with the queue gone: %d %v Retry-After %q; want 503 service_unavailable with Retry-After",
			status, body, hdr.Get("Retry-After"))
	}
	abandoned := rawOperations(t, tables)
	if len(abandoned) != 1 {
		t.Fatalf("after the refused register the table holds %d operations, want the one abandoned", len(abandoned))
	}
	for id, raw := range abandoned {
		var op struct{ PartitionKey, Status, ErrorCode string }
		if err := json.Unmarshal(raw, &op); err != nil {
			t.Fatal(err)
		}
		if op.PartitionKey != d.id || op.Status != "failed" || op.ErrorCode != "service_unavailable" {
			t.Errorf("operation %s left as %+v, want failed with service_unavailable", id, op)
		}
	}

	if _, err := queues.CreateQueue(ctx, queue.Name, nil); err != nil {
		t.Fatal(err)
	}
	f.registerAll(ctx, t, 1)
	f.awaitAll(ctx, t, 1)
	if d.result == nil || d.result["status"] != "assigned" {
		t.Fatalf("the device was not provisioned after the queue came back: %v", d.result)
	}
	if _, ok := abandoned[d.opID]; ok {
		t.Errorf("the device got the abandoned operation %s again", d.opID)
	}
	if err := checkCredential(s, d); err != nil {
		t.Error(err)
	}
	if n := len(rawOperations(t, tables)); n != 2 {
		t.Errorf("%d operations for the device, want the abandoned one and the assigned one", n)
	}
}
