package health

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
)

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// freeUDP is a loopback UDP address nothing listens on.
func freeUDP(t *testing.T) string {
	return "127.0.0.1:" + strconv.Itoa(nginxtest.FreePort(t, "udp"))
}

// netconsoleOops sends a one-line oops to addr until mon reports it.
func netconsoleOops(t *testing.T, mon *Monitor, addr string) Event {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// One extended record each, from the kernel (facility 0) at KERN_DEFAULT.
	for i, l := range []string{"Oops: 0002 [#1] PREEMPT SMP NOPTI", "---[ end trace 0000000000000000 ]---"} {
		if _, err := fmt.Fprintf(c, "6.1.0-test,4,%d,100,-;%s\n", i+1, l); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case ev := <-mon.Events():
		return ev
	case <-time.After(5 * time.Second):
		t.Fatalf("no event from the netconsole receiver on %s", addr)
		return Event{}
	}
}

// A reload that leaves the sources' settings alone keeps them running; one
// that changes them (here the netconsole port) restarts them, and the old
// port is let go.
func TestHealthSourcesFollowReload(t *testing.T) {
	root := t.TempDir()
	opts := func(netconsole string) MonitorOptions {
		return MonitorOptions{Root: root, Release: "6.1.0-test", Netconsole: netconsole, NetconsoleAllow: loopback, TaintInterval: 5 * time.Second}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := freeUDP(t), freeUDP(t)
	mon := StartMonitor(ctx, opts(a), nil)
	defer func() { mon.Stop() }()
	events := mon.Events()
	if ev := netconsoleOops(t, mon, a); ev.Kind != KindOops || ev.Source != "netconsole" {
		t.Fatalf("event %+v", ev)
	}
	if mon.Reload(opts(a)) {
		t.Fatal("sources restarted for unchanged options")
	}
	if !mon.Reload(opts(b)) {
		t.Fatal("sources kept for a changed netconsole address")
	}
	if mon.Events() != events {
		t.Fatal("the events channel changed across a reload")
	}
	if ev := netconsoleOops(t, mon, b); ev.Kind != KindOops {
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
	o := MonitorOptions{Root: t.TempDir(), Release: "6.1.0-test", Netconsole: freeUDP(t), NetconsoleAllow: loopback, Taint: true, TaintInterval: 10 * time.Millisecond}
	tainted := filepath.Join(o.Root, "proc/sys/kernel/tainted")
	set := func(v Taint) {
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
	set(TaintLivepatch)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mon := StartMonitor(ctx, o, nil)
	defer mon.Stop()
	if ev := netconsoleOops(t, mon, o.Netconsole); ev.Kind != KindOops {
		t.Fatalf("event %+v", ev)
	}
	set(TaintLivepatch | TaintDied)    // the oops's own bit
	time.Sleep(100 * time.Millisecond) // ten polls
	set(TaintLivepatch | TaintDied | TaintWarn)
	select {
	case ev := <-mon.Events():
		if ev.Source != "taint" || ev.Kind != KindWarning {
			t.Fatalf("event %+v, want only the W bit's", ev)
		}
	case <-time.After(30 * time.Second): // each new bit waits taintGrace (3 s) for the log first
		t.Fatal("no event for the unexplained W bit")
	}
}
