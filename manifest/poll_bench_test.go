package manifest

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
)

// countingProxy forwards TCP to target and counts the bytes both ways.
type countingProxy struct {
	ln     net.Listener
	up, dn atomic.Int64
	target string
}

func startProxy(b *testing.B, target string) *countingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p := &countingProxy{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(countWriter{s, &p.up}, c); s.Close() }()
			go func() { io.Copy(countWriter{c, &p.dn}, s); c.Close() }()
		}
	}()
	b.Cleanup(func() { ln.Close() })
	return p
}

// countWriter counts bytes as they pass, not when the connection closes.
type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPollNotModified is the steady state: a poll of an unchanged
// manifest against a real nginx on loopback (conditional GET, 304). It
// reports CPU time and bytes on the wire per poll.
func BenchmarkPollNotModified(b *testing.B) {
	k := newTestKey(b)
	www := b.TempDir()
	payload, _ := MarshalJSON(benchManifest(1000))
	env, err := SignPayload(context.Background(), payload, k.signer)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(www, "manifest.json"), env, 0o644); err != nil {
		b.Fatal(err)
	}
	srv := nginxtest.Start(b, www)
	proxy := startProxy(b, srv.URL[len("http://"):])
	f, err := NewFetcher(FetcherConfig{URL: "http://" + proxy.ln.Addr().String() + "/manifest.json", Timeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	src := &Source{Fetcher: f, Trust: Trust{Keys: keyring(k), Threshold: 1}, Store: &MemVersionStore{}, Cache: testCache(b.TempDir()),
		Now: func() time.Time { return time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC) }}
	ctx := context.Background()
	if r, err := src.Poll(ctx); err != nil || !r.Changed {
		b.Fatalf("first poll: %+v %v", r, err)
	}
	// Only the unchanged polls count: wait for the first body to be copied.
	time.Sleep(50 * time.Millisecond)
	up0, dn0 := proxy.up.Load(), proxy.dn.Load()
	cpu0 := cpuTime()
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		r, err := src.Poll(ctx)
		if err != nil || r.Changed || r.Status != 304 {
			b.Fatalf("poll: %+v %v", r, err)
		}
		n++
	}
	cpu := cpuTime() - cpu0
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-us/poll")
	b.ReportMetric(float64(proxy.up.Load()-up0)/float64(n), "bytes-sent/poll")
	b.ReportMetric(float64(proxy.dn.Load()-dn0)/float64(n), "bytes-received/poll")
}
