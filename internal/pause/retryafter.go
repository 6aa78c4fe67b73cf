package pause

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ParseRetryAfter reads a Retry-After header (RFC 9110): delay-seconds, or an HTTP-date
// taken relative to now. The result is within [0, limit]; limit keeps an absurd value
// from parking work for days. It reports false, with 0, for an absent, negative or
// unreadable value; "0" and a date already past are read (true) as 0.
func ParseRetryAfter(v string, now time.Time, limit time.Duration) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	limit = max(limit, 0)
	// Out of range, ParseInt answers the int64 bound with the same sign: still a number
	// of seconds, bounded like any other (a huge delay means the limit, not "none").
	if n, err := strconv.ParseInt(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if n < 0 {
			return 0, false
		}
		if n > int64(limit/time.Second) {
			return limit, true
		}
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), limit), true
	}
	return 0, false
}

// FormatRetryAfter writes d as a Retry-After value: whole seconds, rounded up so a
// client never comes back before d has passed, and at least 1.
func FormatRetryAfter(d time.Duration) string {
	secs := int64(d / time.Second)
	if d%time.Second > 0 {
		secs++
	}
	return strconv.FormatInt(max(secs, 1), 10)
}
