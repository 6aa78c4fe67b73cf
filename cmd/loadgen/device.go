package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/iotprov/iotprov/internal/auth"
	"github.com/iotprov/iotprov/internal/deviceclient"
)

// fleet is what every simulated device shares: the service, the SAS group key the
// devices' keys derive from, and the device CA root that their certificates must chain to.
type fleet struct {
	base        string
	hc          *http.Client
	groupKey    []byte
	deviceRoots *x509.CertPool
	minPoll     time.Duration // a device never polls faster than this, whatever Retry-After says
}

// outcome is one device's provisioning as the device saw it.
type outcome struct {
	DeviceID, OperationID string
	Start                 time.Time     // just before the register POST
	Latency               time.Duration // register sent → "assigned" received; 0 unless assigned
	Polls                 int           // registration GETs
	Throttled             int           // 429 answers (register or poll)
	Unavailable           int           // 503 answers
	Err                   string        // "" when assigned and verified; else a short code
}

// provision runs one device: register (with a CSR when csr, again after a 429/503 as a
// device would), poll honouring Retry-After until assigned or failed, and verify what it
// got. It returns when done or ctx ends.
func (f *fleet) provision(ctx context.Context, id string, csr bool) outcome {
	out := outcome{DeviceID: id, Start: time.Now()}
	deviceKey := auth.DeriveDeviceKey(f.groupKey, id)
	token := auth.NewSASToken(deviceKey, url.QueryEscape(id), time.Now().Add(time.Hour).Unix(), "registration")

	var (
		key    crypto.Signer // nil unless csr: then the certificate must be for it
		csrPEM []byte
	)
	if csr {
		k, p, err := deviceclient.NewCSR(id)
		if err != nil {
			out.Err = "csr: " + err.Error()
			return out
		}
		key, csrPEM = k, p
	}

	dev := &deviceclient.Client{BaseURL: f.base, HTTP: f.hc, Authorize: func(r *http.Request) error {
		r.Header.Set("Authorization", token)
		return nil
	}}
	res, err := dev.Provision(ctx, csrPEM, deviceclient.ProvisionOptions{MinPoll: f.minPoll, RetryRegister: true,
		Progress: func(ev deviceclient.Event) {
			if ev.OperationID != "" {
				out.OperationID = ev.OperationID
			}
			out.Polls = ev.Poll
			if ae := (*deviceclient.APIError)(nil); errors.As(ev.Err, &ae) {
				out.count(ae.Status)
			}
		}})
	if err != nil {
		out.Err = errCode(ctx, out.OperationID != "", err)
		return out
	}
	if res.Status == deviceclient.StatusFailed {
		out.Err = "failed: " + res.Failure.Code
		return out
	}
	out.Latency = time.Since(out.Start)
	if err := deviceclient.VerifyCredentials(res, id, f.deviceRoots, key); err != nil {
		out.Err = "verify: " + err.Error()
	}
	return out
}

func (o *outcome) count(status int) {
	switch status {
	case http.StatusTooManyRequests:
		o.Throttled++
	case http.StatusServiceUnavailable:
		o.Unavailable++
	}
}

// errStillInFlight is the outcome of a device the scenario's deadline stopped: pending,
// not failed (runLoad counts it so).
const errStillInFlight = "deadline: still in flight when the scenario ended"

// errCode names why a device stopped, short enough to count in the report: an error
// answer by its step, status and code; a transport failure by what the transport said.
func errCode(ctx context.Context, registered bool, err error) string {
	step := "register"
	if registered {
		step = "registration"
	}
	var (
		ae *deviceclient.APIError
		me *deviceclient.MalformedError
	)
	switch {
	case ctx.Err() != nil:
		return errStillInFlight
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &ae):
		return fmt.Sprintf("%s: %d %s", step, ae.Status, ae.Code)
	case errors.As(err, &me):
		return step + ": " + me.Reason
	}
	// Provision prefixes the step ("register: ", "poll: "); the report names the transport's own words.
	if inner := errors.Unwrap(err); inner != nil {
		err = inner
	}
	return "transport: " + err.Error()
}
