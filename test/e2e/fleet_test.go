package e2e

// A fleet of devices for the reliability tests: they register and poll the way a device
// in the field does — riding out refused connections and 503s while the handler or
// storage is down — and the end state is checked against the raw tables.

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"

	"github.com/iotprov/iotprov/internal/deviceclient"
	"github.com/iotprov/iotprov/internal/devstack"
	"github.com/iotprov/iotprov/internal/storageconn"
	"github.com/iotprov/iotprov/internal/store"
)

// fleetDevice is one device of a fleet and what it saw.
type fleetDevice struct {
	id, auth string
	opID     string
	result   map[string]any // the last 200 answer of its operation
	polls    int
}

// fleet is a set of devices registering against one stack.
type fleet struct {
	base    string
	client  *http.Client
	devices []*fleetDevice
}

func newFleet(t *testing.T, s *devstack.Stack, prefix string, n int) *fleet {
	t.Helper()
	sas := newSASKit(t, s)
	f := &fleet{base: s.BaseURL, client: &http.Client{Timeout: 20 * time.Second}}
	for i := range n {
		id := fmt.Sprintf("%s-%04d", prefix, i)
		f.devices = append(f.devices, &fleetDevice{id: id, auth: sas.authorization(id)})
	}
	return f
}

// call makes one request; a transport error (the handler is down) is status 0.
func (f *fleet) call(ctx context.Context, d *fleetDevice, method, path string) (int, http.Header, map[string]any) {
	req, err := http.NewRequestWithContext(ctx, method, f.base+path, nil)
	if err != nil {
		return 0, nil, nil
	}
	req.Header.Set("Authorization", d.auth)
	res, err := f.client.Do(req)
	if err != nil {
		return 0, nil, nil
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return res.StatusCode, res.Header, m
}

// registerAll registers every device, parallel at most par at a time, retrying what a
// device would retry (no answer, 503).
func (f *fleet) registerAll(ctx context.Context, t *testing.T, par int) {
	t.Helper()
	f.each(par, func(d *fleetDevice) {
		for ctx.Err() == nil {
			status, _, body := f.call(ctx, d, http.MethodPost, "/v1/provisioning/azure/iot/register")
			switch status {
			case http.StatusAccepted:
				d.opID, _ = body["operationId"].(string)
				return
			case 0, http.StatusServiceUnavailable:
				time.Sleep(500 * time.Millisecond)
			default:
				t.Errorf("%s: register answered %d %v", d.id, status, body)
				return
			}
		}
	})
}

// awaitAll polls every registered device until its operation is finished or ctx ends.
func (f *fleet) awaitAll(ctx context.Context, t *testing.T, par int) {
	t.Helper()
	f.each(par, func(d *fleetDevice) {
		if d.opID == "" {
			return
		}
		for ctx.Err() == nil {
			status, _, body := f.call(ctx, d, http.MethodGet, "/v1/provisioning/azure/iot/registrations/"+d.opID)
			d.polls++
			switch {
			case status == http.StatusOK:
				d.result = body
				return
			case status == http.StatusAccepted, status == 0, status == http.StatusServiceUnavailable:
				time.Sleep(time.Second)
			default:
				t.Errorf("%s: poll answered %d %v", d.id, status, body)
				return
			}
		}
	})
}

func (f *fleet) each(par int, fn func(*fleetDevice)) {
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for _, d := range f.devices {
		wg.Add(1)
		sem <- struct{}{}
		go func() { defer wg.Done(); defer func() { <-sem }(); fn(d) }()
	}
	wg.Wait()
}

// assigned counts the devices whose operation ended assigned.
func (f *fleet) assigned() int {
	n := 0
	for _, d := range f.devices {
		if d.result != nil && d.result["status"] == "assigned" {
			n++
		}
	}
	return n
}

// storageClients opens the stack's tables and queues as the handler does.
func storageClients(t *testing.T, s *devstack.Stack) (*aztables.ServiceClient, *azqueue.ServiceClient) {
	t.Helper()
	tables, queues, err := storageconn.Open(storageconn.Settings{ConnectionString: s.Settings()["AzureWebJobsStorage"]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tables, queues
}

// rawOperations returns every operation row (not the devices' "current" links) as the
// raw JSON the table service returns, keyed by operation ID.
func rawOperations(t *testing.T, tables *aztables.ServiceClient) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	filter := "RowKey ne 'current'"
	pager := tables.NewClient(store.OperationsTable).NewListEntitiesPager(&aztables.ListEntitiesOptions{Filter: &filter})
	for pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Entities {
			var k struct{ RowKey string }
			if err := json.Unmarshal(e, &k); err != nil {
				t.Fatal(err)
			}
			out[k.RowKey] = e
		}
	}
	return out
}

// queueDepth is the approximate number of messages in the named queue.
func queueDepth(t *testing.T, queues *azqueue.ServiceClient, name string) int32 {
	t.Helper()
	p, err := queues.NewQueueClient(name).GetProperties(context.Background(), nil)
	if err != nil {
		t.Fatalf("queue %s: %v", name, err)
	}
	if p.ApproximateMessagesCount == nil {
		return 0
	}
	return *p.ApproximateMessagesCount
}

// checkCredential verifies an assigned answer: the chain verifies to the device CA with
// CN = device ID, and the private key is the certificate's.
func checkCredential(s *devstack.Stack, d *fleetDevice) error {
	r := d.result
	if r["status"] != "assigned" || r["deviceId"] != d.id || r["host"] != "localhost" {
		return fmt.Errorf("answer %v", r)
	}
	str := func(k string) string { v, _ := r[k].(string); return v }
	roots, err := deviceRoots(s)
	if err != nil {
		return err
	}
	// What a device checks before it uses its credentials: chain to the device root for
	// clientAuth, CN = device ID, the key matches the certificate.
	answer := &deviceclient.Result{Status: deviceclient.StatusAssigned, Credentials: &deviceclient.Credentials{
		DeviceID: str("deviceId"), Host: str("host"), Certificate: str("certificate"),
		PrivateKey: str("privateKey"), RootCACertificate: str("rootCaCertificate")}}
	if err := deviceclient.VerifyCredentials(answer, d.id, roots, nil); err != nil {
		return err
	}
	// VerifyCredentials has verified the chain; counting its PEM blocks is enough to see
	// that it holds the issuer too, not the device certificate alone.
	if n := countPEMCertificates(str("certificate")); n < 2 {
		return fmt.Errorf("chain of %d certificates, want the device certificate and its issuer", n)
	}
	if kb, _ := pem.Decode([]byte(str("privateKey"))); kb == nil || kb.Type != "PRIVATE KEY" {
		return fmt.Errorf("privateKey is not PKCS#8 PEM")
	}
	return nil
}

// countPEMCertificates counts the CERTIFICATE blocks of a PEM chain.
func countPEMCertificates(chain string) int {
	n := 0
	for rest := []byte(chain); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return n
		}
		if b.Type == "CERTIFICATE" {
			n++
		}
	}
}

// countLines counts the lines of out that contain every one of parts.
func countLines(out string, parts ...string) int {
	n := 0
	for line := range strings.SplitSeq(out, "\n") {
		ok := true
		for _, p := range parts {
			if !strings.Contains(line, p) {
				ok = false
				break
			}
		}
		if ok && line != "" {
			n++
		}
	}
	return n
}

// leaseRenewed reports whether the handler's local runner keeps messages under short
// renewed leases (localrun.StorageQueue wired in handler/main.go).
func leaseRenewed(s *devstack.Stack) bool {
	return strings.Contains(s.Output("handler"), `"leaseRenewed":true`)
}

// sameCertificate reports whether two assigned answers carry the same credential.
func sameCertificate(a, b map[string]any) bool {
	return a["certificate"] == b["certificate"] && a["privateKey"] == b["privateKey"]
}
