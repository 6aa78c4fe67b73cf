package devstack

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// silentListener accepts connections and never answers, as a wedged handler would.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, unanswered, until the test ends
			mu.Unlock()
		}
	}()
	return "http://" + l.Addr().String()
}

func TestHealthyProbe(t *testing.T) {
	client := &http.Client{Timeout: healthProbeTimeout}

	t.Run("ok/200", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/healthz" {
				http.NotFound(w, r)
			}
		}))
		defer srv.Close()
		s := &Stack{BaseURL: srv.URL}
		if !s.healthy(context.Background(), client) {
			t.Fatal("healthy = false for a handler answering 200")
		}
	})

	t.Run("fail/503", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		defer srv.Close()
		s := &Stack{BaseURL: srv.URL}
		if s.healthy(context.Background(), client) {
			t.Fatal("healthy = true for a handler answering 503")
		}
	})

	// A handler that accepts but never answers must not hold StartHandler past its
	// deadline: each probe gives up after healthProbeTimeout.
	t.Run("fail/silent times out", func(t *testing.T) {
		s := &Stack{BaseURL: silentListener(t)}
		start := time.Now()
		if s.healthy(context.Background(), client) {
			t.Fatal("healthy = true for a handler that never answers")
		}
		if d := time.Since(start); d > healthProbeTimeout+2*time.Second {
			t.Fatalf("probe took %s, want about %s", d, healthProbeTimeout)
		}
	})

	// Cancelling ctx stops a probe at once, well before the client's timeout.
	t.Run("fail/silent cancelled", func(t *testing.T) {
		s := &Stack{BaseURL: silentListener(t)}
		slow := &http.Client{Timeout: time.Minute}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		if s.healthy(ctx, slow) {
			t.Fatal("healthy = true for a handler that never answers")
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("probe took %s after ctx was done, want it to stop with ctx", d)
		}
	})
}
