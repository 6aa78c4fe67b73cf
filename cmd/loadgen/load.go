package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/iotprov/iotprov/internal/pause"
	"github.com/iotprov/iotprov/internal/store"
)

// loadSpec is one load: N devices, at most Concurrency of them in flight, started at Rate
// devices/s (0: as fast as Concurrency allows).
type loadSpec struct {
	Name        string
	N           int
	Concurrency int
	Rate        float64
	CSR         bool
	Deadline    time.Duration // the whole load; devices still in flight then count as pending
}

// percentiles of a latency distribution, in milliseconds.
type percentiles struct {
	P50 float64 `json:"p50Ms"`
	P95 float64 `json:"p95Ms"`
	P99 float64 `json:"p99Ms"`
	Max float64 `json:"maxMs"`
}

// loadResult is what one load measured.
type loadResult struct {
	Name          string  `json:"name"`
	Devices       int     `json:"devices"`
	Concurrency   int     `json:"concurrency"`
	CSR           bool    `json:"csr"`
	OfferedRate   float64 `json:"offeredPerSec"` // devices started / launch span (0 when all at once)
	Assigned      int     `json:"assigned"`      // assigned and verified
	Failed        int     `json:"failed"`
	Pending       int     `json:"pending"` // still in flight at the deadline
	Seconds       float64 `json:"seconds"` // first register → last assigned
	DevicesPerSec float64 `json:"devicesPerSec"`
	// Latency is register sent → "assigned" received, as the device saw it (it polls
	// honouring Retry-After, so this includes up to one poll interval of waiting).
	Latency percentiles `json:"latency"`
	// ServiceLatency is the operation's CreatedAt → AssignedAt as stored: how long the
	// service took, without the device's poll interval. Absent when storage is unreachable.
	ServiceLatency *percentiles    `json:"serviceLatency,omitempty"`
	Polls          int             `json:"polls"`
	Throttled      int             `json:"throttled429"`     // 429s the devices saw
	Unavailable    int             `json:"unavailable503"`   // 503s the devices saw
	Errors         map[string]int  `json:"errors,omitempty"` // failure → count
	Cost           *costDelta      `json:"cost,omitempty"`
	outcomes       []outcome       // for the service latency
	dps            *dpsThrottleLog // filled by the caller
}

// dpsThrottleLog is what the stack's log says about DPS throttling during a load.
type dpsThrottleLog struct {
	HandlerDeferrals int64 `json:"handlerDeferrals"` // "provision: deferred" lines (429/5xx/timeouts the worker re-enqueued)
}

// runLoad runs spec against f and waits for every device (or the deadline).
func runLoad(ctx context.Context, f *fleet, spec loadSpec, idPrefix string) loadResult {
	ctx, cancel := context.WithTimeout(ctx, spec.Deadline)
	defer cancel()
	res := loadResult{Name: spec.Name, Devices: spec.N, Concurrency: spec.Concurrency, CSR: spec.CSR, Errors: map[string]int{}}
	outs := make([]outcome, spec.N)
	sem := make(chan struct{}, max(spec.Concurrency, 1))
	var wg sync.WaitGroup
	start := time.Now()
	var lastLaunch time.Time
launch:
	for i := range spec.N {
		if spec.Rate > 0 {
			at := start.Add(time.Duration(float64(i) / spec.Rate * float64(time.Second)))
			if pause.For(ctx, time.Until(at)) != nil {
				break
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break launch
		}
		lastLaunch = time.Now()
		id := fmt.Sprintf("%s-%05d", idPrefix, i)
		wg.Go(func() {
			defer func() { <-sem }()
			outs[i] = f.provision(ctx, id, spec.CSR)
		})
	}
	wg.Wait()
	if span := lastLaunch.Sub(start).Seconds(); spec.N > 1 && span > 0.5 {
		res.OfferedRate = round(float64(spec.N-1)/span, 1)
	}

	var lat []time.Duration
	var end time.Time
	for _, o := range outs {
		res.Polls += o.Polls
		res.Throttled += o.Throttled
		res.Unavailable += o.Unavailable
		switch {
		case o.DeviceID == "" || o.Err == errStillInFlight:
			res.Pending++
		case o.Err != "":
			res.Failed++
			res.Errors[o.Err]++
		default:
			res.Assigned++
			lat = append(lat, o.Latency)
			if e := o.Start.Add(o.Latency); e.After(end) {
				end = e
			}
		}
	}
	if res.Assigned > 0 {
		res.Seconds = round(end.Sub(start).Seconds(), 2)
		res.DevicesPerSec = round(float64(res.Assigned)/end.Sub(start).Seconds(), 1)
	}
	res.Latency = percentilesOf(lat)
	res.outcomes = outs
	return res
}

// serviceLatency reads each assigned operation back and takes CreatedAt → AssignedAt.
func serviceLatency(ctx context.Context, st *store.Store, outs []outcome) (*percentiles, error) {
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, o := range outs {
		if o.Err != "" || o.OperationID == "" {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			op, err := st.GetOperation(ctx, o.DeviceID, o.OperationID)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			if !op.AssignedAt.IsZero() {
				lat = append(lat, op.AssignedAt.Sub(op.CreatedAt))
			}
		})
	}
	wg.Wait()
	if len(lat) == 0 {
		return nil, firstErr
	}
	p := percentilesOf(lat)
	return &p, nil
}

// percentilesOf uses the nearest-rank method.
func percentilesOf(d []time.Duration) percentiles {
	if len(d) == 0 {
		return percentiles{}
	}
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := func(p float64) float64 {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		return ms(s[min(max(i, 0), len(s)-1)])
	}
	return percentiles{P50: rank(50), P95: rank(95), P99: rank(99), Max: ms(s[len(s)-1])}
}

func ms(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 1) }

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}
