// Package dps is the client iotprov uses to register a device with the Azure IoT Hub
// Device Provisioning Service on the device's behalf: X.509 attestation over mutual TLS
// with the device's freshly issued certificate chain, a register PUT, then status polls
// that honour DPS throttling (Retry-After) until the device is assigned to a hub.
//
// The client only speaks the device-registration REST API
// (https://<endpoint>/<idScope>/registrations/<id>/register); it knows nothing of
// operations, queues or storage. Failures are *Error, which says whether a retry can help.
package dps

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/iotprov/iotprov/internal/pause"
)

// DefaultGlobalEndpoint is the DPS global device endpoint.
const DefaultGlobalEndpoint = "global.azure-devices-provisioning.net"

// APIVersion is the DPS device API version this client speaks.
const APIVersion = "2021-06-01"

// Operation statuses as DPS reports them.
const (
	StatusAssigning = "assigning"
	StatusAssigned  = "assigned"
	StatusFailed    = "failed"
	StatusDisabled  = "disabled"
)

const (
	defaultHTTPTimeout = 30 * time.Second
	// DPS allows 5 status polls per 10 s per device. Polls at least 2 s apart never
	// exceed that in any 10 s window, whatever the first poll's timing, so the first
	// poll can follow DPS's own Retry-After (or 1 s) instead of waiting 2 s: most
	// registrations are assigned by then, and a second earlier cuts every device's wait.
	defaultFirstPollAfter  = time.Second
	defaultMinPollInterval = 2 * time.Second
	// maxResponseBytes bounds what we read from DPS (or whatever answers in its place).
	maxResponseBytes = 1 << 20
	// maxPollFailures is how many transient failures in a row a poll loop absorbs before
	// giving the error to the caller, whose own retry (re-enqueue) is the next line.
	maxPollFailures = 5
	// maxRegistrationIDLen is DPS's limit on registration IDs.
	maxRegistrationIDLen = 128
)

// Config configures a Client.
type Config struct {
	Endpoint        string         // host[:port]; "" -> DefaultGlobalEndpoint
	IDScope         string         // required
	RootCAs         *x509.CertPool // nil -> system roots (the local stack passes the emulator's CA)
	HTTPTimeout     time.Duration  // per request; 0 -> 30s
	MinPollInterval time.Duration  // between two status polls; 0 -> 2s (DPS allows 5 polls / 10 s / device)
	FirstPollAfter  time.Duration  // least wait before the first status poll; 0 -> 1s, or MinPollInterval if shorter
}

// Client talks to DPS. It is safe for concurrent use; it holds no per-device state.
type Client struct {
	cfg  Config
	base string // https://<endpoint>/<idScope>
}

// New validates cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultGlobalEndpoint
	}
	if strings.ContainsAny(cfg.Endpoint, "/?#@ ") {
		return nil, fmt.Errorf("dps: endpoint %q must be host[:port], without scheme or path", cfg.Endpoint)
	}
	if cfg.IDScope == "" {
		return nil, errors.New("dps: ID scope is required")
	}
	if strings.ContainsAny(cfg.IDScope, "/?#% ") {
		return nil, fmt.Errorf("dps: ID scope %q is not valid", cfg.IDScope)
	}
	if cfg.HTTPTimeout < 0 || cfg.MinPollInterval < 0 || cfg.FirstPollAfter < 0 {
		return nil, errors.New("dps: timeouts must not be negative")
	}
	if cfg.HTTPTimeout == 0 {
		cfg.HTTPTimeout = defaultHTTPTimeout
	}
	if cfg.MinPollInterval == 0 {
		cfg.MinPollInterval = defaultMinPollInterval
	}
	if cfg.FirstPollAfter == 0 {
		cfg.FirstPollAfter = min(defaultFirstPollAfter, cfg.MinPollInterval)
	}
	return &Client{cfg: cfg, base: "https://" + cfg.Endpoint + "/" + cfg.IDScope}, nil
}

// RegistrationState is the part of DPS's registrationState the service uses.
type RegistrationState struct {
	RegistrationID, AssignedHub, DeviceID, Status, Substatus string
	ErrorCode                                                int
	ErrorMessage                                             string
}

// Operation is a DPS registration operation as last seen.
type Operation struct {
	OperationID string
	Status      string             // assigning | assigned | failed | disabled
	RetryAfter  time.Duration      // from the Retry-After header, 0 if none
	State       *RegistrationState // nil while assigning
}

// RegisterAndWait registers, then polls honouring Retry-After (the first poll no sooner
// than FirstPollAfter, later ones at least MinPollInterval apart) until the operation is assigned, failed or disabled, or ctx ends.
// assigned -> (*Operation, nil); failed/disabled -> (the final *Operation, *Error) with
// the Error permanent and carrying registrationState's errorCode and message; ctx done
// -> ctx.Err() wrapped.
//
// A throttled or failed register PUT is returned at once (the caller re-enqueues with
// the Error's RetryAfter, which keeps DPS's quota from burning the message's dequeue
// count); transient failures while polling are absorbed a few times, since giving up
// would waste a registration that DPS has already accepted.
func (c *Client) RegisterAndWait(ctx context.Context, registrationID string, cert tls.Certificate) (*Operation, error) {
	hc, done, err := c.httpClient(cert)
	if err != nil {
		return nil, err
	}
	defer done()

	op, err := c.register(ctx, hc, registrationID)
	if err != nil {
		return nil, err
	}
	wait := max(op.RetryAfter, c.cfg.FirstPollAfter)
	failures := 0
	for {
		switch op.Status {
		case StatusAssigned:
			return op, nil
		case StatusFailed, StatusDisabled:
			return op, finalError(op)
		}
		if err := pause.For(ctx, wait); err != nil {
			return nil, fmt.Errorf("dps: waiting for registration %s operation %s: %w", registrationID, op.OperationID, err)
		}
		next, err := c.status(ctx, hc, registrationID, op.OperationID)
		if err != nil {
			var de *Error
			if ctx.Err() == nil && errors.As(err, &de) && de.Transient() && failures < maxPollFailures {
				failures++
				// Back off harder on repeated failures when DPS gives no hint.
				wait = max(de.RetryAfter, c.cfg.MinPollInterval*time.Duration(failures))
				continue
			}
			return nil, err
		}
		failures = 0
		op, wait = next, max(next.RetryAfter, c.cfg.MinPollInterval)
	}
}

// finalError turns a failed or disabled operation into a permanent *Error.
func finalError(op *Operation) *Error {
	e := &Error{StatusCode: http.StatusOK, permanent: true}
	if op.State != nil {
		e.ErrorCode = op.State.ErrorCode
		e.Message = op.State.ErrorMessage
	}
	if e.Message == "" {
		e.Message = "registration " + op.Status
	}
	return e
}

func (c *Client) register(ctx context.Context, hc *http.Client, registrationID string) (*Operation, error) {
	if err := checkRegistrationID(registrationID); err != nil {
		return nil, err
	}
	body, err := json.Marshal(struct {
		RegistrationID string `json:"registrationId"`
	}{registrationID})
	if err != nil {
		return nil, err
	}
	u := c.base + "/registrations/" + url.PathEscape(registrationID) + "/register?api-version=" + APIVersion
	return c.do(ctx, hc, http.MethodPut, u, body)
}

func (c *Client) status(ctx context.Context, hc *http.Client, registrationID, operationID string) (*Operation, error) {
	if err := checkRegistrationID(registrationID); err != nil {
		return nil, err
	}
	if operationID == "" {
		return nil, &Error{Message: "empty operation ID", permanent: true}
	}
	u := c.base + "/registrations/" + url.PathEscape(registrationID) + "/operations/" +
		url.PathEscape(operationID) + "?api-version=" + APIVersion
	return c.do(ctx, hc, http.MethodGet, u, nil)
}

func checkRegistrationID(id string) error {
	if id == "" || len(id) > maxRegistrationIDLen {
		return &Error{Message: "registration ID must be 1 to 128 characters", permanent: true}
	}
	return nil
}

// httpClient returns an HTTP client presenting cert, and a func that releases its
// connections. One transport per call keeps a device's key out of any shared pool;
// RegisterAndWait reuses it across the PUT and the polls.
func (c *Client) httpClient(cert tls.Certificate) (*http.Client, func(), error) {
	if len(cert.Certificate) == 0 || cert.PrivateKey == nil {
		return nil, nil, &Error{Message: "device certificate chain and key are required", permanent: true}
	}
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
			RootCAs:      c.cfg.RootCAs,
		},
		// HTTP/1.1: a connection carries one PUT and a poll or two, so HTTP/2's
		// preface, settings and extra goroutines only cost CPU; DPS serves both.
		ForceAttemptHTTP2:     false,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: c.cfg.HTTPTimeout,
		MaxIdleConnsPerHost:   1,
		IdleConnTimeout:       90 * time.Second,
	}
	hc := &http.Client{
		Transport: tr,
		// DPS does not redirect device calls; following one would send the request
		// (and the client certificate) somewhere we did not choose.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return hc, tr.CloseIdleConnections, nil
}

func (c *Client) do(ctx context.Context, hc *http.Client, method, u string, body []byte) (*Operation, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.HTTPTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(rctx, method, u, rd)
	if err != nil {
		return nil, &Error{Message: "building request", permanent: true, cause: err}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "iotprov-dps/1")
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dps: %s: %w", method, ctx.Err())
		}
		return nil, &Error{Message: "request to DPS failed", cause: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dps: %s: %w", method, ctx.Err())
		}
		return nil, &Error{Message: "reading DPS response failed", cause: err}
	}
	// No Retry-After, or one that does not parse, is 0: the caller's own pacing applies.
	retryAfter, _ := pause.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now(), maxRetryAfter)
	if len(data) > maxResponseBytes {
		return nil, &Error{StatusCode: resp.StatusCode, Message: "DPS response larger than 1 MiB", RetryAfter: retryAfter}
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		code, msg, tracking := parseErrorBody(data)
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		return nil, &Error{StatusCode: resp.StatusCode, ErrorCode: code, Message: msg,
			TrackingID: tracking, RetryAfter: retryAfter}
	}
	op, err := parseOperation(data)
	if err != nil {
		return nil, &Error{StatusCode: resp.StatusCode, Message: "malformed DPS operation", cause: err}
	}
	op.RetryAfter = retryAfter
	return op, nil
}
