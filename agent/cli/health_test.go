package cli

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
)

// freeUDP is a loopback UDP address nothing listens on.
func freeUDP(t *testing.T) string {
	return "127.0.0.1:" + strconv.Itoa(nginxtest.FreePort(t, "udp"))
}

// netconsoleOops sends a one-line oops to addr until mon reports it.
func netconsoleOops(t *testing.T, mon *healthMonitor, addr string) health.Event {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("Oops: 0002 [#1] PREEMPT SMP NOPTI\n---[ end trace 0000000000000000 ]---\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-mon.Events:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatalf("no event from the netconsole receiver on %s", addr)
		return health.Event{}
	}
}

// A reload that leaves the sources' settings alone keeps them running; one
// that changes them (here the netconsole port) restarts them, and the old
// port is let go.
func TestHealthSourcesFollowReload(t *testing.T) {
	cfg := func(netconsole string) *config.Loaded {
		l := &config.Loaded{Config: config.Default()}
		l.Health.Kmsg, l.Health.Taint = false, false
		l.Health.Netconsole = netconsole
		l.Paths.Root = t.TempDir()
		return l
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := freeUDP(t), freeUDP(t)
	first := cfg(a)
	mon := startHealth(ctx, first, "6.1.0-test", zap.NewNop())
	defer func() { mon.stop() }()
	if ev := netconsoleOops(t, mon, a); ev.Kind != health.KindOops || ev.Source != "netconsole" {
		t.Fatalf("event %+v", ev)
	}

	same := cfg(a)
	same.Paths.Root = first.Paths.Root
	same.Health.Policy.Attributed = nil // policy is the daemon's: no restart
	if got := mon.reload(ctx, same, "6.1.0-test", zap.NewNop()); got != mon {
		t.Fatal("sources restarted for an unchanged configuration")
	}

	moved := cfg(b)
	moved.Paths.Root = first.Paths.Root
	next := mon.reload(ctx, moved, "6.1.0-test", zap.NewNop())
	if next == mon {
		t.Fatal("sources kept for a changed netconsole address")
	}
	mon = next
	if ev := netconsoleOops(t, mon, b); ev.Kind != health.KindOops {
		t.Fatalf("event %+v", ev)
	}
	// The old port is free again.
	c, err := net.ListenPacket("udp", a)
	if err != nil {
		t.Fatalf("old netconsole port still held: %v", err)
	}
	c.Close()
}

// The D bit of an oops the kernel log already reported is not a second
// crash (it would count against whatever patch the rollback left); a W bit
// no report explains still comes through.
func TestTaintExplainedByTheLog(t *testing.T) {
	l := &config.Loaded{Config: config.Default()}
	l.Paths.Root = t.TempDir()
	l.Health.Kmsg = false
	l.Health.Netconsole = freeUDP(t)
	l.Health.TaintInterval = 10 * time.Millisecond
	tainted := filepath.Join(l.Paths.Root, "proc/sys/kernel/tainted")
	set := func(v health.Taint) {
		t.Helper()
		tmp := tainted + ".tmp"
		if err := os.WriteFile(tmp, []byte(strconv.FormatUint(uint64(v), 10)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, tainted); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(tainted), 0o755); err != nil {
		t.Fatal(err)
	}
	set(health.TaintLivepatch)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mon := startHealth(ctx, l, "6.1.0-test", zap.NewNop())
	defer mon.stop()
	if ev := netconsoleOops(t, mon, l.Health.Netconsole); ev.Kind != health.KindOops {
		t.Fatalf("event %+v", ev)
	}
	set(health.TaintLivepatch | health.TaintDied) // the oops's own bit
	time.Sleep(100 * time.Millisecond)            // ten polls
	set(health.TaintLivepatch | health.TaintDied | health.TaintWarn)
	select {
	case ev := <-mon.Events:
		if ev.Source != "taint" || ev.Kind != health.KindWarning {
			t.Fatalf("event %+v, want only the W bit's", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for the unexplained W bit")
	}
}
