package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/queue"
)

// Fault-test shape: chosen so the run drains at the emulator's quota in about two minutes
// on a 2-core machine (300 registrations at 200/min is at least 90 s of quota alone).
const (
	faultDevices   = 300
	faultQuota     = 200 // DPS registrations per rolling minute (DPS allows 1,000)
	faultRate      = 0.2 // of every DPS request, answered 500 or 503
	faultPollLimit = 5   // status polls per device per 10 s, as DPS
	faultDeadline  = 4 * time.Minute
)

// TestFaultsLoseNothing provisions a burst of devices through the whole local stack while
// DPS throttles and fails a fifth of its requests, and kills the handler with SIGKILL
// twice mid-run. Every operation must end assigned, with a certificate that verifies and
// matches its key, one certificate per operation, and nothing left on the queues.
func TestFaultsLoseNothing(t *testing.T) {
	s := startStack(t, stackOptions{
		Settings: map[string]string{"IOTPROV_MAX_ATTEMPTS": "1000"},
		DPSEnv: []string{
			fmt.Sprintf("DPSEMU_QUOTA_PER_MINUTE=%d", faultQuota),
			fmt.Sprintf("DPSEMU_FAULT_RATE=%g", faultRate),
			fmt.Sprintf("DPSEMU_POLL_LIMIT=%d", faultPollLimit),
		},
	})
	if !leaseRenewed(s) {
		// A failure, not a skip: without renewal a SIGKILLed handler's messages would stay
		// invisible for the whole function timeout, and skipping would hide that.
		t.Fatal("the handler's local runner does not renew its message leases (localrun.NewStorageQueue in handler/main.go)")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), faultDeadline)
	defer cancel()
	f := newFleet(t, s, "fault", faultDevices)

	// The killer: SIGKILL the handler when a third and when two thirds of the fleet is
	// assigned, with the rest in every state (queued, issued, deferred, mid-DPS), and start
	// it again each time — the devices ride it out. (Kills inside the registration burst
	// hit a window register does not cover yet — an operation written but not enqueued;
	// docs/reliability.md.)
	var registeredN, assignedN atomic.Int64
	killWhen := []func() bool{
		func() bool { return assignedN.Load() >= faultDevices/3 },
		func() bool { return assignedN.Load() >= 2*faultDevices/3 },
	}
	kills := 0
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		for _, due := range killWhen {
			for !due() {
				if ctx.Err() != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			s.KillHandler()
			kills++
			t.Logf("%5.1fs: handler killed (SIGKILL): %d registered, %d assigned", time.Since(start).Seconds(),
				registeredN.Load(), assignedN.Load())
			time.Sleep(time.Second)
			if err := s.StartHandler(ctx); err != nil {
				t.Errorf("restart the handler: %v", err)
				return
			}
		}
	}()

	// Registration runs as a burst (a truck of devices powered on at once); the first
	// kill lands during it.
	f.each(64, func(d *fleetDevice) {
		for ctx.Err() == nil {
			status, _, body := f.call(ctx, d, http.MethodPost, "/v1/provisioning/azure/iot/register")
			if status == http.StatusAccepted {
				d.opID, _ = body["operationId"].(string)
				registeredN.Add(1)
				return
			}
			if status != 0 && status != http.StatusServiceUnavailable {
				t.Errorf("%s: register answered %d %v", d.id, status, body)
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
	registered := time.Since(start)
	f.each(64, func(d *fleetDevice) {
		for ctx.Err() == nil && d.opID != "" {
			status, _, body := f.call(ctx, d, http.MethodGet, "/v1/provisioning/azure/iot/registrations/"+d.opID)
			d.polls++
			if status == http.StatusOK {
				d.result = body
				assignedN.Add(1)
				return
			}
			if status != 0 && status != http.StatusAccepted && status != http.StatusServiceUnavailable {
				t.Errorf("%s: poll answered %d %v", d.id, status, body)
				return
			}
			time.Sleep(time.Second)
		}
	})
	cancelKiller := ctx.Err() != nil
	<-killed
	took := time.Since(start)

	// The end state, device by device.
	tables, queues := storageClients(t, s)
	rows := rawOperations(t, tables)
	lost, failed, mismatched, twoCerts := 0, 0, 0, 0
	for _, d := range f.devices {
		switch {
		case d.opID == "" || d.result == nil:
			lost++
			t.Errorf("%s: operation %q never finished", d.id, d.opID)
			continue
		case d.result["status"] != "assigned":
			failed++
			t.Errorf("%s: %v", d.id, d.result)
			continue
		}
		if err := checkCredential(s, d); err != nil {
			mismatched++
			t.Errorf("%s: %v", d.id, err)
		}
		// One operation, one certificate: asking again gives the same credential, and it
		// is the certificate the store recorded (and DPS was registered with).
		status, _, again := f.call(context.Background(), d, http.MethodGet, "/v1/provisioning/azure/iot/registrations/"+d.opID)
		var row struct{ CertificatePEM, Status string }
		_ = json.Unmarshal(rows[d.opID], &row)
		if status != http.StatusOK || !sameCertificate(d.result, again) || row.CertificatePEM != d.result["certificate"] {
			twoCerts++
			t.Errorf("%s: operation %s answered two different certificates (or not the stored one)", d.id, d.opID)
		}
	}
	if len(rows) != faultDevices {
		t.Errorf("%d operations in the table, want exactly one per device (%d)", len(rows), faultDevices)
	}
	depth, poison := queueDepth(t, queues, queue.Name), queueDepth(t, queues, queue.Name+queue.PoisonSuffix)
	if poison != 0 {
		t.Errorf("%d messages on the poison queue", poison)
	}

	dps := s.Output("dpsemu")
	handler := s.Output("handler")
	faults := countLines(dps, `"msg":"dps request"`, `"status":500`) + countLines(dps, `"msg":"dps request"`, `"status":503`)
	throttled := countLines(dps, `"msg":"dps request"`, `"status":429`)
	pollsThrottled := countLines(dps, `"msg":"dps request"`, `"method":"GET"`, `"status":429`)
	requests := countLines(dps, `"msg":"dps request"`)
	deferred := countLines(handler, `"msg":"provision: deferred"`)
	t.Logf("fault test: %d devices, %d assigned, %d failed, %d lost (%d never finished), %d credential mismatches, "+
		"%d operations with two certificates; handler SIGKILLed %d times; DPS (quota %d/min, fault rate %g, poll limit %d/10s): "+
		"%d requests, %d faults injected (500/503), %d throttled (429; %d of them status polls); %d deferrals re-enqueued; queue left %d, poison %d; "+
		"registered in %.1fs, all finished in %.1fs",
		faultDevices, f.assigned(), failed, lost, lost, mismatched, twoCerts, kills, faultQuota, faultRate, faultPollLimit,
		requests, faults, throttled, pollsThrottled, deferred, depth, poison, registered.Seconds(), took.Seconds())
	if cancelKiller {
		t.Errorf("the fleet did not finish within %v", faultDeadline)
	}
	if kills != len(killWhen) {
		t.Errorf("handler killed %d times, want %d", kills, len(killWhen))
	}
	if faults == 0 || throttled == 0 {
		t.Errorf("the emulator injected %d faults and %d throttles: the test did not exercise them", faults, throttled)
	}
}
