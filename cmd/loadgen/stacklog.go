package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"sync"
)

// stackLog receives the local stack's output (one line per event, prefixed with the
// process name): it keeps all of it in a file and counts what the bench reports from it
// — the worker's deferrals (DPS 429s, 5xx and timeouts it re-enqueued) and the DPS
// emulator's counters, which it logs when it stops.
type stackLog struct {
	mu        sync.Mutex
	w         io.Writer
	partial   []byte
	deferrals int64
	dps       *dpsStats
}

// dpsStats are the emulator's counters from its "dpsemu stopped" line.
type dpsStats struct {
	Registrations int64 `json:"registrations"`
	Assigned      int64 `json:"assigned"`
	Throttled     int64 `json:"throttled"`
	Faults        int64 `json:"faults"`
	Polls         int64 `json:"polls"`
}

func (l *stackLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w != nil {
		_, _ = l.w.Write(b)
	}
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.line(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	return len(b), nil
}

// line looks at one line of the stack's output; callers hold l.mu.
func (l *stackLog) line(s string) {
	proc, rest, ok := strings.Cut(s, "| ")
	if !ok {
		return
	}
	switch strings.TrimSpace(proc) {
	case "handler":
		if strings.Contains(rest, `"msg":"provision: deferred"`) {
			l.deferrals++
		}
	case "dpsemu":
		if st, ok := parseDPSStopped(rest); ok {
			l.dps = st
		}
	}
}

// parseDPSStopped reads the emulator's last log line (JSON, msg "dpsemu stopped").
func parseDPSStopped(s string) (*dpsStats, bool) {
	if !strings.Contains(s, "dpsemu stopped") {
		return nil, false
	}
	var rec struct {
		Msg string `json:"msg"`
		dpsStats
	}
	if json.Unmarshal([]byte(s), &rec) != nil || rec.Msg != "dpsemu stopped" {
		return nil, false
	}
	return &rec.dpsStats, true
}

func (l *stackLog) counts() (deferrals int64, dps *dpsStats) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deferrals, l.dps
}
