package cli

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The notifier speaks to a real unixgram socket, as systemd's is.
func TestSdNotifyAndWatchdog(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "100000") // 100 ms: pings every 50 ms
	t.Setenv("WATCHDOG_PID", "")
	n := sdNotifier{}
	for _, f := range []func() error{n.Ready, func() error { return n.Status("soaking klp_cmdline_2@2") }, n.Reloading, n.Stopping} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	go watchdog(ctx)
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
