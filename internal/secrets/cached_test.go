package secrets

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/testenv"
)

// fakeSource is a hand-written Source whose behaviour is a function field.
type fakeSource struct {
	SecretFunc func(ctx context.Context, name string) ([]byte, error)
}

var _ Source = (*fakeSource)(nil)

func (f *fakeSource) Secret(ctx context.Context, name string) ([]byte, error) {
	return f.SecretFunc(ctx, name)
}

func newFakeClock() *testenv.Clock {
	return testenv.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
}

// versionedSource answers "v<N>" where N is the current version, or err when set.
type versionedSource struct {
	fakeSource
	mu      sync.Mutex
	version int
	err     error
}

func newVersionedSource() *versionedSource {
	s := &versionedSource{version: 1}
	s.SecretFunc = func(ctx context.Context, name string) ([]byte, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.err != nil {
			return nil, s.err
		}
		return []byte(fmt.Sprintf("%s=v%d", name, s.version)), nil
	}
	return s
}

func (s *versionedSource) set(version int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version, s.err = version, err
}

var errTransient = errors.New("key vault: 503 service unavailable")

func TestCached(t *testing.T) {
	const ttl = 5 * time.Minute
	type step struct {
		advance     time.Duration
		version     int   // the source's version from this step on (0 keeps it)
		srcErr      error // the source fails from this step on (nil: it works)
		want        string
		wantErr     error
		wantFetches int64
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{name: "ok/hit within ttl", steps: []step{
			{want: "k=v1", wantFetches: 1},
			{advance: ttl - time.Second, want: "k=v1", wantFetches: 1},
		}},
		{name: "ok/miss after ttl", steps: []step{
			{want: "k=v1", wantFetches: 1},
			{advance: ttl, want: "k=v1", wantFetches: 2},
			{advance: time.Second, want: "k=v1", wantFetches: 2},
		}},
		{name: "ok/rotation picked up after ttl", steps: []step{
			{want: "k=v1", wantFetches: 1},
			{version: 2, advance: time.Minute, want: "k=v1", wantFetches: 1},
			{advance: ttl, want: "k=v2", wantFetches: 2},
		}},
		{name: "ok/stale served on transient error", steps: []step{
			{want: "k=v1", wantFetches: 1},
			{advance: ttl, srcErr: errTransient, want: "k=v1", wantFetches: 2},
			// Within the retry interval the stale value is served without a fetch...
			{advance: maxStaleRetry - time.Second, srcErr: errTransient, want: "k=v1", wantFetches: 2},
			// ...after it, one more attempt, still failing, still stale.
			{advance: time.Second, srcErr: errTransient, want: "k=v1", wantFetches: 3},
			// Key Vault is back, with a rotated value.
			{advance: maxStaleRetry, version: 2, want: "k=v2", wantFetches: 4},
			{advance: ttl - time.Second, version: 2, want: "k=v2", wantFetches: 4},
		}},
		{name: "fail/not found is not masked by a stale value", steps: []step{
			{want: "k=v1", wantFetches: 1},
			{advance: ttl, srcErr: fmt.Errorf("wrapped: %w", ErrNotFound), wantErr: ErrNotFound, wantFetches: 2},
			// The deleted value is forgotten: every call asks again.
			{srcErr: fmt.Errorf("wrapped: %w", ErrNotFound), wantErr: ErrNotFound, wantFetches: 3},
			{want: "k=v1", wantFetches: 4},
		}},
		{name: "fail/transient error without a previous value", steps: []step{
			{srcErr: errTransient, wantErr: errTransient, wantFetches: 1},
			// Errors are not cached: the next call tries again.
			{srcErr: errTransient, wantErr: errTransient, wantFetches: 2},
			{want: "k=v1", wantFetches: 3},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			src := newVersionedSource()
			c := NewCached(src, ttl, clock.Now)
			version := 1
			for i, s := range tt.steps {
				if s.version != 0 {
					version = s.version
				}
				src.set(version, s.srcErr)
				clock.Advance(s.advance)
				got, err := c.Secret(context.Background(), "k")
				if s.wantErr != nil {
					if !errors.Is(err, s.wantErr) || got != nil {
						t.Fatalf("step %d: got %q, %v; want error %v", i, got, err, s.wantErr)
					}
				} else if err != nil || string(got) != s.want {
					t.Fatalf("step %d: got %q, %v; want %q", i, got, err, s.want)
				}
				if n := c.Fetches(); n != s.wantFetches {
					t.Fatalf("step %d: Fetches() = %d, want %d", i, n, s.wantFetches)
				}
			}
		})
	}
}

func TestCachedNamesAreSeparate(t *testing.T) {
	c := NewCached(newVersionedSource(), time.Hour, newFakeClock().Now)
	for _, name := range []string{"a", "b", "a", "b"} {
		got, err := c.Secret(context.Background(), name)
		if err != nil || string(got) != name+"=v1" {
			t.Fatalf("Secret(%q) = %q, %v", name, got, err)
		}
	}
	if n := c.Fetches(); n != 2 {
		t.Fatalf("Fetches() = %d, want 2", n)
	}
}

func TestCachedReturnsCopies(t *testing.T) {
	c := NewCached(newVersionedSource(), time.Hour, newFakeClock().Now)
	got, err := c.Secret(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	clear(got) // a caller zeroing key material after use
	again, err := c.Secret(context.Background(), "k")
	if err != nil || string(again) != "k=v1" {
		t.Fatalf("after caller zeroed its copy: %q, %v", again, err)
	}
}

func TestCachedZeroTTLAlwaysFetches(t *testing.T) {
	c := NewCached(newVersionedSource(), 0, nil)
	for range 3 {
		if _, err := c.Secret(context.Background(), "k"); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.Fetches(); n != 3 {
		t.Fatalf("Fetches() = %d, want 3", n)
	}
}

// blockingSource blocks every fetch until release is closed (or the caller's context
// ends) and counts fetches itself, independently of Cached.Fetches.
type blockingSource struct {
	fakeSource
	started chan struct{} // receives once per fetch
	release chan struct{}
	calls   atomic.Int64
}

func newBlockingSource() *blockingSource {
	s := &blockingSource{started: make(chan struct{}, 100), release: make(chan struct{})}
	s.SecretFunc = func(ctx context.Context, name string) ([]byte, error) {
		n := s.calls.Add(1)
		s.started <- struct{}{}
		select {
		case <-s.release:
			return []byte(fmt.Sprintf("%s#%d", name, n)), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s
}

// waitWaiters blocks until n callers are waiting on the in-flight fetch of name.
func waitWaiters(t *testing.T, c *Cached, name string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		var w int
		if e := c.entries[name]; e != nil && e.inflight != nil {
			w = e.inflight.waiters
		}
		c.mu.Unlock()
		if w >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("timed out waiting for %d waiters on %q", n, name)
}

func TestCachedConcurrentCallersShareOneFetch(t *testing.T) {
	const callers = 50
	src := newBlockingSource()
	c := NewCached(src, time.Hour, newFakeClock().Now)

	results := make(chan string, callers)
	errs := make(chan error, callers)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			v, err := c.Secret(context.Background(), "ca-bundle")
			if err != nil {
				errs <- err
				return
			}
			results <- string(v)
		})
	}
	<-src.started
	waitWaiters(t, c, "ca-bundle", callers-1)
	close(src.release)
	wg.Wait()
	close(results)
	close(errs)
	for err := range errs {
		t.Fatalf("caller error: %v", err)
	}
	for v := range results {
		if v != "ca-bundle#1" {
			t.Fatalf("caller got %q, want the one shared fetch's value", v)
		}
	}
	if n, m := c.Fetches(), src.calls.Load(); n != 1 || m != 1 {
		t.Fatalf("Fetches() = %d, source calls = %d, want 1 and 1", n, m)
	}
}

func TestCachedCancellation(t *testing.T) {
	t.Run("ok/waiter outlives a canceled leader", func(t *testing.T) {
		src := newBlockingSource()
		c := NewCached(src, time.Hour, newFakeClock().Now)
		leaderCtx, cancelLeader := context.WithCancel(context.Background())
		leaderErr := make(chan error, 1)
		go func() {
			_, err := c.Secret(leaderCtx, "k")
			leaderErr <- err
		}()
		<-src.started
		type result struct {
			v   []byte
			err error
		}
		waiter := make(chan result, 1)
		go func() {
			v, err := c.Secret(context.Background(), "k")
			waiter <- result{v, err}
		}()
		waitWaiters(t, c, "k", 1)
		cancelLeader()
		if err := <-leaderErr; !errors.Is(err, context.Canceled) {
			t.Fatalf("leader err = %v, want context.Canceled", err)
		}
		<-src.started // the waiter took over with a fetch of its own
		close(src.release)
		r := <-waiter
		if r.err != nil || string(r.v) != "k#2" {
			t.Fatalf("waiter got %q, %v; want k#2", r.v, r.err)
		}
		if n := c.Fetches(); n != 2 {
			t.Fatalf("Fetches() = %d, want 2", n)
		}
	})
	t.Run("fail/waiter gives up on its own context", func(t *testing.T) {
		src := newBlockingSource()
		c := NewCached(src, time.Hour, newFakeClock().Now)
		leader := make(chan error, 1)
		go func() {
			_, err := c.Secret(context.Background(), "k")
			leader <- err
		}()
		<-src.started
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, err := c.Secret(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("waiter err = %v, want context.DeadlineExceeded", err)
		}
		close(src.release)
		if err := <-leader; err != nil {
			t.Fatalf("leader err = %v", err)
		}
		if n := c.Fetches(); n != 1 {
			t.Fatalf("Fetches() = %d, want 1", n)
		}
	})
	t.Run("ok/canceled refresh serves stale and retries next call", func(t *testing.T) {
		clock := newFakeClock()
		var fail atomic.Bool
		src := &fakeSource{SecretFunc: func(ctx context.Context, name string) ([]byte, error) {
			if fail.Load() {
				return nil, context.Canceled
			}
			return []byte("v"), nil
		}}
		c := NewCached(src, time.Minute, clock.Now)
		if _, err := c.Secret(context.Background(), "k"); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Minute)
		fail.Store(true)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if v, err := c.Secret(ctx, "k"); err != nil || string(v) != "v" {
			t.Fatalf("got %q, %v; want stale v", v, err)
		}
		fail.Store(false)
		// Our own cancellation is no reason to back off: the next call refetches.
		if v, err := c.Secret(context.Background(), "k"); err != nil || string(v) != "v" {
			t.Fatalf("got %q, %v", v, err)
		}
		if n := c.Fetches(); n != 3 {
			t.Fatalf("Fetches() = %d, want 3", n)
		}
	})
}

func TestCachedSourcePanicReleasesWaiters(t *testing.T) {
	src := newBlockingSource()
	inner := src.SecretFunc
	src.SecretFunc = func(ctx context.Context, name string) ([]byte, error) {
		if _, err := inner(ctx, name); err != nil {
			return nil, err
		}
		panic("source bug")
	}
	c := NewCached(src, time.Hour, newFakeClock().Now)
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = c.Secret(context.Background(), "k")
	}()
	<-src.started
	waiter := make(chan error, 1)
	go func() {
		_, err := c.Secret(context.Background(), "k")
		waiter <- err
	}()
	waitWaiters(t, c, "k", 1)
	close(src.release)
	if p := <-panicked; p == nil {
		t.Fatal("leader did not see the panic")
	}
	select {
	case err := <-waiter:
		if err == nil {
			t.Fatal("waiter got no error after the source panicked")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter stranded after the source panicked")
	}
}

func TestCachedStaleLogOmitsValue(t *testing.T) {
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewJSONHandler(&buf, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })

	const value = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ"
	clock := newFakeClock()
	var fail atomic.Bool
	src := &fakeSource{SecretFunc: func(ctx context.Context, name string) ([]byte, error) {
		if fail.Load() {
			return nil, errTransient
		}
		return []byte(value), nil
	}}
	c := NewCached(src, time.Minute, clock.Now)
	if _, err := c.Secret(context.Background(), "ca-key"); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	clock.Advance(time.Minute)
	if v, err := c.Secret(context.Background(), "ca-key"); err != nil || string(v) != value {
		t.Fatalf("got %q, %v; want the stale value", v, err)
	}
	line := buf.String()
	if !strings.Contains(line, `"secret":"ca-key"`) || !strings.Contains(line, errTransient.Error()) {
		t.Fatalf("log line lacks the name or the cause: %s", line)
	}
	if strings.Contains(line, value) || strings.Contains(line, value[:16]) {
		t.Fatalf("log line leaks the secret value: %s", line)
	}
}

// gatedSource holds every fetch until the test hands it a result, so each fetch of a
// test can answer differently (a value, ErrNotFound) at a moment the test chooses.
type gatedSource struct {
	fakeSource
	started chan struct{} // receives once per fetch
	results chan gatedResult
}

type gatedResult struct {
	value string
	err   error
}

func newGatedSource() *gatedSource {
	s := &gatedSource{started: make(chan struct{}, 100), results: make(chan gatedResult)}
	s.SecretFunc = func(ctx context.Context, name string) ([]byte, error) {
		s.started <- struct{}{}
		select {
		case r := <-s.results:
			if r.err != nil {
				return nil, r.err
			}
			return []byte(r.value), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s
}

// answer hands the running fetch its result, failing the test if none is running.
func (s *gatedSource) answer(t *testing.T, value string, err error) {
	t.Helper()
	select {
	case s.results <- gatedResult{value, err}:
	case <-time.After(5 * time.Second):
		t.Fatal("no fetch to answer")
	}
}

type secretResult struct {
	v   []byte
	err error
}

// secretAsync calls c.Secret in a goroutine; the result arrives on the channel.
func secretAsync(c *Cached, name string) <-chan secretResult {
	ch := make(chan secretResult, 1)
	go func() {
		v, err := c.Secret(context.Background(), name)
		ch <- secretResult{v, err}
	}()
	return ch
}

func receive(t *testing.T, ch <-chan secretResult) secretResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("Secret did not return")
		return secretResult{}
	}
}

// secretNow calls c.Secret under a deadline, for calls that must not wait on a fetch only
// the test can end: were they to wait, they fail with DeadlineExceeded instead of hanging.
func secretNow(c *Cached, name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Secret(ctx, name)
}

// TestCachedStaleWhileRevalidate: once the TTL has passed, the caller that starts the
// refresh waits for it, but a slow vault must not hold everyone else: callers that arrive
// while the refresh runs get the previous value at once. Callers with nothing cached still
// wait, and a refresh that finds the secret deleted still removes the value.
func TestCachedStaleWhileRevalidate(t *testing.T) {
	const ttl = time.Minute
	// fill caches "v1" for k and leaves the clock past its TTL.
	fill := func(t *testing.T) (*Cached, *gatedSource) {
		t.Helper()
		clock := newFakeClock()
		src := newGatedSource()
		c := NewCached(src, ttl, clock.Now)
		first := secretAsync(c, "k")
		<-src.started
		src.answer(t, "v1", nil)
		if r := receive(t, first); r.err != nil || string(r.v) != "v1" {
			t.Fatalf("first read: %q, %v", r.v, r.err)
		}
		clock.Advance(ttl)
		return c, src
	}

	t.Run("ok/callers during a slow refresh get the old value without waiting", func(t *testing.T) {
		c, src := fill(t)
		leader := secretAsync(c, "k")
		<-src.started // the refresh is running and will not end until answered
		for i := range 10 {
			v, err := secretNow(c, "k")
			if err != nil || string(v) != "v1" {
				t.Fatalf("caller %d during the refresh: %q, %v; want the old v1 at once", i, v, err)
			}
		}
		c.mu.Lock()
		waiters := c.entries["k"].inflight.waiters
		c.mu.Unlock()
		if waiters != 0 {
			t.Fatalf("waiters on the refresh = %d, want 0", waiters)
		}
		if n := c.Fetches(); n != 2 {
			t.Fatalf("Fetches() = %d, want 2: callers served stale must not start fetches", n)
		}
		src.answer(t, "v2", nil)
		// The leader waited for its own refresh and sees the new value.
		if r := receive(t, leader); r.err != nil || string(r.v) != "v2" {
			t.Fatalf("leader: %q, %v; want v2", r.v, r.err)
		}
		if v, err := c.Secret(context.Background(), "k"); err != nil || string(v) != "v2" {
			t.Fatalf("after the refresh: %q, %v; want v2", v, err)
		}
		if n := c.Fetches(); n != 2 {
			t.Fatalf("Fetches() = %d, want 2", n)
		}
	})

	t.Run("ok/the stale copy is the caller's own", func(t *testing.T) {
		c, src := fill(t)
		leader := secretAsync(c, "k")
		<-src.started
		v, err := secretNow(c, "k")
		if err != nil || string(v) != "v1" {
			t.Fatalf("during the refresh: %q, %v", v, err)
		}
		clear(v) // a caller zeroing key material after use
		if again, err := secretNow(c, "k"); err != nil || string(again) != "v1" {
			t.Fatalf("after a caller zeroed its stale copy: %q, %v", again, err)
		}
		src.answer(t, "", errTransient)
		if r := receive(t, leader); r.err != nil || string(r.v) != "v1" {
			t.Fatalf("leader after a failed refresh: %q, %v; want stale v1", r.v, r.err)
		}
	})

	t.Run("ok/caller with no cached value still waits", func(t *testing.T) {
		src := newGatedSource()
		c := NewCached(src, ttl, newFakeClock().Now)
		leader := secretAsync(c, "k")
		<-src.started
		waiter := secretAsync(c, "k")
		waitWaiters(t, c, "k", 1)
		select {
		case r := <-waiter:
			t.Fatalf("caller with nothing cached returned before the fetch: %q, %v", r.v, r.err)
		case <-time.After(20 * time.Millisecond):
		}
		src.answer(t, "v1", nil)
		for _, ch := range []<-chan secretResult{leader, waiter} {
			if r := receive(t, ch); r.err != nil || string(r.v) != "v1" {
				t.Fatalf("got %q, %v; want v1", r.v, r.err)
			}
		}
		if n := c.Fetches(); n != 1 {
			t.Fatalf("Fetches() = %d, want 1", n)
		}
	})

	t.Run("ok/zero ttl still coalesces instead of serving the old value", func(t *testing.T) {
		src := newGatedSource()
		c := NewCached(src, 0, newFakeClock().Now)
		first := secretAsync(c, "k")
		<-src.started
		src.answer(t, "v1", nil)
		if r := receive(t, first); r.err != nil || string(r.v) != "v1" {
			t.Fatalf("first read: %q, %v", r.v, r.err)
		}
		leader := secretAsync(c, "k")
		<-src.started
		waiter := secretAsync(c, "k")
		waitWaiters(t, c, "k", 1)
		src.answer(t, "v2", nil)
		for _, ch := range []<-chan secretResult{leader, waiter} {
			if r := receive(t, ch); r.err != nil || string(r.v) != "v2" {
				t.Fatalf("got %q, %v; want v2 (a ttl of 0 caches nothing)", r.v, r.err)
			}
		}
	})

	t.Run("fail/refresh that finds the secret deleted removes the value", func(t *testing.T) {
		c, src := fill(t)
		leader := secretAsync(c, "k")
		<-src.started
		// Until the refresh answers, the old value is still served...
		if v, err := secretNow(c, "k"); err != nil || string(v) != "v1" {
			t.Fatalf("during the refresh: %q, %v; want v1", v, err)
		}
		src.answer(t, "", fmt.Errorf("wrapped: %w", ErrNotFound))
		if r := receive(t, leader); !errors.Is(r.err, ErrNotFound) || r.v != nil {
			t.Fatalf("leader: %q, %v; want ErrNotFound", r.v, r.err)
		}
		// ...once it has, the value is gone: the next call fetches, and a caller arriving
		// during that fetch has nothing stale to get, so it waits for the answer.
		next := secretAsync(c, "k")
		<-src.started
		waiter := secretAsync(c, "k")
		waitWaiters(t, c, "k", 1)
		src.answer(t, "", fmt.Errorf("wrapped: %w", ErrNotFound))
		for _, ch := range []<-chan secretResult{next, waiter} {
			if r := receive(t, ch); !errors.Is(r.err, ErrNotFound) || r.v != nil {
				t.Fatalf("after the delete: %q, %v; want ErrNotFound", r.v, r.err)
			}
		}
		if n := c.Fetches(); n != 3 {
			t.Fatalf("Fetches() = %d, want 3", n)
		}
	})
}
