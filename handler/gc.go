package main

import "runtime/debug"

// The handler's live heap is small (a few MiB idle, ~20 MiB under load) and almost all
// of it is short-lived request garbage, so at Go's default GOGC=100 the collector runs
// many times a second under load and takes about a tenth of the CPU. A Flex Consumption
// instance is billed for its configured memory (2 GB by default), not for what the
// process uses, so the handler trades memory it has for CPU it lacks: the heap may grow
// to five times the live heap (peak RSS ~65 → ~120 MiB in `make bench`, handler CPU per
// device about 10 % lower), and a soft limit keeps it well under the smallest (512 MB)
// instance. GOGC and GOMEMLIMIT in the environment still win, as Go documents.
const (
	gcPercent   = 400
	memoryLimit = 256 << 20
)

// tuneGC applies gcPercent and memoryLimit unless the environment sets its own.
func tuneGC(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
}
