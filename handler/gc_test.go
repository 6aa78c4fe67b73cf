package main

import (
	"math"
	"runtime/debug"
	"testing"
)

// currentGC reads the collector's settings without changing them.
func currentGC() (percent int, limit int64) {
	percent = debug.SetGCPercent(-1)
	debug.SetGCPercent(percent)
	return percent, debug.SetMemoryLimit(-1)
}

func TestTuneGC(t *testing.T) {
	prevPercent, prevLimit := currentGC()
	t.Cleanup(func() { debug.SetGCPercent(prevPercent); debug.SetMemoryLimit(prevLimit) })

	tests := []struct {
		name        string
		env         map[string]string
		wantPercent int
		wantLimit   int64
	}{
		{name: "ok/defaults applied", env: nil, wantPercent: gcPercent, wantLimit: memoryLimit},
		{name: "ok/GOGC from the environment wins", env: map[string]string{"GOGC": "150"}, wantPercent: 150, wantLimit: memoryLimit},
		{name: "ok/GOMEMLIMIT from the environment wins", env: map[string]string{"GOMEMLIMIT": "1GiB"}, wantPercent: gcPercent, wantLimit: math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// What the runtime would have read from the environment at start.
			debug.SetGCPercent(150)
			debug.SetMemoryLimit(math.MaxInt64)
			tuneGC(func(k string) string { return tt.env[k] })
			if p, l := currentGC(); p != tt.wantPercent || l != tt.wantLimit {
				t.Errorf("GOGC %d, memory limit %d; want %d, %d", p, l, tt.wantPercent, tt.wantLimit)
			}
		})
	}
}
