package deviceclient

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/iotprov/iotprov/internal/testenv"
)

// FuzzParseAnswer feeds the device's parser whatever a hostile or broken service might
// send: it must not panic, and what it accepts must be safe in a URL path, a terminal and
// the shell assignments `iotprov device register` prints.
func FuzzParseAnswer(f *testing.F) {
	f.Add(202, "1", []byte(`{"operationId":"`+opID+`","status":"assigning"}`))
	f.Add(200, "", []byte(`{"operationId":"`+opID+`","status":"assigned","deviceId":"d","host":"h","certificate":"-----BEGIN CERTIFICATE-----","rootCaCertificate":"-----BEGIN CERTIFICATE-----"}`))
	f.Add(200, "", []byte(`{"operationId":"`+opID+`","status":"failed","error":{"code":"x","message":"y"}}`))
	f.Add(400, "", []byte(`{"error":{"code":"weak_key","message":"The RSA key is 1024 bits."}}`))
	f.Add(503, "5", []byte(`{"error":{"code":"service_unavailable","message":"later"}}`))
	f.Add(429, "Wed, 21 Oct 2015 07:28:00 GMT", []byte(`{"error":{"code":"too_many_requests","message":"\u001b]0;x\u0007"}}`))
	f.Add(200, "", []byte(`{"operationId":"../../x","status":"assigned"}`))
	f.Add(502, "", []byte(`<html>bad gateway</html>`))
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, retryAfter string, body []byte) {
		res, err := parseAnswer(status, retryAfter, body, now)
		if (res == nil) == (err == nil) {
			t.Fatalf("result %v with error %v", res, err)
		}
		if err != nil {
			if strings.ContainsAny(err.Error(), "\x00\x1b\n\r") {
				t.Fatalf("error carries control characters: %q", err)
			}
			if ae, ok := err.(*APIError); ok && (ae.RetryAfter < 0 || ae.RetryAfter > MaxRetryAfter) {
				t.Fatalf("Retry-After %s out of bounds", ae.RetryAfter)
			}
			return
		}
		if res.RetryAfter < 0 || res.RetryAfter > MaxRetryAfter {
			t.Fatalf("Retry-After %s out of bounds", res.RetryAfter)
		}
		if !validOperationID(res.OperationID) || strings.ContainsAny(res.OperationID, "/'\n%?#") {
			t.Fatalf("accepted operation ID %q", res.OperationID)
		}
		switch res.Status {
		case StatusAssigning:
			if status != 202 {
				t.Fatalf("assigning on HTTP %d", status)
			}
		case StatusAssigned:
			c := res.Credentials
			if c == nil || status != 200 {
				t.Fatalf("assigned without credentials or on HTTP %d", status)
			}
			for _, v := range []string{c.DeviceID, c.Host} {
				if v == "" || strings.ContainsAny(v, "'\n\x00 \x1b") {
					t.Fatalf("unsafe value %q", v)
				}
			}
		case StatusFailed:
			if res.Failure == nil || res.Failure.Code == "" || strings.ContainsAny(res.Failure.Code+res.Failure.Message, "\x00\x1b\n") {
				t.Fatalf("failure %+v", res.Failure)
			}
		default:
			t.Fatalf("status %q", res.Status)
		}
	})
}

// FuzzVerifyCredentials: decoding and verifying any assigned answer must not panic, and
// nothing but a chain to the test root for dev-1, with its key, verifies.
func FuzzVerifyCredentials(f *testing.F) {
	c := newTestCA(f)
	key, keyPEM := testenv.NewDeviceKey(f)
	good, _ := json.Marshal(c.answer(f, "dev-1", key.Public(), keyPEM))
	f.Add(good)
	f.Add([]byte(`{"operationId":"` + opID + `","status":"assigned","deviceId":"dev-1","host":"h","certificate":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n","rootCaCertificate":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}`))
	f.Add([]byte(`{"operationId":"` + opID + `","status":"failed","error":{"code":"dps_registration_failed"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		res, err := parseAnswer(200, "", b, time.Now())
		if err != nil {
			return
		}
		if err := VerifyCredentials(res, "dev-1", c.roots, nil); err == nil {
			if res.Credentials.DeviceID != "dev-1" || res.Credentials.PrivateKey == "" {
				t.Fatalf("verified %+v", res.Credentials)
			}
		}
		_ = VerifyCredentials(res, "", nil, key) // the CSR path too: no panic
	})
}
