package funcs

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

var (
	t1 = time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	// hostTime1 is KarlGW/azfunc's sample time, in the form the host prints.
	hostTime1 = time.Date(2023, 10, 12, 20, 13, 49, 640002000, time.UTC)
)

// Bodies in the shapes the Functions host sends. hostQueueString follows the sample in
// KarlGW/azfunc's trigger tests (item as a string holding JSON, Id and PopReceipt
// double-encoded, times single-encoded, an unknown metadata key).
const (
	hostQueueString = `{
  "Data": {"message": "{\"operationId\":\"op-1\",\"deviceId\":\"dev-1\"}"},
  "Metadata": {
    "DequeueCount": "1",
    "ExpirationTime": "2023-10-12T20:13:49.640002Z",
    "Id": "\"4e773554-f6b7-4ea2-b07d-4c5fd5aba741\"",
    "InsertionTime": "2023-10-12T20:13:49.640002Z",
    "NextVisibleTime": "2023-10-12T20:13:49.640002Z",
    "PopReceipt": "\"AgAAAAMAAAAAAAAAsaYi+Q==\"",
    "sys": {"MethodName": "provision", "UtcNow": "2023-10-12T20:13:49.640002Z", "RandGuid": "4e773554-f6b7-4ea2-b07d-4c5fd5aba741"},
    "heyoooo": "\"hello\""
  }
}`
	hostQueueObject = `{
  "Data": {"message": {"operationId": "op-1", "deviceId": "dev-1"}},
  "Metadata": {
    "DequeueCount": 3,
    "ExpirationTime": "\"2026-12-05T10:00:00+00:00\"",
    "Id": "\"4e773554-f6b7-4ea2-b07d-4c5fd5aba741\"",
    "InsertionTime": "\"2026-11-28T10:00:00+00:00\"",
    "NextVisibleTime": "\"2026-11-28T10:00:30.1234567+00:00\"",
    "PopReceipt": "\"pop\"",
    "sys": {"MethodName": "provision", "UtcNow": "2026-11-28T10:00:00Z", "RandGuid": "0b1c"}
  }
}`
	hostQueueStringOfString = `{
  "Data": {"message": "\"{\\\"operationId\\\":\\\"op-1\\\",\\\"deviceId\\\":\\\"dev-1\\\"}\""},
  "Metadata": {"DequeueCount": "\"2\"", "Id": "\"abc\"", "PopReceipt": "\"p\""}
}`
)

const wantItem = `{"operationId":"op-1","deviceId":"dev-1"}`

func compact(t *testing.T, raw []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("item %q is not JSON: %v", raw, err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func TestParseQueueTrigger(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		binding string
		want    *QueueTrigger // Item compared after compaction
		wantErr bool
	}{
		{name: "ok/string-item-host-sample", body: hostQueueString, binding: "message", want: &QueueTrigger{
			Item: json.RawMessage(wantItem), DequeueCount: 1, ID: "4e773554-f6b7-4ea2-b07d-4c5fd5aba741", PopReceipt: "AgAAAAMAAAAAAAAAsaYi+Q==",
			InsertionTime: hostTime1, ExpirationTime: hostTime1, NextVisibleTime: hostTime1}},
		{name: "ok/object-item-numeric-count-double-encoded-times", body: hostQueueObject, binding: "message", want: &QueueTrigger{
			Item: json.RawMessage(wantItem), DequeueCount: 3, ID: "4e773554-f6b7-4ea2-b07d-4c5fd5aba741", PopReceipt: "pop",
			InsertionTime: t1, ExpirationTime: t1.Add(7 * 24 * time.Hour), NextVisibleTime: t1.Add(30*time.Second + 123456700)}},
		{name: "ok/string-of-string-item", body: hostQueueStringOfString, binding: "message", want: &QueueTrigger{
			Item: json.RawMessage(wantItem), DequeueCount: 2, ID: "abc", PopReceipt: "p"}},
		{name: "ok/plain-text-item", body: `{"Data":{"m":"hello"},"Metadata":{"DequeueCount":"1"}}`, binding: "m", want: &QueueTrigger{
			Item: json.RawMessage(`"hello"`), DequeueCount: 1}},
		{name: "ok/metadata-as-string", body: `{"Data":{"m":{"a":1}},"Metadata":"{\"DequeueCount\":\"5\",\"Id\":\"\\\"x\\\"\"}"}`, binding: "m", want: &QueueTrigger{
			Item: json.RawMessage(`{"a":1}`), DequeueCount: 5, ID: "x"}},
		{name: "ok/unknown-time-format-left-zero", body: `{"Data":{"m":{}},"Metadata":{"DequeueCount":"1","InsertionTime":"\"yesterday\""}}`, binding: "m", want: &QueueTrigger{
			Item: json.RawMessage(`{}`), DequeueCount: 1}},
		{name: "ok/dotnet-general-time", body: `{"Data":{"m":{}},"Metadata":{"DequeueCount":"1","InsertionTime":"\"11/28/2026 10:00:00 +00:00\""}}`, binding: "m", want: &QueueTrigger{
			Item: json.RawMessage(`{}`), DequeueCount: 1, InsertionTime: t1}},

		{name: "fail/no-data", body: `{"Metadata":{"DequeueCount":"1"}}`, binding: "message", wantErr: true},
		{name: "fail/data-null", body: `{"Data":null,"Metadata":{"DequeueCount":"1"}}`, binding: "message", wantErr: true},
		{name: "fail/wrong-binding", body: hostQueueString, binding: "queueItem", wantErr: true},
		{name: "fail/null-item", body: `{"Data":{"message":null},"Metadata":{"DequeueCount":"1"}}`, binding: "message", wantErr: true},
		{name: "fail/junk-json", body: `{"Data":`, binding: "message", wantErr: true},
		{name: "fail/not-json", body: `hello`, binding: "message", wantErr: true},
		{name: "fail/array-body", body: `[1,2]`, binding: "message", wantErr: true},
		{name: "fail/empty", body: ``, binding: "message", wantErr: true},
		{name: "fail/negative-count", body: `{"Data":{"message":{}},"Metadata":{"DequeueCount":"-1"}}`, binding: "message", wantErr: true},
		{name: "fail/negative-count-number", body: `{"Data":{"message":{}},"Metadata":{"DequeueCount":-2}}`, binding: "message", wantErr: true},
		{name: "fail/non-numeric-count", body: `{"Data":{"message":{}},"Metadata":{"DequeueCount":"\"one\""}}`, binding: "message", wantErr: true},
		{name: "fail/fractional-count", body: `{"Data":{"message":{}},"Metadata":{"DequeueCount":1.5}}`, binding: "message", wantErr: true},
		{name: "fail/object-count", body: `{"Data":{"message":{}},"Metadata":{"DequeueCount":{}}}`, binding: "message", wantErr: true},
		{name: "fail/no-count", body: `{"Data":{"message":{}},"Metadata":{"Id":"\"x\""}}`, binding: "message", wantErr: true},
		{name: "fail/no-metadata", body: `{"Data":{"message":{}}}`, binding: "message", wantErr: true},
		{name: "fail/metadata-array", body: `{"Data":{"message":{}},"Metadata":[1]}`, binding: "message", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseQueueTrigger([]byte(tt.body), tt.binding)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %+v, want error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c := compact(t, got.Item); c != compact(t, tt.want.Item) {
				t.Errorf("Item = %s, want %s", c, tt.want.Item)
			}
			if got.DequeueCount != tt.want.DequeueCount || got.ID != tt.want.ID || got.PopReceipt != tt.want.PopReceipt {
				t.Errorf("got count=%d id=%q pop=%q, want count=%d id=%q pop=%q",
					got.DequeueCount, got.ID, got.PopReceipt, tt.want.DequeueCount, tt.want.ID, tt.want.PopReceipt)
			}
			for _, tc := range []struct {
				name      string
				got, want time.Time
			}{
				{"InsertionTime", got.InsertionTime, tt.want.InsertionTime},
				{"ExpirationTime", got.ExpirationTime, tt.want.ExpirationTime},
				{"NextVisibleTime", got.NextVisibleTime, tt.want.NextVisibleTime},
			} {
				if !tc.got.Equal(tc.want) {
					t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
				}
			}
		})
	}
}

func TestQueueInvocationRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		msg  string
		meta QueueMetadata
	}{
		{name: "ok/object-message", msg: wantItem, meta: QueueMetadata{
			DequeueCount: 4, ID: "4e773554-f6b7-4ea2-b07d-4c5fd5aba741", PopReceipt: "AgAAAAMAAAAAAAAAsaYi+Q==",
			InsertionTime: t1, ExpirationTime: t1.Add(7 * 24 * time.Hour), NextVisibleTime: t1.Add(30*time.Second + 1234567*100),
			MethodName: "provision"}},
		{name: "ok/zero-times-and-count", msg: `{"operationId":"x"}`, meta: QueueMetadata{ID: "1", PopReceipt: "p"}},
		{name: "ok/non-utc-time", msg: `{}`, meta: QueueMetadata{DequeueCount: 1, InsertionTime: t1.In(time.FixedZone("JST", 9*3600))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := NewQueueInvocation("message", []byte(tt.msg), tt.meta)

			// The body must be in the host's double-encoded shape, not merely parseable.
			var raw struct {
				Data     map[string]any
				Metadata map[string]any
			}
			if err := json.Unmarshal(body, &raw); err != nil {
				t.Fatal(err)
			}
			if s, ok := raw.Data["message"].(string); !ok || s != tt.msg {
				t.Errorf("Data.message = %#v, want the message text as a JSON string", raw.Data["message"])
			}
			if s, ok := raw.Metadata["Id"].(string); !ok || !strings.HasPrefix(s, `"`) {
				t.Errorf("Metadata.Id = %#v, want a double-encoded string", raw.Metadata["Id"])
			}
			if _, ok := raw.Metadata["DequeueCount"].(string); !ok {
				t.Errorf("Metadata.DequeueCount = %#v, want a string", raw.Metadata["DequeueCount"])
			}
			sys, ok := raw.Metadata["sys"].(map[string]any)
			if !ok || sys["RandGuid"] == "" || sys["UtcNow"] == "" {
				t.Errorf("Metadata.sys = %#v", raw.Metadata["sys"])
			}
			if !tt.meta.InsertionTime.IsZero() {
				if s, _ := raw.Metadata["InsertionTime"].(string); !strings.HasPrefix(s, `"`) {
					t.Errorf("Metadata.InsertionTime = %#v, want double-encoded", raw.Metadata["InsertionTime"])
				}
			}

			got, err := ParseQueueTrigger(body, "message")
			if err != nil {
				t.Fatal(err)
			}
			if compact(t, got.Item) != compact(t, []byte(tt.msg)) {
				t.Errorf("Item = %s, want %s", got.Item, tt.msg)
			}
			if got.DequeueCount != tt.meta.DequeueCount || got.ID != tt.meta.ID || got.PopReceipt != tt.meta.PopReceipt {
				t.Errorf("got %+v, want %+v", got, tt.meta)
			}
			if !got.InsertionTime.Equal(tt.meta.InsertionTime) || !got.ExpirationTime.Equal(tt.meta.ExpirationTime) ||
				!got.NextVisibleTime.Equal(tt.meta.NextVisibleTime) {
				t.Errorf("times = %v %v %v, want %v %v %v", got.InsertionTime, got.ExpirationTime, got.NextVisibleTime,
					tt.meta.InsertionTime, tt.meta.ExpirationTime, tt.meta.NextVisibleTime)
			}
		})
	}
}

func TestParseTimerTrigger(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    bool
		wantErr bool
	}{
		{name: "ok/host-sample", body: `{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":{"Last":"2023-10-12T20:13:49.640002Z","Next":"2023-10-12T20:13:49.640002Z","LastUpdated":"2023-10-12T20:13:49.640002Z"},"IsPastDue":false}},"Metadata":{"sys":{"MethodName":"purge","UtcNow":"2023-10-12T20:13:49.640002Z","RandGuid":"4e77"}}}`},
		{name: "ok/past-due", body: `{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":true}},"Metadata":{}}`, want: true},
		{name: "ok/as-string", body: `{"Data":{"timer":"{\"Schedule\":{\"AdjustForDST\":true},\"ScheduleStatus\":null,\"IsPastDue\":true}"},"Metadata":{}}`, want: true},
		{name: "ok/past-due-as-string", body: `{"Data":{"timer":{"IsPastDue":"true"}}}`, want: true},
		{name: "ok/no-past-due", body: `{"Data":{"timer":{}}}`, want: false},
		{name: "fail/no-data", body: `{"Metadata":{}}`, wantErr: true},
		{name: "fail/wrong-binding", body: `{"Data":{"myTimer":{"IsPastDue":false}}}`, wantErr: true},
		{name: "fail/junk-json", body: `{"Data":{"timer":`, wantErr: true},
		{name: "fail/not-object", body: `{"Data":{"timer":42}}`, wantErr: true},
		{name: "fail/null", body: `{"Data":{"timer":null}}`, wantErr: true},
		{name: "fail/bad-past-due", body: `{"Data":{"timer":{"IsPastDue":"maybe"}}}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTimerTrigger([]byte(tt.body), "timer")
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %+v, want error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.IsPastDue != tt.want {
				t.Fatalf("IsPastDue = %v, want %v", got.IsPastDue, tt.want)
			}
		})
	}
}

func TestTimerInvocationRoundTrip(t *testing.T) {
	for _, past := range []bool{false, true} {
		got, err := ParseTimerTrigger(NewTimerInvocation("timer", past), "timer")
		if err != nil || got.IsPastDue != past {
			t.Fatalf("round trip %v: %+v, %v", past, got, err)
		}
	}
}

func TestWriteResult(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		res        InvocationResult
		wantStatus int
		wantBody   string
	}{
		{name: "ok/empty-never-null", status: 200, wantStatus: 200,
			wantBody: `{"Outputs":{},"Logs":[],"ReturnValue":null}`},
		{name: "ok/values", status: 200, wantStatus: 200,
			res:      InvocationResult{Outputs: map[string]any{"out": map[string]any{"a": 1}}, Logs: []string{"done"}, ReturnValue: "ok"},
			wantBody: `{"Outputs":{"out":{"a":1}},"Logs":["done"],"ReturnValue":"ok"}`},
		{name: "ok/failed-invocation", status: 500, wantStatus: 500,
			res:      InvocationResult{Logs: []string{"dependency down"}},
			wantBody: `{"Outputs":{},"Logs":["dependency down"],"ReturnValue":null}`},
		{name: "fail/unencodable-output", status: 200, wantStatus: 500,
			res:      InvocationResult{Outputs: map[string]any{"c": make(chan int)}},
			wantBody: `{"Outputs":{},"Logs":["invocation result could not be encoded"],"ReturnValue":null}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			WriteResult(rec, tt.status, tt.res)
			if rec.Code != tt.wantStatus {
				t.Errorf("status = %d, want %d", rec.Code, tt.wantStatus)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			if got := strings.TrimSpace(rec.Body.String()); got != tt.wantBody {
				t.Errorf("body = %s, want %s", got, tt.wantBody)
			}
		})
	}
}

func FuzzParseQueueTrigger(f *testing.F) {
	f.Add([]byte(hostQueueString), "message")
	f.Add([]byte(hostQueueObject), "message")
	f.Add([]byte(hostQueueStringOfString), "message")
	f.Add(NewQueueInvocation("message", []byte(wantItem), QueueMetadata{DequeueCount: 2, ID: "i", PopReceipt: "p", InsertionTime: t1}), "message")
	f.Add([]byte(`{"Data":{"m":"\"\\\"x\\\"\""},"Metadata":"{\"DequeueCount\":\"\\\"1\\\"\"}"}`), "m")
	f.Add([]byte(`{"Data":{"m":null}}`), "m")
	f.Add([]byte(`junk`), "")
	f.Fuzz(func(t *testing.T, body []byte, binding string) {
		q, err := ParseQueueTrigger(body, binding)
		if err != nil {
			if q != nil {
				t.Fatal("trigger returned with error")
			}
			return
		}
		if q.DequeueCount < 0 {
			t.Fatalf("negative DequeueCount %d accepted", q.DequeueCount)
		}
		if !json.Valid(q.Item) || string(q.Item) == "null" {
			t.Fatalf("Item %q is not a JSON value", q.Item)
		}
		// Unwrapping is complete: a string item never holds JSON.
		if q.Item[0] == '"' {
			var s string
			if err := json.Unmarshal(q.Item, &s); err == nil && json.Valid([]byte(strings.TrimSpace(s))) && strings.TrimSpace(s) != "" {
				t.Fatalf("Item %q still wraps JSON", q.Item)
			}
		}
	})
}

func FuzzParseTimerTrigger(f *testing.F) {
	f.Add([]byte(`{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}`), "timer")
	f.Add([]byte(`{"Data":{"timer":"{\"IsPastDue\":true}"}}`), "timer")
	f.Add(NewTimerInvocation("timer", true), "timer")
	f.Add([]byte(`{"Data":{"t":{"IsPastDue":"\"true\""}}}`), "t")
	f.Add([]byte(`{"Data":{"timer":42}}`), "timer")
	f.Fuzz(func(t *testing.T, body []byte, binding string) {
		tt, err := ParseTimerTrigger(body, binding)
		if (err == nil) == (tt == nil) {
			t.Fatalf("got %+v and %v", tt, err)
		}
	})
}

func TestParseQueueTriggerNesting(t *testing.T) {
	nest := func(levels int) []byte {
		v := []byte(`{"operationId":"op-1"}`)
		for range levels {
			v, _ = json.Marshal(string(v))
		}
		return []byte(`{"Data":{"m":` + string(v) + `},"Metadata":{"DequeueCount":"1"}}`)
	}
	tests := []struct {
		name    string
		levels  int
		wantErr bool
	}{
		{"ok/0-levels", 0, false},
		{"ok/3-levels", 3, false},
		{"ok/8-levels", maxUnwrap, false},
		{"fail/9-levels", maxUnwrap + 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := ParseQueueTrigger(nest(tt.levels), "m")
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %s, want error", q.Item)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := compact(t, q.Item); got != `{"operationId":"op-1"}` {
				t.Fatalf("Item = %s", got)
			}
		})
	}
}
