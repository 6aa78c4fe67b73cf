package store

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// FuzzUTF16Len: the counting shortcut agrees with encoding the string, for valid UTF-8
// (marshalOperation checks validity first).
func FuzzUTF16Len(f *testing.F) {
	for _, s := range []string{"", "a", "é", "€", "😀", "-----BEGIN CERTIFICATE-----\nMIIB", "\uffff\U00010000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		if got, want := utf16Len(s), len(utf16.Encode([]rune(s))); got != want {
			t.Fatalf("utf16Len(%q) = %d, want %d", s, got, want)
		}
	})
}

// The wire format of an operation, pinned: what aztables.EDMEntity produced before the
// struct encoding replaced it (same properties, values and type annotations), plus
// HasKey, the purge filter's marker.
func TestOperationWireFormat(t *testing.T) {
	ts := time.Date(2026, 11, 28, 21, 0, 0, 123000000, time.UTC)
	full := &Operation{ID: "op-1", DeviceID: "dev-1", Identity: "sas:dev-1", Status: StatusAssigned, CSR: []byte{1, 2, 3},
		KeyAlgorithm: "ecdsa-p256", CertificatePEM: "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n",
		SealedKey: []byte{9, 8, 7}, KeyErased: true, Host: "localhost", AssignedDeviceID: "dev-1", DPSOperationID: "4.x",
		ErrorCode: "e", ErrorMessage: "m <&> é", Attempts: 3, CreatedAt: ts,
		UpdatedAt: ts.Add(time.Second), AssignedAt: ts.Add(2 * time.Second)}
	tests := []struct {
		name string
		op   *Operation
		want string
	}{
		{"ok/every property", full, `{"AssignedAt":"2026-11-28T21:00:02.123Z","AssignedAt@odata.type":"Edm.DateTime",
			"AssignedDeviceID":"dev-1","Attempts":3,"CSR":"AQID","CSR@odata.type":"Edm.Binary",
			"CertificatePEM":"-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n",
			"CreatedAt":"2026-11-28T21:00:00.123Z","CreatedAt@odata.type":"Edm.DateTime","DPSOperationID":"4.x",
			"ErrorCode":"e","ErrorMessage":"m <&> é","Host":"localhost","Identity":"sas:dev-1",
			"HasKey":true,"KeyAlgorithm":"ecdsa-p256","KeyErased":true,"PartitionKey":"dev-1","RowKey":"op-1","SealedKey":"CQgH",
			"SealedKey@odata.type":"Edm.Binary","Status":"assigned","UpdatedAt":"2026-11-28T21:00:01.123Z",
			"UpdatedAt@odata.type":"Edm.DateTime"}`},
		{"ok/zero values left out", &Operation{ID: "op-2", DeviceID: "dev-2", Status: StatusQueued},
			`{"Attempts":0,"PartitionKey":"dev-2","RowKey":"op-2","Status":"queued"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := marshalOperation(tt.op)
			if err != nil {
				t.Fatal(err)
			}
			var got, want map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(tt.want), &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("encoded\n%s\nwant\n%s", b, tt.want)
			}
			back, err := unmarshalOperation(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, tt.op) {
				t.Errorf("round trip\n%+v\nwant\n%+v", back, tt.op)
			}
		})
	}
}

// A read as the service (through the SDK) returns it: metadata, Timestamp, seven
// fractional digits, the ETag in the body.
func TestUnmarshalOperationAsRead(t *testing.T) {
	raw := `{"odata.metadata":"http://127.0.0.1/devstoreaccount1/$metadata#operations/@Element",
		"odata.etag":"W/\"datetime'2026-11-28T21%3A00%3A00.1234567Z'\"","PartitionKey":"dev-1","RowKey":"op-1",
		"Timestamp":"2026-11-28T21:00:00.1234567Z","Timestamp@odata.type":"Edm.DateTime",
		"Status":"issued","Attempts":2,"CreatedAt":"2026-11-28T21:00:00.1230000Z","CreatedAt@odata.type":"Edm.DateTime",
		"SealedKey":"CQgH","SealedKey@odata.type":"Edm.Binary","Unknown":"ignored"}`
	op, err := unmarshalOperation([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	want := &Operation{ID: "op-1", DeviceID: "dev-1", Status: StatusIssued, Attempts: 2, SealedKey: []byte{9, 8, 7},
		CreatedAt: time.Date(2026, 11, 28, 21, 0, 0, 123000000, time.UTC), ETag: `W/"datetime'2026-11-28T21%3A00%3A00.1234567Z'"`}
	if !reflect.DeepEqual(op, want) {
		t.Errorf("got\n%+v\nwant\n%+v", op, want)
	}
	for _, bad := range []string{`{"PartitionKey":"d","RowKey":"o","Status":"nope"}`, `{"Status":"queued","CreatedAt":"yesterday"}`, `[`} {
		if _, err := unmarshalOperation([]byte(bad)); err == nil {
			t.Errorf("unmarshalOperation(%s) succeeded", bad)
		}
	}
}
