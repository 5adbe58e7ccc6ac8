package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
)

// procStatus reads one numeric field of a /proc status file.
func procStatus(b *testing.B, path, field string) int64 {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0 // a thread that just exited
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	b.Fatalf("no %s in %s", field, path)
	return 0
}

// switches sums context switches over every thread of the process.
func switches(b *testing.B) int64 {
	tasks, _ := filepath.Glob("/proc/self/task/*/status")
	var n int64
	for _, t := range tasks {
		n += procStatus(b, t, "voluntary_ctxt_switches") + procStatus(b, t, "nonvoluntary_ctxt_switches")
	}
	return n
}

// BenchmarkDaemonSteadyState runs the daemon through an hour's worth of
// unchanged polls (360 at the shortest allowed interval, 10 s, compressed
// to 2 ms each), then leaves it idle between polls, and reports its
// resident memory, heap, goroutines and wakeups (context switches of the
// whole test process, an upper bound) per idle second.
func BenchmarkDaemonSteadyState(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h := newHost(b, 1)
	h.publish(priv, 1, []int{1})
	h.polls(pub)
	for b.Loop() {
		d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: 2 * time.Millisecond}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		polls := 0
		var last time.Time
		for polls < 360 {
			time.Sleep(time.Millisecond)
			st, err := (&state.Store{Dir: h.stateDir}).Load()
			if err == nil && st.LastPoll != nil && !st.LastPoll.At.Equal(last) {
				last = st.LastPoll.At
				polls++
			}
			h.now = h.now.Add(10 * time.Second)
		}
		cancel()
		<-done
		// Idle: a long interval, one poll at start, then nothing to do.
		d = &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}}
		ctx, cancel = context.WithCancel(context.Background())
		go func() { done <- d.Run(ctx) }()
		time.Sleep(500 * time.Millisecond)
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		g := runtime.NumGoroutine()
		sw0 := switches(b)
		idle := 5 * time.Second
		time.Sleep(idle)
		sw := switches(b) - sw0
		b.ReportMetric(float64(procStatus(b, "/proc/self/status", "VmRSS")), "rss-KiB")
		b.ReportMetric(float64(ms.HeapInuse)/1024, "heap-KiB")
		b.ReportMetric(float64(g), "goroutines")
		b.ReportMetric(float64(sw)/idle.Seconds(), "ctxsw/idle-s")
		cancel()
		<-done
	}
}
