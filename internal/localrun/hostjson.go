package localrun

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// HostSettings are the parts of host.json that shape the queue trigger: the same file
// the Functions host reads, so the local runner cannot drift from what Azure does.
type HostSettings struct {
	BatchSize          int32         // extensions.queues.batchSize: messages fetched at once (1..32)
	NewBatchThreshold  int           // extensions.queues.newBatchThreshold: fetch again when in-flight work drops to this
	MaxDequeueCount    int64         // extensions.queues.maxDequeueCount: deliveries before the poison queue
	VisibilityTimeout  time.Duration // extensions.queues.visibilityTimeout: delay before a failed message is retried
	MaxPollingInterval time.Duration // extensions.queues.maxPollingInterval: longest idle wait between polls
	FunctionTimeout    time.Duration // functionTimeout: the longest one invocation may hold a message
}

// Defaults of the Functions host (queue extension 5.x) for settings host.json leaves out.
const (
	defaultBatchSize          = 16
	defaultMaxDequeueCount    = 5
	defaultMaxPollingInterval = time.Minute
	defaultFunctionTimeout    = 5 * time.Minute
	maxHostJSONBytes          = 1 << 20
)

// ParseHostJSON reads the queue settings from a host.json document, applying the host's
// defaults to what is absent and refusing values the host would refuse.
func ParseHostJSON(b []byte) (HostSettings, error) {
	if len(b) > maxHostJSONBytes {
		return HostSettings{}, fmt.Errorf("host.json: larger than %d bytes", maxHostJSONBytes)
	}
	var doc struct {
		FunctionTimeout *string `json:"functionTimeout"`
		Extensions      struct {
			Queues struct {
				BatchSize          *int32  `json:"batchSize"`
				NewBatchThreshold  *int    `json:"newBatchThreshold"`
				MaxDequeueCount    *int64  `json:"maxDequeueCount"`
				VisibilityTimeout  *string `json:"visibilityTimeout"`
				MaxPollingInterval *string `json:"maxPollingInterval"`
			} `json:"queues"`
		} `json:"extensions"`
	}
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&doc); err != nil {
		return HostSettings{}, fmt.Errorf("host.json: %w", err)
	}
	q := doc.Extensions.Queues
	h := HostSettings{
		BatchSize:          defaultBatchSize,
		MaxDequeueCount:    defaultMaxDequeueCount,
		MaxPollingInterval: defaultMaxPollingInterval,
		FunctionTimeout:    defaultFunctionTimeout,
	}
	if q.BatchSize != nil {
		if *q.BatchSize < 1 || *q.BatchSize > 32 {
			return HostSettings{}, fmt.Errorf("host.json: extensions.queues.batchSize %d outside [1, 32]", *q.BatchSize)
		}
		h.BatchSize = *q.BatchSize
	}
	h.NewBatchThreshold = int(h.BatchSize) / 2 // the host's default
	if q.NewBatchThreshold != nil {
		if *q.NewBatchThreshold < 0 || *q.NewBatchThreshold > 1000 {
			return HostSettings{}, fmt.Errorf("host.json: extensions.queues.newBatchThreshold %d outside [0, 1000]", *q.NewBatchThreshold)
		}
		h.NewBatchThreshold = *q.NewBatchThreshold
	}
	if q.MaxDequeueCount != nil {
		if *q.MaxDequeueCount < 1 || *q.MaxDequeueCount > 1000 {
			return HostSettings{}, fmt.Errorf("host.json: extensions.queues.maxDequeueCount %d outside [1, 1000]", *q.MaxDequeueCount)
		}
		h.MaxDequeueCount = *q.MaxDequeueCount
	}
	for _, f := range []struct {
		name string
		v    *string
		dst  *time.Duration
		max  time.Duration
	}{
		{"extensions.queues.visibilityTimeout", q.VisibilityTimeout, &h.VisibilityTimeout, 7 * 24 * time.Hour},
		{"extensions.queues.maxPollingInterval", q.MaxPollingInterval, &h.MaxPollingInterval, 7 * 24 * time.Hour},
		{"functionTimeout", doc.FunctionTimeout, &h.FunctionTimeout, 24 * time.Hour},
	} {
		if f.v == nil {
			continue
		}
		d, err := ParseTimeSpan(*f.v)
		if err != nil || d > f.max {
			return HostSettings{}, fmt.Errorf("host.json: %s %q is not a timespan in [00:00:00, %v]", f.name, *f.v, f.max)
		}
		*f.dst = d
	}
	if h.MaxPollingInterval < 100*time.Millisecond {
		return HostSettings{}, errors.New("host.json: extensions.queues.maxPollingInterval must be at least 00:00:00.1")
	}
	if h.FunctionTimeout <= 0 {
		return HostSettings{}, errors.New("host.json: functionTimeout must be positive")
	}
	return h, nil
}

// ParseTimeSpan parses a .NET TimeSpan as host.json writes it: [-][d.]hh:mm:ss[.fffffff].
// Negative spans are refused: none of the settings takes one.
func ParseTimeSpan(s string) (time.Duration, error) {
	bad := fmt.Errorf("timespan %q: want [d.]hh:mm:ss[.fffffff]", s)
	if len(s) > 32 {
		return 0, bad
	}
	var days int64
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return 0, bad
	}
	if d, h, ok := strings.Cut(parts[0], "."); ok {
		if len(d) == 0 || len(d) > 5 || !digits(d) {
			return 0, bad
		}
		days, _ = strconv.ParseInt(d, 10, 64)
		parts[0] = h
	}
	secs, frac, hasFrac := strings.Cut(parts[2], ".")
	var hms [3]int64
	for i, p := range []string{parts[0], parts[1], secs} {
		if len(p) == 0 || len(p) > 2 || !digits(p) {
			return 0, bad
		}
		hms[i], _ = strconv.ParseInt(p, 10, 64)
	}
	hours, minutes, seconds := hms[0], hms[1], hms[2]
	if hours > 23 || minutes > 59 || seconds > 59 {
		return 0, bad
	}
	var fracNanos int64
	if hasFrac {
		if len(frac) == 0 || len(frac) > 7 || !digits(frac) {
			return 0, bad
		}
		fracNanos, _ = strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
	}
	d := time.Duration(days)*24*time.Hour + time.Duration(hours)*time.Hour +
		time.Duration(minutes)*time.Minute + time.Duration(seconds)*time.Second + time.Duration(fracNanos)
	return d, nil
}

func digits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// LoadHostJSON finds host.json in dir or the nearest parent holding one (the app root
// under the Functions host and make run; the repository root from a test's folder) and
// parses it. It returns the path it read, for the start-up log line.
func LoadHostJSON(dir string) (HostSettings, string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return HostSettings{}, "", err
	}
	for d := abs; ; d = filepath.Dir(d) {
		p := filepath.Join(d, "host.json")
		b, err := os.ReadFile(p)
		if err == nil {
			h, err := ParseHostJSON(b)
			return h, p, err
		}
		if !errors.Is(err, os.ErrNotExist) {
			return HostSettings{}, p, err
		}
		if filepath.Dir(d) == d {
			return HostSettings{}, "", fmt.Errorf("no host.json in %s or its parents", abs)
		}
	}
}
