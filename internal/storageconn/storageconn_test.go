package storageconn

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/iotprov/iotprov/internal/testenv"
)

// fakeCredential is a TokenCredential that is never asked for a token in these tests.
type fakeCredential struct{}

func (fakeCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "t", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

var _ azcore.TokenCredential = fakeCredential{}

const secretKey = "c2VjcmV0LWtleS1ieXRlcw==" // base64 "secret-key-bytes"

func TestOpen(t *testing.T) {
	tests := []struct {
		name      string
		s         Settings
		cred      azcore.TokenCredential
		wantQueue string // expected queue service URL; "" to skip the check
		wantErr   string // substring naming the bad setting
	}{
		{name: "ok/development storage", s: Settings{ConnectionString: "UseDevelopmentStorage=true"},
			wantQueue: "http://127.0.0.1:10001/devstoreaccount1/"},
		{name: "ok/account key", s: Settings{ConnectionString: "DefaultEndpointsProtocol=https;AccountName=iotprovsa;AccountKey=" + secretKey + ";EndpointSuffix=core.windows.net"},
			wantQueue: "https://iotprovsa.queue.core.windows.net/"},
		{name: "ok/explicit endpoints", s: Settings{ConnectionString: "AccountName=devstoreaccount1;AccountKey=" + secretKey + ";QueueEndpoint=http://127.0.0.1:1234/devstoreaccount1;TableEndpoint=http://127.0.0.1:1235/devstoreaccount1;"},
			wantQueue: "http://127.0.0.1:1234/devstoreaccount1/"},
		{name: "ok/keys are case-insensitive", s: Settings{ConnectionString: "accountname=iotprovsa;accountkey=" + secretKey},
			wantQueue: "https://iotprovsa.queue.core.windows.net/"},
		{name: "ok/sas", s: Settings{ConnectionString: "QueueEndpoint=https://a.queue.core.windows.net;TableEndpoint=https://a.table.core.windows.net;SharedAccessSignature=sv=2022-11-02&sig=abc"},
			wantQueue: "https://a.queue.core.windows.net/?sv=2022-11-02&sig=abc"},
		{name: "ok/identity-based", s: Settings{AccountName: "iotprovsa"}, cred: fakeCredential{},
			wantQueue: "https://iotprovsa.queue.core.windows.net/"},
		{name: "ok/identity-based with URIs", s: Settings{AccountName: "iotprovsa", QueueServiceURI: "https://q.example.net", TableServiceURI: "https://t.example.net/"}, cred: fakeCredential{},
			wantQueue: "https://q.example.net/"},
		{name: "ok/connection string wins", s: Settings{ConnectionString: "UseDevelopmentStorage=true", AccountName: "Bad Name"},
			wantQueue: "http://127.0.0.1:10001/devstoreaccount1/"},

		{name: "fail/nothing set", s: Settings{}, wantErr: "AzureWebJobsStorage: not set"},
		{name: "fail/identity without credential", s: Settings{AccountName: "iotprovsa"}, wantErr: "AzureWebJobsStorage__accountName"},
		{name: "fail/bad account name", s: Settings{AccountName: "Not_An_Account"}, cred: fakeCredential{}, wantErr: "AzureWebJobsStorage__accountName"},
		{name: "fail/bad queue URI", s: Settings{AccountName: "iotprovsa", QueueServiceURI: "ftp://x"}, cred: fakeCredential{}, wantErr: "AzureWebJobsStorage__queueServiceUri"},
		{name: "fail/bad table URI", s: Settings{AccountName: "iotprovsa", TableServiceURI: "not a url"}, cred: fakeCredential{}, wantErr: "AzureWebJobsStorage__tableServiceUri"},
		{name: "fail/garbage", s: Settings{ConnectionString: "this is not a connection string"}, wantErr: "AzureWebJobsStorage: malformed"},
		{name: "fail/no key", s: Settings{ConnectionString: "AccountName=iotprovsa"}, wantErr: "neither AccountKey nor SharedAccessSignature"},
		{name: "fail/key not base64", s: Settings{ConnectionString: "AccountName=iotprovsa;AccountKey=not*base64!"}, wantErr: "AccountKey is not valid base64"},
		{name: "fail/dev storage false", s: Settings{ConnectionString: "UseDevelopmentStorage=false"}, wantErr: "UseDevelopmentStorage"},
		{name: "fail/duplicate key", s: Settings{ConnectionString: "AccountName=a1b;AccountName=a1c;AccountKey=" + secretKey}, wantErr: "twice"},
		{name: "fail/bad protocol", s: Settings{ConnectionString: "DefaultEndpointsProtocol=ftp;AccountName=iotprovsa;AccountKey=" + secretKey}, wantErr: "DefaultEndpointsProtocol"},
		{name: "fail/key and sas", s: Settings{ConnectionString: "AccountName=iotprovsa;AccountKey=" + secretKey + ";SharedAccessSignature=sig=x"}, wantErr: "both"},
		{name: "fail/sas without endpoints or account", s: Settings{ConnectionString: "SharedAccessSignature=sig=x"}, wantErr: "neither AccountName nor"},
		{name: "fail/endpoint with query", s: Settings{ConnectionString: "AccountName=iotprovsa;AccountKey=" + secretKey + ";QueueEndpoint=https://x/?a=b"}, wantErr: "queueendpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc, qc, err := Open(tt.s, tt.cred)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatal("Open succeeded, want an error")
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %q, want it to mention %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), secretKey) || strings.Contains(err.Error(), "sig=") {
					t.Fatalf("error leaks a secret: %q", err)
				}
				return
			}
			if err != nil || tc == nil || qc == nil {
				t.Fatalf("Open = %v, %v, %v", tc, qc, err)
			}
			if tt.wantQueue != "" && qc.URL() != tt.wantQueue {
				t.Fatalf("queue URL = %q, want %q", qc.URL(), tt.wantQueue)
			}
		})
	}
}

// Against a real Azurite both clients work, with the retry caps in force.
func TestOpenAzurite(t *testing.T) {
	tc, qc, err := Open(Settings{ConnectionString: testenv.Azurite(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := tc.CreateTable(ctx, "storageconn", nil); err != nil {
		t.Fatalf("tables: %v", err)
	}
	if _, err := qc.CreateQueue(ctx, "storageconn", nil); err != nil {
		t.Fatalf("queues: %v", err)
	}
}

// TestOpenKeepsConnectionsForConcurrency: after a round of concurrent storage calls, the
// next round of the same size reuses the connections instead of dialling new ones (the
// SDK's default transport keeps only 10 idle per host: 54 of 64 would be dialled again).
func TestOpenKeepsConnectionsForConcurrency(t *testing.T) {
	const inFlight = 64
	var (
		dialled atomic.Int64
		mu      sync.Mutex
		arrived int
		release = make(chan struct{})
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Hold every request until the whole round is in flight, so the round needs
		// inFlight connections at once.
		mu.Lock()
		arrived++
		ch := release
		if arrived == inFlight {
			close(release)
			arrived, release = 0, make(chan struct{})
		}
		mu.Unlock()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("x-ms-error-code", "ResourceNotFound")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"odata.error":{"code":"ResourceNotFound","message":{"lang":"en-US","value":"not found"}}}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dialled.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	port := srv.Listener.Addr().(*net.TCPAddr).Port

	tc, _, err := Open(Settings{ConnectionString: testenv.ConnectionString(port, port)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	table := tc.NewClient("t")
	round := func() {
		var wg sync.WaitGroup
		for i := range inFlight {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				if _, err := table.GetEntity(ctx, "p", strconv.Itoa(i), nil); err == nil {
					t.Error("GetEntity succeeded against a server that answers 404")
				}
			})
		}
		wg.Wait()
	}
	round()
	first := dialled.Load()
	round()
	if again := dialled.Load() - first; first < inFlight || again != 0 {
		t.Errorf("first round dialled %d connections (want ≥ %d), the second %d more (want 0)", first, inFlight, again)
	}
}

// A dead endpoint must fail within seconds, retries included, so register can answer 503.
func TestOpenDeadEndpointFailsFast(t *testing.T) {
	port := testenv.FreePort(t)
	tc, qc, err := Open(Settings{ConnectionString: testenv.ConnectionString(port, port)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := tc.CreateTable(ctx, "x", nil); err == nil {
		t.Fatal("tables: succeeded against a dead endpoint")
	}
	if _, err := qc.CreateQueue(ctx, "x", nil); err == nil {
		t.Fatal("queues: succeeded against a dead endpoint")
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("two requests to a dead endpoint took %v", d)
	}
}

func FuzzParseConnectionString(f *testing.F) {
	f.Add("UseDevelopmentStorage=true")
	f.Add("DefaultEndpointsProtocol=https;AccountName=iotprovsa;AccountKey=" + secretKey + ";EndpointSuffix=core.windows.net")
	f.Add("AccountName=devstoreaccount1;AccountKey=" + secretKey + ";QueueEndpoint=http://127.0.0.1:1/d;TableEndpoint=http://127.0.0.1:2/d;")
	f.Add("QueueEndpoint=https://a;TableEndpoint=https://b;SharedAccessSignature=?sv=1&sig=2")
	f.Add(";;=;a=b=c;")
	f.Fuzz(func(t *testing.T, s string) {
		cs, err := parseConnectionString(s)
		if err != nil {
			if cs != (connString{}) {
				t.Fatalf("error with a non-zero result")
			}
			// No secret value of the input may appear in the error.
			for _, part := range strings.Split(s, ";") {
				k, v, _ := strings.Cut(part, "=")
				k = strings.ToLower(strings.TrimSpace(k))
				v = strings.TrimSpace(v)
				if (k == "accountkey" || k == "sharedaccesssignature") && len(v) >= 8 && strings.Contains(err.Error(), v) {
					t.Fatalf("error %q leaks %s", err, k)
				}
			}
			return
		}
		for _, u := range []string{cs.tableURL, cs.queueURL} {
			if !strings.HasSuffix(u, "/") || !(strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://")) {
				t.Fatalf("endpoint %q", u)
			}
		}
		if (cs.accountKey == "") == (cs.sas == "") {
			t.Fatalf("want exactly one of key and SAS: %+v", cs)
		}
	})
}
