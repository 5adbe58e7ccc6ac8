package health

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestTaint(t *testing.T) {
	tests := []struct {
		before, after Taint
		letters       string
		newBits       Taint
	}{
		{0, 45056, "OEK", 0},
		{45056, 45056 | TaintWarn, "WOEK", TaintWarn},
		{TaintWarn, TaintWarn | TaintDied, "DW", TaintDied},
		{TaintDied | TaintWarn, TaintDied | TaintWarn, "DW", 0},
		{0, 1, "P", 0}, // proprietary module: not a health signal
	}
	for _, tt := range tests {
		if got := tt.after.String(); got != tt.letters {
			t.Errorf("%d: letters %q, want %q", tt.after, got, tt.letters)
		}
		if got := NewBits(tt.before, tt.after); got != tt.newBits {
			t.Errorf("NewBits(%d, %d) = %d, want %d", tt.before, tt.after, got, tt.newBits)
		}
	}
	p := filepath.Join(t.TempDir(), "tainted")
	os.WriteFile(p, []byte("junk\n"), 0o644)
	if _, err := ReadTaint(p); err == nil {
		t.Fatal("junk taint accepted")
	}
}

func TestTaintWatcher(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tainted")
	set := func(v Taint) { os.WriteFile(p, []byte(strconv.FormatUint(uint64(v), 10)+"\n"), 0o644) }
	set(45056 | TaintWarn) // W before the agent started: not reported
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan Event, 8)
	go TaintWatcher{Path: p, Every: 5 * time.Millisecond}.Run(ctx, out)
	time.Sleep(30 * time.Millisecond)
	set(45056 | TaintWarn | TaintDied)
	select {
	case ev := <-out:
		if ev.Kind != KindOops || ev.Source != "taint" || !strings.Contains(ev.Header, "taint D") {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for the new D bit")
	}
	time.Sleep(30 * time.Millisecond)
	if len(out) != 0 {
		t.Fatalf("sticky bits reported again: %+v", <-out)
	}
}

func TestCommandCheck(t *testing.T) {
	ctx := context.Background()
	if err := (Command{Argv: []string{"/bin/true"}}).Check(ctx); err != nil {
		t.Fatal(err)
	}
	err := (Command{Argv: []string{"/bin/sh", "-c", "echo disk full >&2; exit 3"}}).Check(ctx)
	if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("failing command: %v", err)
	}
	// A hung check is killed with everything it started.
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	err = (Command{Argv: []string{"/bin/sh", "-c", "sleep 30 & echo $! > " + pidFile + "; wait"}, Timeout: 200 * time.Millisecond}).Check(ctx)
	if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("hung command: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("timeout took %v", d)
	}
	b, _ := os.ReadFile(pidFile)
	if pid := strings.TrimSpace(string(b)); pid != "" {
		time.Sleep(100 * time.Millisecond)
		// Gone, or a zombie waiting for a reaper: not running either way.
		if st, err := os.ReadFile("/proc/" + pid + "/stat"); err == nil && !strings.Contains(string(st), ") Z ") {
			t.Fatalf("child %s of the timed-out command still runs: %s", pid, st)
		}
	}
	if err := (Command{Argv: []string{"/nonexistent/check"}}).Check(ctx); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("missing program: %v", err)
	}
}

func TestCommandRun(t *testing.T) {
	dir := t.TempDir()
	flag := filepath.Join(dir, "healthy")
	os.WriteFile(flag, nil, 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan Event, 8)
	go Command{Argv: []string{"/usr/bin/test", "-e", flag}, Every: 10 * time.Millisecond, Failures: 3}.Run(ctx, out)
	time.Sleep(60 * time.Millisecond)
	if len(out) != 0 {
		t.Fatal("event while healthy")
	}
	os.Remove(flag)
	select {
	case ev := <-out:
		if ev.Kind != KindCommand || !strings.Contains(ev.Header, "failed 3 times") {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event after 3 failures")
	}
}
