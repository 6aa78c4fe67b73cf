package devstack

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// This file reads what the benchmark needs about the stack's processes from /proc: CPU
// time and resident memory of the handler, and, for a stack started elsewhere (make run),
// which process listens on the API port. Linux only; elsewhere the readers return errors
// and the benchmark reports the figures as unknown.

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat. The kernel exports
// it as 100 on every Linux architecture Go supports (sysconf(_SC_CLK_TCK) needs cgo).
const clockTicks = 100

// ProcStats is a snapshot of one process.
type ProcStats struct {
	CPU     time.Duration // user + system CPU time since the process started
	RSS     int64         // resident set size now, bytes (VmRSS)
	PeakRSS int64         // peak resident set size, bytes (VmHWM)
}

// PID returns the process ID of one of the stack's processes ("handler", "dpsemu",
// "azurite", "mosquitto"), or 0 if it is not running.
func (s *Stack) PID(name string) int {
	s.mu.Lock()
	cmd := s.procs[name]
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil || s.hasExited(name) {
		return 0
	}
	return cmd.Process.Pid
}

// ReadProc reads a process's CPU time and memory from /proc.
func ReadProc(pid int) (ProcStats, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return ProcStats{}, err
	}
	cpu, err := parseStatCPU(stat)
	if err != nil {
		return ProcStats{}, fmt.Errorf("%s/stat: %w", dir, err)
	}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return ProcStats{}, err
	}
	rss, peak, err := parseStatusMemory(status)
	if err != nil {
		return ProcStats{}, fmt.Errorf("%s/status: %w", dir, err)
	}
	return ProcStats{CPU: cpu, RSS: rss, PeakRSS: peak}, nil
}

// parseStatCPU returns utime + stime from a /proc/<pid>/stat line. The command name (field
// 2) is in parentheses and may itself hold spaces and parentheses, so fields are counted
// from the last ')'.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no command name")
	}
	// After ")": state(3) ppid(4) … utime(14) stime(15).
	f := strings.Fields(string(b[i+1:]))
	const utime, stime = 14 - 3, 15 - 3
	if len(f) <= stime {
		return 0, fmt.Errorf("%d fields after the command name, want more than %d", len(f), stime)
	}
	var ticks int64
	for _, k := range []int{utime, stime} {
		n, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil || n < 0 || n > 1<<36 { // 1<<36 ticks is 21 years of CPU; more would overflow a Duration
			return 0, fmt.Errorf("field %d is not a tick count: %q", k+3, f[k])
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / clockTicks), nil
}

// parseStatusMemory returns VmRSS and VmHWM, in bytes, from /proc/<pid>/status.
func parseStatusMemory(b []byte) (rss, peak int64, err error) {
	found := 0
	for line := range strings.SplitSeq(string(b), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		f := strings.Fields(value)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("%s: unexpected value %q", name, strings.TrimSpace(value))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 || kb > 1<<40 {
			return 0, 0, fmt.Errorf("%s: not a size: %q", name, f[0])
		}
		if name == "VmRSS" {
			rss = kb << 10
		} else {
			peak = kb << 10
		}
		found++
	}
	if found != 2 {
		return 0, 0, errors.New("VmRSS or VmHWM missing (a kernel thread, or not Linux)")
	}
	return rss, peak, nil
}

// ListenerPID returns the process listening on TCP port on the loopback or any address:
// how the benchmark finds the handler of a stack it did not start (make run).
func ListenerPID(port int) (int, error) {
	var inodes []string
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		inodes = append(inodes, listeningInodes(b, port)...)
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("nothing listens on port %d", port)
	}
	want := map[string]bool{}
	for _, in := range inodes {
		want["socket:["+in+"]"] = true
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue // another user's process, or gone
		}
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name())); err == nil && want[link] {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("the process listening on port %d is not visible to this user", port)
}

// listeningInodes returns the socket inodes in a /proc/net/tcp table that listen on port.
// Lines: "sl local_address rem_address st … uid timeout inode …", addresses as
// hex "ADDR:PORT", st 0A = LISTEN.
func listeningInodes(table []byte, port int) []string {
	var out []string
	for line := range strings.SplitSeq(string(table), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" {
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if err != nil || int(p) != port {
			continue
		}
		if _, err := strconv.ParseUint(f[9], 10, 64); err == nil && f[9] != "0" {
			out = append(out, f[9])
		}
	}
	return out
}
