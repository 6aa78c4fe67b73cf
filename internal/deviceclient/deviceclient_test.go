package deviceclient

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// reply is one scripted answer of the fake service.
type reply struct {
	status     int
	retryAfter string
	body       string
}

// fakeService answers the n-th request (from 0) with answer; it records what it saw.
type fakeService struct {
	answer func(n int, r *http.Request, body []byte) reply

	mu     sync.Mutex
	seen   []*http.Request
	bodies []string
}

func (f *fakeService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	n := len(f.seen)
	f.seen = append(f.seen, r)
	f.bodies = append(f.bodies, string(body))
	f.mu.Unlock()
	rep := f.answer(n, r, body)
	if rep.retryAfter != "" {
		w.Header().Set("Retry-After", rep.retryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	_, _ = io.WriteString(w, rep.body)
}

// script answers requests in order; the last reply repeats.
func script(replies ...reply) func(int, *http.Request, []byte) reply {
	return func(n int, _ *http.Request, _ []byte) reply { return replies[min(n, len(replies)-1)] }
}

func answerJSON(a Answer) string {
	b, _ := json.Marshal(a)
	return string(b)
}

var (
	accepted  = reply{202, "0", answerJSON(Answer{OperationID: opID, Status: StatusAssigning})}
	assignedR = reply{200, "", answerJSON(Answer{OperationID: opID, Status: StatusAssigned, DeviceID: "dev-1", Host: "hub.example.net",
		Certificate: pemMark, RootCACertificate: pemMark})}
	failedR = reply{200, "", answerJSON(Answer{OperationID: opID, Status: StatusFailed, Error: &ErrorBody{Code: "dps_registration_failed", Message: "DPS said no."}})}
)

func apiError(status int, retryAfter, code string) reply {
	return reply{status, retryAfter, answerJSON(Answer{Error: &ErrorBody{Code: code, Message: "Because."}})}
}

func newClient(t *testing.T, f *fakeService) *Client {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return &Client{BaseURL: srv.URL + "/", HTTP: srv.Client(), Authorize: func(r *http.Request) error {
		r.Header.Set("Authorization", "SharedAccessSignature sr=dev-1&sig=x&se=1")
		r.Header.Set("Content-Type", "text/plain") // the client's own Content-Type wins
		return nil
	}}
}

func TestRegister(t *testing.T) {
	tests := []struct {
		name   string
		csr    []byte
		answer reply
		check  func(t *testing.T, f *fakeService, id string, wait time.Duration, err error)
	}{
		{"ok/server-generated-key", nil, reply{202, "3", accepted.body}, func(t *testing.T, f *fakeService, id string, wait time.Duration, err error) {
			if err != nil || id != opID || wait != 3*time.Second {
				t.Fatalf("%q %s %v", id, wait, err)
			}
			r := f.seen[0]
			if r.Method != http.MethodPost || r.URL.Path != RegisterPath || f.bodies[0] != "" || r.Header.Get("Content-Type") != "" {
				t.Errorf("request %s %s %q, Content-Type %q", r.Method, r.URL.Path, f.bodies[0], r.Header.Get("Content-Type"))
			}
			if r.Header.Get("Authorization") == "" || r.Header.Get("Accept") != "application/json" {
				t.Errorf("headers %v", r.Header)
			}
		}},
		{"ok/csr", []byte("-----BEGIN CERTIFICATE REQUEST-----\nx\n"), accepted, func(t *testing.T, f *fakeService, id string, wait time.Duration, err error) {
			if err != nil {
				t.Fatal(err)
			}
			var body struct{ CSR string }
			if json.Unmarshal([]byte(f.bodies[0]), &body) != nil || body.CSR != "-----BEGIN CERTIFICATE REQUEST-----\nx\n" {
				t.Errorf("body %q", f.bodies[0])
			}
			if ct := f.seen[0].Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		}},
		{"fail/unauthorized", nil, apiError(401, "", "invalid_credential"), func(t *testing.T, f *fakeService, id string, wait time.Duration, err error) {
			if ae := (*APIError)(nil); !errors.As(err, &ae) || ae.Code != "invalid_credential" || id != "" {
				t.Errorf("%q %v", id, err)
			}
		}},
		{"fail/register-answered-assigned", nil, assignedR, func(t *testing.T, f *fakeService, id string, wait time.Duration, err error) {
			if me := (*MalformedError)(nil); !errors.As(err, &me) {
				t.Errorf("%q %v", id, err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeService{answer: script(tc.answer)}
			id, wait, err := newClient(t, f).Register(context.Background(), tc.csr)
			tc.check(t, f, id, wait, err)
		})
	}
	t.Run("fail/authorize-error-sends-nothing", func(t *testing.T) {
		f := &fakeService{answer: script(accepted)}
		c := newClient(t, f)
		c.Authorize = func(*http.Request) error { return errors.New("no token") }
		if _, _, err := c.Register(context.Background(), nil); err == nil || len(f.seen) != 0 {
			t.Errorf("err %v after %d requests", err, len(f.seen))
		}
	})
}

func TestPoll(t *testing.T) {
	t.Run("ok/assigned", func(t *testing.T) {
		f := &fakeService{answer: script(assignedR)}
		r, err := newClient(t, f).Poll(context.Background(), opID)
		if err != nil || r.Status != StatusAssigned || f.seen[0].Method != http.MethodGet || f.seen[0].URL.Path != RegistrationsPath+opID {
			t.Fatalf("%+v %v", r, err)
		}
	})
	t.Run("fail/answer-for-another-operation", func(t *testing.T) {
		f := &fakeService{answer: script(reply{202, "1", answerJSON(Answer{OperationID: "other-op", Status: StatusAssigning})})}
		if _, err := newClient(t, f).Poll(context.Background(), opID); err == nil || !strings.Contains(err.Error(), `"other-op", not`) {
			t.Fatalf("%v", err)
		}
	})
	t.Run("fail/operation-id-not-the-services", func(t *testing.T) {
		f := &fakeService{answer: script(assignedR)}
		if _, err := newClient(t, f).Poll(context.Background(), "../register"); err == nil || len(f.seen) != 0 {
			t.Fatalf("%v after %d requests", err, len(f.seen))
		}
	})
}

func TestProvision(t *testing.T) {
	tests := []struct {
		name    string
		replies []reply
		opts    ProvisionOptions
		ctx     time.Duration // a deadline for the whole run; 0: none
		check   func(t *testing.T, r *Result, err error, events []Event, took time.Duration)
	}{
		{"ok/assigned-after-polls", []reply{accepted, accepted, accepted, assignedR}, ProvisionOptions{MinPoll: 20 * time.Millisecond},
			0, func(t *testing.T, r *Result, err error, events []Event, took time.Duration) {
				if err != nil || r.Status != StatusAssigned || r.Credentials.Host != "hub.example.net" {
					t.Fatalf("%+v %v", r, err)
				}
				want := []Event{
					{OperationID: opID, Status: StatusAssigning, Wait: 20 * time.Millisecond},
					{OperationID: opID, Poll: 1, Status: StatusAssigning, Wait: 20 * time.Millisecond},
					{OperationID: opID, Poll: 2, Status: StatusAssigning, Wait: 20 * time.Millisecond},
					{OperationID: opID, Poll: 3, Status: StatusAssigned},
				}
				if !equalEvents(events, want) {
					t.Errorf("events\n%+v\nwant\n%+v", events, want)
				}
				if took < 60*time.Millisecond {
					t.Errorf("took %s: MinPoll not honoured", took)
				}
			}},
		{"ok/failed-is-a-result", []reply{accepted, failedR}, ProvisionOptions{},
			0, func(t *testing.T, r *Result, err error, events []Event, took time.Duration) {
				if err != nil || r.Status != StatusFailed || r.Failure.Code != "dps_registration_failed" {
					t.Fatalf("%+v %v", r, err)
				}
			}},
		{"ok/temporary-poll-answer-waited-out", []reply{accepted, apiError(503, "0", "service_unavailable"), assignedR}, ProvisionOptions{},
			0, func(t *testing.T, r *Result, err error, events []Event, took time.Duration) {
				if err != nil || r.Status != StatusAssigned || len(events) != 3 {
					t.Fatalf("%+v %v %+v", r, err, events)
				}
				if ev := events[1]; ev.Poll != 1 || ev.Status != "" || ev.Wait != minTemporaryWait || !strings.Contains(ev.Err.Error(), "HTTP 503 service_unavailable") {
					t.Errorf("the 503's event: %+v", ev)
				}
				if took < minTemporaryWait {
					t.Errorf("took %s: Retry-After 0 on a 503 was taken literally", took)
				}
			}},
		{"ok/temporary-register-answer-retried-when-asked", []reply{apiError(429, "0", "too_many_requests"), accepted, assignedR}, ProvisionOptions{RetryRegister: true},
			0, func(t *testing.T, r *Result, err error, events []Event, took time.Duration) {
				if err != nil || r.Status != StatusAssigned {
					t.Fatalf("%+v %v", r, err)
				}
				if ev := events[0]; ev.OperationID != "" || ev.Wait != minTemporaryWait || ev.Err == nil {
					t.Errorf("the 429's event: %+v", ev)
				}
			}},
		{"ok/max-wait-bounds-retry-after", []reply{{202, "60", accepted.body}, assignedR}, ProvisionOptions{MaxWait: 10 * time.Millisecond},
			5 * time.Second, func(t *testing.T, r *Result, err error, events []Event, took time.Duration) {
				if err != nil || events[0].Wait != 10*time.Millisecond {
					t.Fatalf("%v %+v", err, events)
				}
			}},
		{"fail/temporary-register-answer-returned", []reply{apiError(503, "4", "service_unavailable"), accepted}, ProvisionOptions{},
			0, func(t *testing.T, r *Result, err error, events []Event, took time.Duration) {
				ae := (*APIError)(nil)
				if !errors.As(err, &ae) || !ae.Temporary() || ae.RetryAfter != 4*time.Second || !strings.HasPrefix(err.Error(), "register: HTTP 503") {
					t.Fatalf("%v", err)
				}
				if len(events) != 1 || events[0].Err == nil || events[0].Wait != 0 {
					t.Errorf("events %+v", events)
				}
			}},
		{"fail/poll-error", []reply{accepted, apiError(404, "", "not_found")}, ProvisionOptions{},
			0, func(t *testing.T, r *Result, err error, events []Event, took time.Duration) {
				if err == nil || err.Error() != "poll: HTTP 404 not_found: Because." || r != nil {
					t.Fatalf("%v", err)
				}
				if ev := events[len(events)-1]; ev.Poll != 1 || ev.Err == nil || ev.Wait != 0 {
					t.Errorf("last event %+v", ev)
				}
			}},
		{"fail/deadline-while-waiting", []reply{{202, "60", accepted.body}}, ProvisionOptions{},
			50 * time.Millisecond, func(t *testing.T, r *Result, err error, events []Event, took time.Duration) {
				if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "still assigning") {
					t.Fatalf("%v", err)
				}
				if took > 5*time.Second {
					t.Errorf("took %s after the deadline", took)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.ctx > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctx)
				defer cancel()
			}
			var events []Event
			tc.opts.Progress = func(ev Event) { events = append(events, ev) }
			c := newClient(t, &fakeService{answer: script(tc.replies...)})
			start := time.Now()
			r, err := c.Provision(ctx, nil, tc.opts)
			tc.check(t, r, err, events, time.Since(start))
		})
	}
}

func equalEvents(a, b []Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].OperationID != b[i].OperationID || a[i].Poll != b[i].Poll || a[i].Status != b[i].Status ||
			(a[i].Err == nil) != (b[i].Err == nil) || a[i].Wait != b[i].Wait {
			return false
		}
	}
	return true
}
