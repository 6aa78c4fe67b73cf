package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/iotprov/iotprov/internal/devstack"
	"github.com/iotprov/iotprov/internal/pause"
)

// coldStartResult is the handler started as the Functions host starts it.
type coldStartResult struct {
	Runs          int         `json:"runs"`
	Startup       percentiles `json:"startup"` // exec → first answer on GET /
	MedianMs      float64     `json:"medianMs"`
	BinaryBytes   int64       `json:"binaryBytes"`
	IdleRSSBytes  int64       `json:"idleRssBytes"`  // one second after the first answer
	IdlePeakBytes int64       `json:"idlePeakBytes"` // VmHWM at the same moment
}

// measureColdStart starts the handler binary runs times in Functions mode
// (FUNCTIONS_CUSTOMHANDLER_PORT set, as the host does) with env, and times each from exec
// to the first HTTP answer on GET / — the host's readiness probe. The handler makes no
// network call before it serves, so storage need not be up.
func measureColdStart(ctx context.Context, handlerBin string, env []string, runs int) (*coldStartResult, error) {
	fi, err := os.Stat(handlerBin)
	if err != nil {
		return nil, err
	}
	res := &coldStartResult{Runs: runs, BinaryBytes: fi.Size()}
	hc := &http.Client{Timeout: 200 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	var times []time.Duration
	for i := range runs {
		last := i == runs-1
		d, idle, err := coldStartOnce(ctx, hc, handlerBin, env, last)
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", i+1, err)
		}
		times = append(times, d)
		if last && idle != nil {
			res.IdleRSSBytes, res.IdlePeakBytes = idle.RSS, idle.PeakRSS
		}
	}
	res.Startup = percentilesOf(times)
	res.MedianMs = res.Startup.P50
	return res, nil
}

func coldStartOnce(ctx context.Context, hc *http.Client, bin string, env []string, measureIdle bool) (time.Duration, *devstack.ProcStats, error) {
	port, err := freePort()
	if err != nil {
		return 0, nil, err
	}
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), env...), "FUNCTIONS_CUSTOMHANDLER_PORT="+strconv.Itoa(port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer // a handler that refuses to start says why in one line
	cmd.Stderr = &stderr
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	var took time.Duration
	for took == 0 {
		if time.Since(start) > 10*time.Second {
			return 0, nil, errors.New("no answer on GET / within 10s")
		}
		select {
		case err := <-exited:
			exited <- err // for the deferred wait
			return 0, nil, fmt.Errorf("the handler exited at start (%v): %s", err, bytes.TrimSpace(stderr.Bytes()))
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if res, err := hc.Do(req); err == nil {
			res.Body.Close()
			took = time.Since(start)
			break
		}
		if pause.For(ctx, time.Millisecond) != nil {
			return 0, nil, ctx.Err()
		}
	}
	if !measureIdle {
		return took, nil, nil
	}
	_ = pause.For(ctx, time.Second)
	st, err := devstack.ReadProc(cmd.Process.Pid)
	if err != nil {
		return took, nil, nil
	}
	return took, &st, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
