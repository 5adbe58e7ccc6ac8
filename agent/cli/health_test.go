package cli

import (
	"context"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/health"
)

// freeUDP is a loopback UDP address nothing listens on.
func freeUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
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
