package dps

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// Answers shaped like real DPS ones (field order and extras as DPS sends them).
const (
	dpsAssigning = `{"operationId":"4.d0a671905ea5b2c8.e7173b7b-0e54-4aa0-9d20-aeb1b89e6c7d","status":"assigning"}`
	dpsAssigned  = `{"operationId":"4.d0a671905ea5b2c8.e7173b7b-0e54-4aa0-9d20-aeb1b89e6c7d","status":"assigned",
	 "registrationState":{"x509":{"enrollmentGroupId":"grp"},"registrationId":"dev-1",
	 "createdDateTimeUtc":"2020-04-10T03:11:13.0276997Z","assignedHub":"contoso.azure-devices.net",
	 "deviceId":"dev-1","status":"assigned","substatus":"initialAssignment",
	 "lastUpdatedDateTimeUtc":"2020-04-10T03:11:13.2096201Z","etag":"IjYxMDA4ZDQ2LTAwMDAtMDMwMC0wMDAwLTVlOGZlM2QxMDAwMCI="}}`
	dpsFailed = `{"operationId":"op","status":"failed","registrationState":{"registrationId":"dev-1","status":"failed",
	 "errorCode":400209,"errorMessage":"Custom allocation failed with status code: 400"}}`
)

func TestParseOperation(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    Operation
		state   *RegistrationState
		wantErr string
	}{
		{name: "ok/assigning", body: dpsAssigning, want: Operation{OperationID: "4.d0a671905ea5b2c8.e7173b7b-0e54-4aa0-9d20-aeb1b89e6c7d", Status: "assigning"}},
		{name: "ok/assigning with state is still nil state", body: `{"operationId":"o","status":"assigning","registrationState":{"registrationId":"d","status":"assigning"}}`,
			want: Operation{OperationID: "o", Status: "assigning"}},
		{name: "ok/assigned", body: dpsAssigned, want: Operation{OperationID: "4.d0a671905ea5b2c8.e7173b7b-0e54-4aa0-9d20-aeb1b89e6c7d", Status: "assigned"},
			state: &RegistrationState{RegistrationID: "dev-1", AssignedHub: "contoso.azure-devices.net", DeviceID: "dev-1", Status: "assigned", Substatus: "initialAssignment"}},
		{name: "ok/status case folded", body: `{"operationId":"o","status":"Assigning"}`, want: Operation{OperationID: "o", Status: "assigning"}},
		{name: "ok/failed", body: dpsFailed, want: Operation{OperationID: "op", Status: "failed"},
			state: &RegistrationState{RegistrationID: "dev-1", Status: "failed", ErrorCode: 400209, ErrorMessage: "Custom allocation failed with status code: 400"}},
		{name: "ok/disabled without state", body: `{"operationId":"o","status":"disabled"}`, want: Operation{OperationID: "o", Status: "disabled"}},
		{name: "ok/errorCode as string", body: `{"operationId":"o","status":"failed","registrationState":{"errorCode":"401002"}}`,
			want: Operation{OperationID: "o", Status: "failed"}, state: &RegistrationState{ErrorCode: 401002}},
		{name: "ok/errorCode garbage ignored", body: `{"operationId":"o","status":"failed","registrationState":{"errorCode":{"x":1},"errorMessage":"m"}}`,
			want: Operation{OperationID: "o", Status: "failed"}, state: &RegistrationState{ErrorMessage: "m"}},
		{name: "ok/control characters dropped", body: `{"operationId":"o","status":"failed","registrationState":{"errorMessage":"a\nb\u0000c"}}`,
			want: Operation{OperationID: "o", Status: "failed"}, state: &RegistrationState{ErrorMessage: "abc"}},
		{name: "fail/not JSON", body: `<html>`, wantErr: "decoding"},
		{name: "fail/no operationId", body: `{"status":"assigning"}`, wantErr: "no operationId"},
		{name: "fail/operationId with newline", body: `{"operationId":"a\nb","status":"assigning"}`, wantErr: "plausible"},
		{name: "fail/unknown status", body: `{"operationId":"o","status":"unassigned"}`, wantErr: "unknown operation status"},
		{name: "fail/assigned without hub", body: `{"operationId":"o","status":"assigned","registrationState":{"deviceId":"d"}}`, wantErr: "lacks"},
		{name: "fail/assigned without state", body: `{"operationId":"o","status":"assigned"}`, wantErr: "lacks"},
		{name: "fail/JSON null", body: `null`, wantErr: "no operationId"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op, err := parseOperation([]byte(tt.body))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if op.OperationID != tt.want.OperationID || op.Status != tt.want.Status || op.RetryAfter != 0 {
				t.Errorf("op = %+v, want %+v", op, tt.want)
			}
			switch {
			case tt.state == nil && op.State != nil:
				t.Errorf("state = %+v, want nil", op.State)
			case tt.state != nil && (op.State == nil || *op.State != *tt.state):
				t.Errorf("state = %+v, want %+v", op.State, tt.state)
			}
		})
	}
}

func TestParseErrorBody(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		code     int
		msg, tid string
	}{
		{name: "ok/DPS error", body: `{"errorCode":401002,"trackingId":"8ad0463c-6427-4479-9dfa-3e8bb7003e9b","message":"Invalid certificate.","timestampUtc":"2020-04-10T05:24:22.4718526Z"}`,
			code: 401002, msg: "Invalid certificate.", tid: "8ad0463c-6427-4479-9dfa-3e8bb7003e9b"},
		{name: "ok/throttled", body: `{"errorCode":429001,"trackingId":"t","message":"Operations are being throttled.","timestampUtc":"x"}`, code: 429001, msg: "Operations are being throttled.", tid: "t"},
		{name: "ok/long message truncated", body: `{"message":"` + strings.Repeat("é", 600) + `"}`, msg: strings.Repeat("é", maxMessageLen/2)},
		{name: "fail/HTML", body: `<html><body>Bad gateway</body></html>`},
		{name: "fail/empty", body: ``},
		{name: "fail/array", body: `[1]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, msg, tid := parseErrorBody([]byte(tt.body))
			if code != tt.code || msg != tt.msg || tid != tt.tid {
				t.Errorf("got (%d, %q, %q), want (%d, %q, %q)", code, msg, tid, tt.code, tt.msg, tt.tid)
			}
		})
	}
}

func FuzzParseOperation(f *testing.F) {
	for _, s := range []string{dpsAssigning, dpsAssigned, dpsFailed, `{"operationId":"o","status":"disabled"}`,
		`{"operationId":"o","status":"failed","registrationState":{"errorCode":"1"}}`, `null`, `[]`, `{`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		op, err := parseOperation(body)
		if err != nil {
			return
		}
		if op.OperationID == "" || len(op.OperationID) > maxIDLen {
			t.Fatalf("accepted operation ID %q", op.OperationID)
		}
		switch op.Status {
		case StatusAssigning:
			if op.State != nil {
				t.Fatal("state set while assigning")
			}
		case StatusAssigned:
			if op.State == nil || op.State.AssignedHub == "" || op.State.DeviceID == "" {
				t.Fatalf("assigned without hub or device: %+v", op.State)
			}
		case StatusFailed, StatusDisabled:
		default:
			t.Fatalf("accepted status %q", op.Status)
		}
		if s := op.State; s != nil {
			for _, v := range []string{s.RegistrationID, s.AssignedHub, s.DeviceID, s.Status, s.Substatus, s.ErrorMessage} {
				if !printable(v) || !utf8.ValidString(v) || len(v) > maxIDLen {
					t.Fatalf("unclean field %q", v)
				}
			}
			if len(s.ErrorMessage) > maxMessageLen {
				t.Fatalf("message of %d bytes kept", len(s.ErrorMessage))
			}
		}
	})
}

func FuzzParseErrorBody(f *testing.F) {
	for _, s := range []string{`{"errorCode":401002,"trackingId":"t","message":"Invalid certificate.","timestampUtc":"x"}`,
		`{"errorCode":"429001"}`, `<html>`, `{"message":"a\u0000b"}`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		_, msg, tid := parseErrorBody(body)
		if len(msg) > maxMessageLen || len(tid) > 128 || !printable(msg) || !printable(tid) {
			t.Fatalf("unclean result %q %q", msg, tid)
		}
	})
}
