// Package pause is the one context-aware wait the service, its tools and its tests share:
// a poll interval, a Retry-After or a back-off that ends early when the caller gives up.
//
// It also reads and writes the Retry-After header (ParseRetryAfter, FormatRetryAfter), so
// the DPS client, the device client, the service and the DPS emulator bound and round
// it the same way.
package pause

import (
	"context"
	"time"
)

// For waits d, or less if ctx ends first: nil once d has passed, ctx.Err() if ctx ended.
// A d <= 0 returns ctx.Err() at once.
func For(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
