package localrun

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/testenv"
)

func TestParseTimeSpan(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want time.Duration
		err  bool
	}{
		{"ok/seconds", "00:00:30", 30 * time.Second, false},
		{"ok/hours", "01:02:03", time.Hour + 2*time.Minute + 3*time.Second, false},
		{"ok/days", "1.00:00:00", 24 * time.Hour, false},
		{"ok/fraction", "00:00:00.5", 500 * time.Millisecond, false},
		{"ok/seven-digits", "00:00:01.0000001", time.Second + 100*time.Nanosecond, false},
		{"fail/empty", "", 0, true},
		{"fail/two-parts", "00:30", 0, true},
		{"fail/minutes-60", "00:60:00", 0, true},
		{"fail/hours-24", "24:00:00", 0, true},
		{"fail/negative", "-00:00:01", 0, true},
		{"fail/sign-in-field", "00:+1:00", 0, true},
		{"fail/eight-digit-fraction", "00:00:00.00000001", 0, true},
		{"fail/empty-fraction", "00:00:00.", 0, true},
		{"fail/go-duration", "30s", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTimeSpan(tc.in)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("ParseTimeSpan(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
			}
		})
	}
}

func TestParseHostJSON(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want HostSettings
		err  string
	}{
		{"ok/defaults", `{"version":"2.0"}`, HostSettings{BatchSize: 16, NewBatchThreshold: 8, MaxDequeueCount: 5,
			MaxPollingInterval: time.Minute, FunctionTimeout: 5 * time.Minute}, ""},
		{"ok/all", `{"functionTimeout":"00:10:00","extensions":{"queues":{"batchSize":4,"newBatchThreshold":1,
			"maxDequeueCount":3,"visibilityTimeout":"00:00:10","maxPollingInterval":"00:00:02"}}}`,
			HostSettings{BatchSize: 4, NewBatchThreshold: 1, MaxDequeueCount: 3, VisibilityTimeout: 10 * time.Second,
				MaxPollingInterval: 2 * time.Second, FunctionTimeout: 10 * time.Minute}, ""},
		{"ok/threshold-follows-batch", `{"extensions":{"queues":{"batchSize":10}}}`, HostSettings{BatchSize: 10,
			NewBatchThreshold: 5, MaxDequeueCount: 5, MaxPollingInterval: time.Minute, FunctionTimeout: 5 * time.Minute}, ""},
		{"fail/not-json", `{`, HostSettings{}, "host.json"},
		{"fail/batch-33", `{"extensions":{"queues":{"batchSize":33}}}`, HostSettings{}, "batchSize"},
		{"fail/dequeue-0", `{"extensions":{"queues":{"maxDequeueCount":0}}}`, HostSettings{}, "maxDequeueCount"},
		{"fail/visibility-go-style", `{"extensions":{"queues":{"visibilityTimeout":"30s"}}}`, HostSettings{}, "visibilityTimeout"},
		{"fail/poll-zero", `{"extensions":{"queues":{"maxPollingInterval":"00:00:00"}}}`, HostSettings{}, "maxPollingInterval"},
		{"fail/timeout-zero", `{"functionTimeout":"00:00:00"}`, HostSettings{}, "functionTimeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseHostJSON([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one naming %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// TestRepositoryHostJSON: the runner reads the repository's own host.json, found from a
// folder below it as the e2e tests' handler does, with the values README documents.
func TestRepositoryHostJSON(t *testing.T) {
	h, path, err := LoadHostJSON(filepath.Join(testenv.ModuleRoot(), "internal", "localrun"))
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(testenv.ModuleRoot(), "host.json") {
		t.Errorf("read %s, want the module root's host.json", path)
	}
	want := HostSettings{BatchSize: 32, NewBatchThreshold: 480, MaxDequeueCount: 5, VisibilityTimeout: 30 * time.Second,
		MaxPollingInterval: 2 * time.Second, FunctionTimeout: 5 * time.Minute}
	if h != want {
		t.Errorf("host.json settings %+v, want %+v (README and docs/benchmarks.md explain these)", h, want)
	}
}

func TestLoadHostJSONMissing(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := LoadHostJSON(dir); err == nil || !strings.Contains(err.Error(), "no host.json") {
		t.Errorf("err = %v, want no host.json", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "host.json"), []byte(`{"extensions":{"queues":{"batchSize":0}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadHostJSON(dir); err == nil || !strings.Contains(err.Error(), "batchSize") {
		t.Errorf("err = %v, want the bad batchSize named", err)
	}
}

func FuzzParseHostJSON(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join(testenv.ModuleRoot(), "host.json")); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"functionTimeout":"1.02:03:04.5","extensions":{"queues":{"batchSize":1}}}`))
	f.Add([]byte(`{"extensions":{"queues":{"visibilityTimeout":"99:99:99"}}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHostJSON(b)
		if err != nil {
			return
		}
		if h.BatchSize < 1 || h.BatchSize > 32 || h.MaxDequeueCount < 1 || h.FunctionTimeout <= 0 ||
			h.MaxPollingInterval <= 0 || h.VisibilityTimeout < 0 || h.NewBatchThreshold < 0 {
			t.Fatalf("accepted out-of-range settings %+v", h)
		}
	})
}

func FuzzParseTimeSpan(f *testing.F) {
	for _, s := range []string{"00:00:30", "1.00:00:00", "00:00:00.1234567", "-1:00:00", "::", "1.:00:00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseTimeSpan(s)
		if err == nil && (d < 0 || d > 100000*24*time.Hour) {
			t.Fatalf("ParseTimeSpan(%q) = %v", s, d)
		}
	})
}
