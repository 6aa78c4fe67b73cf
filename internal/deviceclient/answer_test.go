package deviceclient

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

const opID = "0e8e5b9c-2d7a-4d6e-9f65-3f0a3c1f2b11"

const pemMark = "-----BEGIN CERTIFICATE-----"

func TestParseAnswer(t *testing.T) {
	assigned := `{"operationId":"` + opID + `","status":"assigned","deviceId":"dev-1","host":"hub.example.net","certificate":"` + pemMark + `","rootCaCertificate":"` + pemMark + `"}`
	tests := []struct {
		name       string
		status     int
		retryAfter string
		body       string
		check      func(t *testing.T, r *Result, err error)
	}{
		{"ok/assigning", 202, "3", `{"operationId":"` + opID + `","status":"assigning"}`, func(t *testing.T, r *Result, err error) {
			if err != nil || r.Status != StatusAssigning || r.OperationID != opID || r.RetryAfter != 3*time.Second || r.Credentials != nil {
				t.Errorf("%+v, %v", r, err)
			}
		}},
		{"ok/assigning-without-retry-after", 202, "", `{"operationId":"` + opID + `","status":"assigning"}`, func(t *testing.T, r *Result, err error) {
			if err != nil || r.RetryAfter != DefaultRetryAfter {
				t.Errorf("%+v, %v", r, err)
			}
		}},
		// The service's Retry-After is bounded by MaxRetryAfter, even beyond int64
		// (pause.ParseRetryAfter's own cases are in internal/pause).
		{"ok/assigning-with-absurd-retry-after", 202, "99999999999999999999999", `{"operationId":"` + opID + `","status":"assigning"}`, func(t *testing.T, r *Result, err error) {
			if err != nil || r.RetryAfter != MaxRetryAfter {
				t.Errorf("%+v, %v", r, err)
			}
		}},
		{"ok/assigning-with-date-far-ahead", 202, time.Now().Add(time.Hour).Format(http.TimeFormat), `{"operationId":"` + opID + `","status":"assigning"}`, func(t *testing.T, r *Result, err error) {
			if err != nil || r.RetryAfter != MaxRetryAfter {
				t.Errorf("%+v, %v", r, err)
			}
		}},
		{"fail/throttled-with-garbage-retry-after-is-final", 429, "soon", `{"error":{"code":"too_many_requests","message":"later"}}`, func(t *testing.T, r *Result, err error) {
			if ae := (*APIError)(nil); !errors.As(err, &ae) || ae.Temporary() || ae.RetryAfterSent || ae.RetryAfter != DefaultRetryAfter {
				t.Errorf("%#v", err)
			}
		}},
		{"ok/assigned", 200, "", assigned, func(t *testing.T, r *Result, err error) {
			if err != nil || r.Status != StatusAssigned || r.Credentials == nil || r.Credentials.DeviceID != "dev-1" || r.Credentials.Host != "hub.example.net" {
				t.Errorf("%+v, %v", r, err)
			}
		}},
		{"ok/failed", 200, "", `{"operationId":"` + opID + `","status":"failed","error":{"code":"dps_registration_failed","message":"DPS\u001b[31m said no."}}`, func(t *testing.T, r *Result, err error) {
			if err != nil || r.Failure == nil || r.Failure.Code != "dps_registration_failed" || r.Failure.Message != "DPS [31m said no." {
				t.Errorf("%+v %+v, %v", r, r.Failure, err)
			}
		}},
		{"ok/failed-without-reason", 200, "", `{"operationId":"` + opID + `","status":"failed"}`, func(t *testing.T, r *Result, err error) {
			if err != nil || r.Failure == nil || r.Failure.Code != "unknown" {
				t.Errorf("%+v, %v", r, err)
			}
		}},
		{"fail/api-error", 400, "", `{"error":{"code":"weak_key","message":"The RSA key is 1024 bits."}}`, func(t *testing.T, r *Result, err error) {
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != 400 || ae.Code != "weak_key" || ae.Temporary() || err.Error() != "HTTP 400 weak_key: The RSA key is 1024 bits." {
				t.Errorf("%#v", err)
			}
		}},
		{"fail/unavailable-is-temporary", 503, "7", `{"error":{"code":"service_unavailable","message":"later"}}`, func(t *testing.T, r *Result, err error) {
			var ae *APIError
			if !errors.As(err, &ae) || !ae.Temporary() || ae.RetryAfter != 7*time.Second || !ae.RetryAfterSent {
				t.Errorf("%#v", err)
			}
		}},
		{"fail/throttled-with-retry-after-is-temporary", 429, "2", `{"error":{"code":"too_many_requests","message":"later"}}`, func(t *testing.T, r *Result, err error) {
			if ae := (*APIError)(nil); !errors.As(err, &ae) || !ae.Temporary() {
				t.Errorf("%#v", err)
			}
		}},
		{"fail/throttled-without-retry-after-is-final", 429, "", `{"error":{"code":"too_many_requests","message":"later"}}`, func(t *testing.T, r *Result, err error) {
			if ae := (*APIError)(nil); !errors.As(err, &ae) || ae.Temporary() || ae.RetryAfter != DefaultRetryAfter {
				t.Errorf("%#v", err)
			}
		}},
		{"fail/not-the-device-api", 502, "", `<html>bad gateway</html>`, func(t *testing.T, r *Result, err error) {
			if err == nil || err.Error() != "HTTP 502 (Bad Gateway) with no device API answer" {
				t.Errorf("%v", err)
			}
		}},
		{"fail/200-while-assigning", 200, "", `{"operationId":"` + opID + `","status":"assigning"}`, func(t *testing.T, r *Result, err error) {
			if ae := (*APIError)(nil); !errors.As(err, &ae) || ae.Status != 200 {
				t.Errorf("%v", err)
			}
		}},
		{"fail/operation-id-with-a-path", 200, "", `{"operationId":"../../x","status":"assigned"}`, func(t *testing.T, r *Result, err error) {
			if me := (*MalformedError)(nil); !errors.As(err, &me) || !strings.Contains(err.Error(), "no valid operationId") {
				t.Errorf("%v", err)
			}
		}},
		{"fail/hostile-host", 200, "", strings.Replace(assigned, "hub.example.net", "x'; rm -rf / #", 1), func(t *testing.T, r *Result, err error) {
			if err == nil || !strings.Contains(err.Error(), "no usable deviceId or host") {
				t.Errorf("%v", err)
			}
		}},
		{"fail/no-pem", 200, "", strings.Replace(assigned, `"certificate":"`+pemMark, `"certificate":"x`, 1), func(t *testing.T, r *Result, err error) {
			if err == nil || !strings.Contains(err.Error(), "lacks a PEM certificate") {
				t.Errorf("%v", err)
			}
		}},
		{"fail/too-large", 200, "", `{"operationId":"` + strings.Repeat(" ", MaxAnswerSize) + `"}`, func(t *testing.T, r *Result, err error) {
			if err == nil || !strings.Contains(err.Error(), "larger than") {
				t.Errorf("%v", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseAnswer(tc.status, tc.retryAfter, []byte(tc.body), time.Now())
			if (err == nil) == (r == nil) {
				t.Fatalf("result %v with error %v", r, err)
			}
			tc.check(t, r, err)
		})
	}
}

func TestClean(t *testing.T) {
	if got := clean("a\nb\x1b[2Jc\u0085", 100); got != "a b [2Jc " {
		t.Errorf("clean = %q", got)
	}
	// Cut between runes, never inside one.
	if got := clean("ééé", 3); got != "é…" {
		t.Errorf("clean cut = %q", got)
	}
}
