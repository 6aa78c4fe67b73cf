package pause

import (
	"net/http"
	"testing"
	"time"
)

// The limits the callers use: the device client's MaxRetryAfter and the DPS client's cap.
const (
	deviceLimit = 5 * time.Minute
	dpsLimit    = time.Hour
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name  string
		in    string
		limit time.Duration
		want  time.Duration
		ok    bool
	}{
		{"ok/seconds", "2", deviceLimit, 2 * time.Second, true},
		{"ok/spaces", " 3 ", deviceLimit, 3 * time.Second, true},
		{"ok/spaces, a minute", " 60 ", dpsLimit, time.Minute, true},
		{"ok/zero", "0", deviceLimit, 0, true},
		{"ok/bounded", "99999999999", deviceLimit, deviceLimit, true},
		{"ok/bounded at the DPS cap", "999999999999", dpsLimit, dpsLimit, true},
		{"ok/beyond-int64", "99999999999999999999999", deviceLimit, deviceLimit, true},
		// dps's own copy answered 0 here (it dropped strconv.ErrRange): the cap is right.
		{"ok/beyond-int64 at the DPS cap", "99999999999999999999", dpsLimit, dpsLimit, true},
		{"ok/date-ahead", now.Add(90 * time.Second).Format(http.TimeFormat), deviceLimit, 90 * time.Second, true},
		{"ok/date-ahead under the DPS cap", now.Add(90 * time.Second).Format(http.TimeFormat), dpsLimit, 90 * time.Second, true},
		{"ok/date-far-ahead", now.Add(time.Hour).Format(http.TimeFormat), deviceLimit, deviceLimit, true},
		{"ok/past-date", "Wed, 21 Oct 2015 07:28:00 GMT", deviceLimit, 0, true},
		{"ok/past date an hour ago", now.Add(-time.Hour).Format(http.TimeFormat), dpsLimit, 0, true},
		{"ok/limit not in whole seconds", "10", 1500 * time.Millisecond, 1500 * time.Millisecond, true},
		{"fail/empty", "", deviceLimit, 0, false},
		{"fail/negative", "-1", deviceLimit, 0, false},
		{"fail/negative five", "-5", dpsLimit, 0, false},
		// The DPS client's cases, at its cap; it takes any (0, false) or (0, true) as "none".
		{"ok/dps seconds", "3", dpsLimit, 3 * time.Second, true},
		{"ok/dps zero", "0", dpsLimit, 0, true},
		{"fail/dps empty", "", dpsLimit, 0, false},
		{"fail/dps fraction", "1.5", dpsLimit, 0, false},
		{"fail/dps garbage", "soon", dpsLimit, 0, false},
		{"fail/very-negative", "-99999999999999999999999", deviceLimit, 0, false},
		{"fail/garbage", "soon", deviceLimit, 0, false},
		{"fail/fraction", "1.5", deviceLimit, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got, ok := ParseRetryAfter(tc.in, now, tc.limit); got != tc.want || ok != tc.ok {
				t.Errorf("ParseRetryAfter(%q, %v) = %v, %v; want %v, %v", tc.in, tc.limit, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestFormatRetryAfter(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{time.Second, "1"},
		{3 * time.Second, "3"},
		{1500 * time.Millisecond, "2"}, // rounded up: rounding down invites a refused retry
		{time.Nanosecond, "1"},
		{59*time.Second + time.Millisecond, "60"},
		{time.Hour, "3600"},
		{0, "1"}, // never "come back at once"
		{-time.Second, "1"},
	}
	now := time.Now()
	for _, tc := range tests {
		got := FormatRetryAfter(tc.d)
		if got != tc.want {
			t.Errorf("FormatRetryAfter(%v) = %q, want %q", tc.d, got, tc.want)
		}
		// What is written reads back as at least d: a client never comes back early.
		if back, ok := ParseRetryAfter(got, now, 24*time.Hour); !ok || back < tc.d {
			t.Errorf("ParseRetryAfter(FormatRetryAfter(%v)) = %v, %v", tc.d, back, ok)
		}
	}
}

// FuzzParseRetryAfter: whatever a server sends, the wait is within [0, limit], and a
// value that does not parse gives no wait.
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"2", "3", "0", "", "-1", "Wed, 21 Oct 2015 07:28:00 GMT", "1e9",
		"99999999999999999999", " 7 ", "x"} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		for _, limit := range []time.Duration{deviceLimit, dpsLimit} {
			d, ok := ParseRetryAfter(s, now, limit)
			if d < 0 || d > limit || !ok && d != 0 {
				t.Errorf("ParseRetryAfter(%q, %v) = %v, %v", s, limit, d, ok)
			}
		}
	})
}
