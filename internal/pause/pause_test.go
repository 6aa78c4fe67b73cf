package pause

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	live := context.Background()
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		d       time.Duration
		wantErr error
		atLeast time.Duration
	}{
		{name: "ok/waits d", ctx: live, d: 30 * time.Millisecond, atLeast: 30 * time.Millisecond},
		{name: "ok/zero returns at once", ctx: live, d: 0},
		{name: "fail/ended context", ctx: ended, d: time.Hour, wantErr: context.Canceled},
		{name: "fail/ended context, zero wait", ctx: ended, d: 0, wantErr: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := For(tt.ctx, tt.d)
			took := time.Since(start)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if took < tt.atLeast || (tt.wantErr != nil && took > time.Second) {
				t.Errorf("returned after %v", took)
			}
		})
	}
	// A context that ends during the wait cuts it short.
	ctx, stop := context.WithTimeout(live, 20*time.Millisecond)
	defer stop()
	start := time.Now()
	if err := For(ctx, time.Hour); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Errorf("err = %v after %v, want DeadlineExceeded at once", err, time.Since(start))
	}
}
