package store

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/iotprov/iotprov/internal/errcode"
)

// batchBody is a failed entity-group transaction as the service documents it
// (learn.microsoft.com "Performing entity group transactions", sample error response).
func batchBody(status, code string) string {
	return "--batchresponse_7ab1553a-7dd6-4f34-ac94-3b7d6d96e7be\r\n" +
		"Content-Type: multipart/mixed; boundary=changesetresponse_0e6a7e3a\r\n\r\n" +
		"--changesetresponse_0e6a7e3a\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n" +
		"HTTP/1.1 " + status + "\r\nContent-ID: 1\r\nContent-Type: application/json;odata=minimalmetadata;streaming=true;charset=utf-8\r\n\r\n" +
		`{"odata.error":{"code":"` + code + `","message":{"lang":"en-US","value":"0:failed"}}}` + "\r\n" +
		"--changesetresponse_0e6a7e3a--\r\n--batchresponse_7ab1553a-7dd6-4f34-ac94-3b7d6d96e7be--\r\n"
}

func responseError(status int, header http.Header, body string) error {
	if header == nil {
		header = http.Header{}
	}
	req, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1/devstoreaccount1/$batch", nil)
	return runtime.NewResponseError(&http.Response{
		StatusCode: status, Header: header, Body: io.NopCloser(strings.NewReader(body)), Request: req,
	})
}

func TestMapErr(t *testing.T) {
	code := func(c string) http.Header { h := http.Header{}; h.Set("x-ms-error-code", c); return h }
	tests := []struct {
		name string
		err  error
		want error // nil: unavailable
	}{
		{"ok/entity not found", responseError(404, code("ResourceNotFound"), ""), ErrNotFound},
		{"ok/404 without code", responseError(404, nil, ""), ErrNotFound},
		{"ok/already exists", responseError(409, code("EntityAlreadyExists"), ""), ErrConflict},
		{"ok/etag mismatch", responseError(412, code("UpdateConditionNotSatisfied"), ""), ErrConflict},
		{"ok/transaction: already exists", responseError(202, nil, batchBody("409 Conflict", "EntityAlreadyExists")), ErrConflict},
		{"ok/transaction: etag mismatch", responseError(202, nil, batchBody("412 Precondition Failed", "UpdateConditionNotSatisfied")), ErrConflict},
		{"ok/transaction: 412 with unknown code", responseError(202, nil, batchBody("412 Precondition Failed", "Other")), ErrConflict},
		{"ok/transaction: not found", responseError(202, nil, batchBody("404 Not Found", "ResourceNotFound")), ErrNotFound},
		{"fail/table missing is a fault, not a missing entity", responseError(404, code("TableNotFound"), ""), nil},
		{"fail/transaction: table missing", responseError(202, nil, batchBody("404 Not Found", "TableNotFound")), nil},
		{"fail/server busy", responseError(503, code("ServerBusy"), ""), nil},
		{"fail/transaction: bad input", responseError(202, nil, batchBody("400 Bad Request", "InvalidInput")), nil},
		{"fail/transport", errors.New("dial tcp 127.0.0.1:1: connection refused"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mapErr("test", tt.err)
			if tt.want != nil {
				if !errors.Is(got, tt.want) {
					t.Fatalf("mapErr = %v, want %v", got, tt.want)
				}
				return
			}
			if errors.Is(got, ErrNotFound) || errors.Is(got, ErrConflict) {
				t.Fatalf("mapErr = %v, want unavailable", got)
			}
			if e := errcode.As(got); e.Status != http.StatusServiceUnavailable || e.Code != errcode.CodeUnavailable {
				t.Fatalf("mapErr = %+v, want 503 %s", e, errcode.CodeUnavailable)
			}
			if !errors.Is(got, tt.err) {
				t.Fatalf("mapErr lost the cause")
			}
		})
	}
}
