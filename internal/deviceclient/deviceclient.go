// Package deviceclient is the device side of the Krypton-compatible API, as a device runs
// it: register (optionally with a CSR), poll the operation honouring Retry-After, and
// check the credentials it returns before they are used. The service's answers are
// untrusted input here: everything a caller gets back has been bounded and checked.
//
// `iotprov device register` and the load generator's simulated devices are both built
// on this package, so one device behaves the same in the CLI, the bench and the tests.
package deviceclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Device API paths (DESIGN.md §2).
const (
	RegisterPath      = "/v1/provisioning/azure/iot/register"
	RegistrationsPath = "/v1/provisioning/azure/iot/registrations/"
)

// MaxAnswerSize bounds what is read from the service: an assigned answer with an RSA-3072
// key and a chain is a few KiB.
const MaxAnswerSize = 1 << 20

// Client sends a device's requests. The zero value is not usable: BaseURL is required.
type Client struct {
	// BaseURL is the service's base URL, e.g. http://127.0.0.1:7071 (no trailing slash
	// needed).
	BaseURL string
	// HTTP sends the requests; nil means http.DefaultClient.
	HTTP *http.Client
	// Authorize sets the request's credential headers (SAS token, Beam headers, bearer
	// JWT…); nil sends none, e.g. when the credential is a TLS client certificate.
	Authorize func(*http.Request) error
}

// Register starts (or joins) the device's operation. csrPEM is the device's PKCS#10 CSR,
// or nil for a server-generated key. It returns the operation ID and how long to wait
// before the first poll. An error answer of the service is an *APIError.
func (c *Client) Register(ctx context.Context, csrPEM []byte) (string, time.Duration, error) {
	var body []byte
	if csrPEM != nil {
		var err error
		if body, err = json.Marshal(map[string]string{"csr": string(csrPEM)}); err != nil {
			return "", 0, err
		}
	}
	status, retryAfter, raw, err := c.do(ctx, http.MethodPost, RegisterPath, body)
	if err != nil {
		return "", 0, err
	}
	res, err := parseAnswer(status, retryAfter, raw, time.Now())
	if err != nil {
		return "", 0, err
	}
	if res.Status != StatusAssigning {
		return "", 0, &MalformedError{Status: status, Reason: fmt.Sprintf("register answered %q, want %q", res.Status, StatusAssigning)}
	}
	return res.OperationID, res.RetryAfter, nil
}

// Poll asks once for the operation's state: assigning (with when to ask again), assigned
// (with the credentials) or failed (with the service's code and message). An error answer
// of the service is an *APIError; see APIError.Temporary for the ones to wait out.
func (c *Client) Poll(ctx context.Context, operationID string) (*Result, error) {
	if !validOperationID(operationID) {
		return nil, fmt.Errorf("operation ID %q: not one the service makes", clean(operationID, 80))
	}
	status, retryAfter, raw, err := c.do(ctx, http.MethodGet, RegistrationsPath+url.PathEscape(operationID), nil)
	if err != nil {
		return nil, err
	}
	res, err := parseAnswer(status, retryAfter, raw, time.Now())
	if err != nil {
		return nil, err
	}
	if res.OperationID != operationID {
		return nil, &MalformedError{Status: status, Reason: fmt.Sprintf("answer is for operation %q, not %q", res.OperationID, operationID)}
	}
	return res, nil
}

// do sends one request and reads at most MaxAnswerSize+1 bytes of the answer.
func (c *Client) do(ctx context.Context, method, path string, body []byte) (int, string, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, rd)
	if err != nil {
		return 0, "", nil, err
	}
	if c.Authorize != nil {
		if err := c.Authorize(req); err != nil {
			return 0, "", nil, err
		}
	}
	// Set after Authorize: these describe the request, whatever a caller's headers say.
	req.Header.Del("Content-Type")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswerSize+1))
	if err != nil {
		return 0, "", nil, err
	}
	return resp.StatusCode, resp.Header.Get("Retry-After"), raw, nil
}
