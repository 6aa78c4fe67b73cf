package devstack

import (
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want time.Duration
		ok   bool
	}{
		{"ok/plain", "1234 (handler) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 8 0 100 0 0", 3 * time.Second, true},
		{"ok/name with spaces and parens", "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0", 30 * time.Millisecond, true},
		{"fail/no name", "1234 handler S 1", 0, false},
		{"fail/short", "1 (x) S 1 2 3", 0, false},
		{"fail/not a number", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 2 0", 0, false},
		{"fail/negative", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 -5 2 0", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tc.in))
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("parseStatCPU = %v, %v; want %v, ok=%v", got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestParseStatusMemory(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		rss, peak int64
		ok        bool
	}{
		{"ok/both", "Name:\thandler\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads: 8\n", 10240 << 10, 20480 << 10, true},
		{"fail/missing", "Name:\tkthreadd\nThreads: 1\n", 0, 0, false},
		{"fail/unit", "VmHWM:\t1 MB\nVmRSS:\t1 kB\n", 0, 0, false},
		{"fail/not a number", "VmHWM:\tx kB\nVmRSS:\t1 kB\n", 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rss, peak, err := parseStatusMemory([]byte(tc.in))
			if (err == nil) != tc.ok || rss != tc.rss || peak != tc.peak {
				t.Errorf("parseStatusMemory = %d, %d, %v; want %d, %d, ok=%v", rss, peak, err, tc.rss, tc.peak, tc.ok)
			}
		})
	}
}

func TestListeningInodes(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1B9F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1B9F 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
`
	got := listeningInodes([]byte(table), 7071)
	if len(got) != 1 || got[0] != "4242" {
		t.Errorf("listeningInodes(7071) = %v, want [4242] (the LISTEN socket only)", got)
	}
	if got := listeningInodes([]byte(table), 1); len(got) != 0 {
		t.Errorf("listeningInodes(1) = %v, want none", got)
	}
}

// The readers against this very process: the figures must be plausible, and the listener
// of a port we open must be us.
func TestReadProcSelf(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	// Burn a little CPU so the tick count is not zero.
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	st, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.CPU <= 0 || st.RSS <= 0 || st.PeakRSS < st.RSS {
		t.Errorf("ReadProc(self) = %+v: want CPU > 0, RSS > 0, peak ≥ RSS", st)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pid, err := ListenerPID(ln.Addr().(*net.TCPAddr).Port)
	if err != nil || pid != os.Getpid() {
		t.Errorf("ListenerPID = %d, %v; want %d", pid, err, os.Getpid())
	}
}

func FuzzParseStatCPU(f *testing.F) {
	f.Add([]byte("1234 (handler) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 8 0 100 0 0"))
	f.Add([]byte("7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := parseStatCPU(b); err == nil && d < 0 {
			t.Errorf("negative CPU time %v", d)
		}
	})
}

func FuzzParseStatusMemory(f *testing.F) {
	f.Add([]byte("VmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n"))
	f.Add([]byte("VmRSS: 1 kB\nVmRSS: 2 kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if rss, peak, err := parseStatusMemory(b); err == nil && (rss < 0 || peak < 0) {
			t.Errorf("negative sizes %d %d", rss, peak)
		}
	})
}

func FuzzListeningInodes(f *testing.F) {
	f.Add([]byte("   0: 0100007F:1B9F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n"), 7071)
	f.Fuzz(func(t *testing.T, b []byte, port int) {
		for _, in := range listeningInodes(b, port) {
			if in == "" || in == "0" {
				t.Errorf("bad inode %q", in)
			}
		}
	})
}
