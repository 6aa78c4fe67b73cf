package secrets

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// maxStaleRetry bounds how long a stale value is served after a failed refresh before the
// next attempt. Without it every request during a Key Vault outage would pay for a full
// round of SDK retries; with it at most one request per interval does.
const maxStaleRetry = 30 * time.Second

// Cached wraps a Source with a per-name TTL cache. Concurrent callers for the same name
// share one fetch (no thundering herd on Key Vault). After the TTL a value is refetched;
// if that refetch fails with a transient error and a previous value exists, the stale
// value is served (and the error logged with slog, without the value) so a Key Vault blip
// does not stop provisioning. While a refetch is in flight, callers other than the one
// running it get the previous value at once rather than wait for it
// (stale-while-revalidate): a slow or throttled vault delays one caller per refresh, not
// all of them. Only callers with no value to fall back on wait. ErrNotFound is never
// masked by a stale value once the refetch reports it: a deleted secret is reported as
// deleted. Fetches() counts calls to the underlying source.
//
// The caller that starts a refresh runs it on its own context and waits for it, so a
// rotation or deletion is seen by the first caller after the TTL. The alternative, that
// caller also serving the old value while a background fetch with a detached, time-bounded
// context refreshes, would cost a goroutine and a second context policy for a delay that
// KeyVaultSource's bounded retries already cap at seconds.
type Cached struct {
	src     Source
	ttl     time.Duration
	now     func() time.Time
	fetches atomic.Int64

	mu      sync.Mutex
	entries map[string]*entry
}

var _ Source = (*Cached)(nil)

// entry is the cache state of one name. All fields are guarded by Cached.mu.
type entry struct {
	value    []byte
	hasValue bool
	fresh    time.Time // the value is served without a fetch until this instant
	inflight *fetch
}

// fetch is one call to the underlying source, shared by every caller that arrives while
// it runs. value and err are written before done is closed and only read after.
type fetch struct {
	done  chan struct{}
	value []byte
	err   error
	// leaderCanceled is set when the fetch failed only because the context of the caller
	// that ran it ended; the waiters' own contexts may still be live, so they retry
	// instead of inheriting someone else's cancellation.
	leaderCanceled bool
	// waiters counts callers waiting on this fetch (not those served a stale value
	// meanwhile); guarded by Cached.mu. Only tests read it.
	waiters int
}

// NewCached returns a cache over src that keeps each value for ttl. now is the clock
// (nil means time.Now); tests pass a fake one. A ttl <= 0 caches nothing but still
// coalesces concurrent fetches (every caller waits for the shared fetch; the previous
// value is only a fallback when it fails).
func NewCached(src Source, ttl time.Duration, now func() time.Time) *Cached {
	if now == nil {
		now = time.Now
	}
	return &Cached{src: src, ttl: ttl, now: now, entries: map[string]*entry{}}
}

// Fetches returns how many times the underlying source has been called.
func (c *Cached) Fetches() int64 { return c.fetches.Load() }

// Secret returns the cached value of name, fetching it when absent or older than the TTL.
// The returned slice is the caller's own copy: zeroing it does not damage the cache.
func (c *Cached) Secret(ctx context.Context, name string) ([]byte, error) {
	for {
		c.mu.Lock()
		e := c.entries[name]
		if e == nil {
			e = &entry{}
			c.entries[name] = e
		}
		if e.hasValue && c.now().Before(e.fresh) {
			v := bytes.Clone(e.value)
			c.mu.Unlock()
			return v, nil
		}
		if f := e.inflight; f != nil {
			if e.hasValue && c.ttl > 0 {
				// Stale-while-revalidate: the refresh's leader waits for it; everyone
				// else keeps the previous value until it settles. If the refresh finds
				// the secret deleted, the entry goes and later callers see ErrNotFound.
				// A ttl <= 0 promises no caching, so those callers share the fetch.
				v := bytes.Clone(e.value)
				c.mu.Unlock()
				return v, nil
			}
			f.waiters++
			c.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if f.leaderCanceled && ctx.Err() == nil {
				continue
			}
			return bytes.Clone(f.value), f.err
		}
		f := &fetch{done: make(chan struct{})}
		e.inflight = f
		c.mu.Unlock()

		c.run(ctx, name, e, f)
		return bytes.Clone(f.value), f.err
	}
}

// run calls the source for name and settles e and f. It closes f.done even if the source
// panics, so waiters are never stranded.
func (c *Cached) run(ctx context.Context, name string, e *entry, f *fetch) {
	var (
		v   []byte
		err = fmt.Errorf("secret %q: source panicked", name)
	)
	defer func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		defer close(f.done)
		e.inflight = nil
		now := c.now()
		switch {
		case err == nil:
			e.value, e.hasValue, e.fresh = v, true, now.Add(c.ttl)
			f.value = v
		case errors.Is(err, ErrNotFound):
			// Forget the old value: a secret that was deleted must not keep working.
			if c.entries[name] == e {
				delete(c.entries, name)
			}
			f.err = err
		case e.hasValue:
			if ctx.Err() == nil {
				// A real failure, not our caller giving up: wait before trying again.
				e.fresh = now.Add(min(c.ttl, maxStaleRetry))
			}
			slog.Default().WarnContext(ctx, "secret refresh failed, serving the cached value",
				"secret", name, "err", err)
			f.value = e.value
		default:
			// Nothing to fall back on; errors are not cached, so drop the empty entry
			// rather than keep one per name that ever failed.
			if c.entries[name] == e {
				delete(c.entries, name)
			}
			f.err = err
			f.leaderCanceled = ctx.Err() != nil
		}
	}()
	c.fetches.Add(1)
	start := time.Now()
	v, err = c.src.Secret(ctx, name)
	v = bytes.Clone(v)
	// Never the value: the name, how long the source took, and whether it failed.
	slog.Default().DebugContext(ctx, "secret fetched from the source", "secret", name,
		"took", time.Since(start), "ok", err == nil)
}
