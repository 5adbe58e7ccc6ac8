package daemon

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/klp-agent/klp-agent/agent"
)

// notifySocket is a unixgram socket in systemd's place, with the watchdog
// set to every.
func notifySocket(t *testing.T, every time.Duration) *net.UnixConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", strconv.FormatInt(every.Microseconds(), 10))
	t.Setenv("WATCHDOG_PID", "")
	return conn
}

// The notifier speaks to a real unixgram socket, as systemd's is.
func TestSdNotifyAndWatchdog(t *testing.T) {
	conn := notifySocket(t, 100*time.Millisecond) // pings every 50 ms
	n := sdNotifier{}
	for _, f := range []func() error{n.Ready, func() error { return n.Status("soaking klp_cmdline_2@2") }, n.Reloading, n.Stopping} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	go watchdog(ctx, nil, time.Hour, zap.NewNop())
	var got []string
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for pings := 0; pings < 2; {
		k, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		msg := string(buf[:k])
		got = append(got, msg)
		if msg == "WATCHDOG=1" {
			pings++
		}
	}
	cancel()
	want := []string{"READY=1", "STATUS=soaking klp_cmdline_2@2", "RELOADING=1", "STOPPING=1", "WATCHDOG=1", "WATCHDOG=1"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("datagrams %q, want %q", got, want)
	}
}

// The pings stop while one step of work runs past the limit, and resume
// when the daemon is idle again.
func TestWatchdogStopsForAStuckStep(t *testing.T) {
	conn := notifySocket(t, 40*time.Millisecond) // pings every 20 ms
	core, logs := observer.New(zap.InfoLevel)
	hb := &agent.Heartbeat{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go watchdog(ctx, hb, 200*time.Millisecond, zap.New(core))
	buf := make([]byte, 64)
	// ping waits up to d for the next ping.
	ping := func(d time.Duration) bool {
		conn.SetReadDeadline(time.Now().Add(d))
		n, err := conn.Read(buf)
		if err != nil {
			return false
		}
		if string(buf[:n]) != "WATCHDOG=1" {
			t.Fatalf("datagram %q", buf[:n])
		}
		return true
	}
	if !ping(5 * time.Second) {
		t.Fatal("no ping while idle")
	}
	hb.Begin() // a step starts, and hangs
	start := time.Now()
	for ping(time.Second) {
		if time.Since(start) > 5*time.Second {
			t.Fatal("pings go on for a step stuck past the limit")
		}
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("pings stopped %v into the step, before the limit", d)
	}
	if logs.FilterMessageSnippet("watchdog pings stopped").Len() != 1 {
		t.Fatalf("log: %v", logs.All())
	}
	hb.End()
	if !ping(5 * time.Second) {
		t.Fatal("no ping once idle again")
	}
}
