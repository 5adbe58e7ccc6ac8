package health

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCommandChecks(t *testing.T) {
	tests := []struct {
		name     string
		argv     []string
		timeout  time.Duration
		ok       bool
		exit     int
		timedOut bool
		output   string // the captured output ends with this
	}{
		{"exit 0", []string{"/bin/true"}, 0, true, 0, false, ""},
		{"exit 1", []string{"/bin/false"}, 0, false, 1, false, ""},
		{"exit 3 with a reason", []string{"sh", "-c", "echo checking; echo disk full >&2; exit 3"}, 0, false, 3, false, "checking\ndisk full\n"},
		// No shell: "$(echo x)" reaches test(1) as it is and is not "x".
		{"argv is not shell", []string{"test", "$(echo x)", "=", "x"}, 0, false, 1, false, ""},
		{"missing program", []string{"/nonexistent/check"}, 0, false, -1, false, ""},
		{"hung", []string{"sleep", "10"}, 200 * time.Millisecond, false, -1, true, ""},
		{"killed by a signal", []string{"sh", "-c", "kill -TERM $$"}, 0, false, -1, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := Command{Argv: tt.argv, Timeout: tt.timeout}.Check(context.Background())
			if d := time.Since(start); d > 5*time.Second { // not the 10 s of sleep
				t.Fatalf("check took %v", d)
			}
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ce *CheckError
			if !errors.Is(err, ErrUnhealthy) || !errors.As(err, &ce) {
				t.Fatalf("error %v, want a *CheckError wrapping ErrUnhealthy", err)
			}
			if ce.ExitCode != tt.exit || ce.TimedOut != tt.timedOut || errors.Is(err, context.DeadlineExceeded) != tt.timedOut {
				t.Fatalf("exit %d timed out %v (%v)", ce.ExitCode, ce.TimedOut, err)
			}
			if !strings.HasSuffix(ce.Output, tt.output) || !strings.HasPrefix(err.Error(), "health command "+tt.argv[0]+": ") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("output %q, error %q", ce.Output, err)
			}
			if tt.output != "" && !strings.Contains(err.Error(), "disk full") {
				t.Fatalf("error %q lacks the output's end", err)
			}
		})
	}
}

// gone reports whether the process in pidFile has ended (a zombie waiting
// for its reaper has).
func gone(t *testing.T, pidFile string) bool {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	pid := strings.TrimSpace(string(b))
	if err != nil || pid == "" {
		t.Fatalf("no pid: %v", err)
	}
	st, err := os.ReadFile("/proc/" + pid + "/stat")
	return err != nil || strings.Contains(string(st), ") Z ")
}

func waitGone(t *testing.T, pidFile string) {
	t.Helper()
	for range 100 {
		if gone(t, pidFile) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("a process the check started still runs")
}

func TestCommandLeavesNothingRunning(t *testing.T) {
	tests := []struct {
		name    string
		script  string // $1 is the pid file
		timeout time.Duration
		ok      bool
		within  time.Duration
	}{
		{"timed out, child too", "sleep 10 & echo $! > $1; wait", 200 * time.Millisecond, false, 5 * time.Second},
		{"exit 0, background child left", "sleep 10 >/dev/null 2>&1 & echo $! > $1; exit 0", 0, true, 5 * time.Second},
		// The child holds the output open: the exit status still decides,
		// after WaitDelay.
		{"exit 0, child holds the output", "sleep 10 & echo $! > $1; exit 0", 0, true, 6 * time.Second},
		{"exit 1, background child left", "sleep 10 >/dev/null 2>&1 & echo $! > $1; exit 1", 0, false, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "pid")
			start := time.Now()
			err := Command{Argv: []string{"/bin/sh", "-c", tt.script, "sh", pidFile}, Timeout: tt.timeout}.Check(context.Background())
			if d := time.Since(start); d > tt.within {
				t.Fatalf("check took %v", d)
			}
			if (err == nil) != tt.ok {
				t.Fatalf("error %v", err)
			}
			waitGone(t, pidFile)
		})
	}
}

func TestCommandOutputBounded(t *testing.T) {
	err := Command{Argv: []string{"sh", "-c", `head -c 100000 /dev/zero | tr '\0' a; echo; echo the end; exit 2`}}.Check(context.Background())
	var ce *CheckError
	if !errors.As(err, &ce) || len(ce.Output) != MaxCommandOutput || !strings.HasSuffix(ce.Output, "aaa\nthe end\n") {
		t.Fatalf("output %d bytes, ends %q", len(ce.Output), ce.Output[max(0, len(ce.Output)-20):])
	}
	if len(err.Error()) > 500 {
		t.Fatalf("error is %d bytes", len(err.Error()))
	}

	var tb tailBuffer
	var all bytes.Buffer
	for i, n := range []int{10, 4000, 100, 5000, 1, 4095, 3} {
		p := bytes.Repeat([]byte{byte('a' + i)}, n)
		tb.Write(p)
		all.Write(p)
		want := all.Bytes()[max(0, all.Len()-MaxCommandOutput):]
		if !bytes.Equal(tb.b, want) {
			t.Fatalf("after %d writes: %d bytes kept, want the last %d", i+1, len(tb.b), len(want))
		}
	}
}

// The agent stopping is not the service failing.
func TestCommandCheckCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	err := Command{Argv: []string{"sleep", "10"}}.Check(ctx)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnhealthy) {
		t.Fatalf("error %v", err)
	}
	if err := (Command{}).Check(context.Background()); err == nil || errors.Is(err, ErrUnhealthy) {
		t.Fatalf("empty argv: %v", err)
	}
}

func TestCommandRunOncePerStreak(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "healthy")
	healthy := func(ok bool) {
		if ok {
			os.WriteFile(flag, nil, 0o644)
		} else {
			os.Remove(flag)
		}
	}
	healthy(true)
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Event, 8)
	done := make(chan error, 1)
	c := Command{Argv: []string{"/bin/sh", "-c", `test -e "$1" || { echo service down; exit 1; }`, "sh", flag}, Every: 5 * time.Millisecond, Failures: 2}
	go func() { done <- c.Run(ctx, out) }()
	quiet := func() {
		t.Helper()
		time.Sleep(80 * time.Millisecond) // several checks
		if len(out) != 0 {
			t.Fatalf("unexpected event %+v", <-out)
		}
	}
	next := func() Event { t.Helper(); return recv(t, out, "an event") }
	quiet()
	for streak := 0; streak < 2; streak++ {
		healthy(false)
		ev := next()
		if ev.Kind != KindCommand || ev.Source != "command" || ev.Kind.CrashClass() ||
			ev.Header != "health command /bin/sh failed 2 times in a row: exit status 1: service down" ||
			len(ev.Lines) != 1 || ev.Lines[0] != "service down" {
			t.Fatalf("event %+v", ev)
		}
		quiet() // still failing: told once
		healthy(true)
		quiet() // a success starts the count again
	}
	cancel()
	if err := recv(t, done, "Run to stop"); err != nil {
		t.Fatal(err)
	}
	if err := (Command{}).Run(context.Background(), out); err == nil {
		t.Fatal("Run with no argv")
	}
}

// Stopping the agent ends a check in progress at once, with no event.
func TestCommandRunStopsMidCheck(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Event, 1)
	done := make(chan error, 1)
	go func() {
		done <- (Command{Argv: []string{"sleep", "10"}, Every: time.Millisecond, Failures: 1}).Run(ctx, out)
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	cancel()
	recv(t, done, "Run to stop")
	if d := time.Since(start); d > 5*time.Second || len(out) != 0 {
		t.Fatalf("stopped after %v, %d events", d, len(out))
	}
}
