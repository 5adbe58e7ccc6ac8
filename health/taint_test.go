package health

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestTaintLetters(t *testing.T) {
	tests := []struct {
		t    Taint
		want string
	}{
		{0, ""},
		{45056, "OEK"}, // an unsigned out-of-tree livepatch loaded
		{1, "P"},
		{TaintDied | TaintWarn | TaintLivepatch, "DWK"},
		{1<<20 - 1, "PFSRMBUDAWCIOELKXTNJ"},
		{1 << 19, "J"},
		{1 << 40, ""}, // a bit newer than the table
	}
	for _, tt := range tests {
		if got := tt.t.String(); got != tt.want {
			t.Errorf("Taint(%d) = %q, want %q", uint64(tt.t), got, tt.want)
		}
	}
}

func TestNewBits(t *testing.T) {
	tests := []struct {
		before, after, want Taint
	}{
		{45056, 45056, 0},
		{45056, 45056 | TaintWarn, TaintWarn},
		{45056, 45056 | TaintWarn | TaintDied, TaintWarn | TaintDied},
		{TaintDied, TaintDied | TaintWarn, TaintWarn},
		{0, 45056 | 1 | 1<<4, 0}, // K, O, E, P, M: not what a patch is judged by
		{TaintWarn, 0, 0},        // bits do not clear, but a lower value is no news
	}
	for _, tt := range tests {
		if got := NewBits(tt.before, tt.after); got != tt.want {
			t.Errorf("NewBits(%d, %d) = %d, want %d", tt.before, tt.after, got, tt.want)
		}
	}
}

func TestReadTaint(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		content string
		want    Taint
		ok      bool
	}{
		{"45056\n", 45056, true},
		{"0\n", 0, true},
		{" 512 \n", 512, true},
		{"", 0, false},
		{"-1\n", 0, false},
		{"0x200\n", 0, false},
		{"18446744073709551616\n", 0, false},
	}
	for i, tt := range tests {
		p := filepath.Join(dir, strconv.Itoa(i))
		if err := os.WriteFile(p, []byte(tt.content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := ReadTaint(p)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("%q: %d, %v", tt.content, got, err)
		}
		if err != nil && !strings.Contains(err.Error(), p) {
			t.Errorf("%q: error %v does not name the file", tt.content, err)
		}
	}
	if _, err := ReadTaint(filepath.Join(dir, "none")); err == nil {
		t.Error("missing file accepted")
	}
}

// watchTaint runs a watcher over a temp file from baseline; set writes
// the file.
func watchTaint(t *testing.T, baseline Taint) (set func(Taint), setRaw func(string), out chan Event, stop func() error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tainted")
	setRaw = func(s string) {
		// Replace, not rewrite: a poll never reads a half-written file.
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Error(err)
		}
		if err := os.Rename(tmp, p); err != nil {
			t.Error(err)
		}
	}
	set = func(v Taint) { setRaw(strconv.FormatUint(uint64(v), 10) + "\n") }
	set(baseline)
	ctx, cancel := context.WithCancel(context.Background())
	out = make(chan Event, 8)
	done := make(chan error, 1)
	go func() { done <- (TaintWatcher{Path: p, Every: 2 * time.Millisecond}).RunFrom(ctx, baseline, out) }()
	stop = sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			t.Error("watcher did not stop")
			return nil
		}
	})
	t.Cleanup(func() { stop() })
	return set, setRaw, out, stop
}

func nextTaintEvent(t *testing.T, out chan Event) Event {
	t.Helper()
	return recv(t, out, "a taint event")
}

func quietTaint(t *testing.T, out chan Event) {
	t.Helper()
	time.Sleep(40 * time.Millisecond) // many polls
	select {
	case ev := <-out:
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

func TestTaintWatcherOncePerBit(t *testing.T) {
	base := Taint(45056)
	set, setRaw, out, stop := watchTaint(t, base)
	quietTaint(t, out)

	set(base | TaintWarn)
	ev := nextTaintEvent(t, out)
	if ev.Kind != KindWarning || ev.Source != "taint" || !strings.Contains(ev.Header, "taint W") || !strings.Contains(ev.Header, "WOEK") || ev.At.IsZero() {
		t.Fatalf("event %+v", ev)
	}
	quietTaint(t, out) // W stays set: said once

	set(base | TaintWarn | TaintDied)
	if ev := nextTaintEvent(t, out); ev.Kind != KindOops || !strings.Contains(ev.Header, "taint D") {
		t.Fatalf("event %+v", ev)
	}
	quietTaint(t, out)

	// An unreadable value is a miss, not the end of the watch.
	setRaw("")
	quietTaint(t, out)
	set(base | TaintWarn | TaintDied)
	quietTaint(t, out)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestTaintWatcherBothBitsAtOnce(t *testing.T) {
	set, _, out, _ := watchTaint(t, 0)
	set(TaintWarn | TaintDied | TaintLivepatch)
	a, b := nextTaintEvent(t, out), nextTaintEvent(t, out)
	if a.Kind != KindOops || b.Kind != KindWarning {
		t.Fatalf("events %s, %s; want the oops first", a.Kind, b.Kind)
	}
	quietTaint(t, out)
}

func TestTaintWatcherBaseline(t *testing.T) {
	// D was set before the patch went in: that oops is an earlier story.
	set, _, out, _ := watchTaint(t, 45056|TaintDied)
	set(45056 | TaintDied)
	quietTaint(t, out)
	set(45056 | TaintDied | TaintWarn)
	if ev := nextTaintEvent(t, out); ev.Kind != KindWarning {
		t.Fatalf("event %+v", ev)
	}
}

func TestTaintWatcherMissingFile(t *testing.T) {
	err := TaintWatcher{Path: filepath.Join(t.TempDir(), "none")}.Run(context.Background(), make(chan Event))
	if err == nil {
		t.Fatal("a watcher without a taint file started")
	}
}

func TestExplained(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	died := Event{Kind: KindOops, Source: "taint", At: at(3 * time.Second)}
	warned := Event{Kind: KindWarning, Source: "taint", At: at(3 * time.Second)}
	tests := []struct {
		name    string
		reports []Event
		taint   Event
		want    bool
	}{
		{"nothing reported", nil, died, false},
		{"the oops sets D", []Event{{Kind: KindOops, At: t0}}, died, true},
		{"a BUG sets D", []Event{{Kind: KindKernelBug, At: t0}}, died, true},
		{"an oops does not set W", []Event{{Kind: KindOops, At: t0}}, warned, false},
		{"a WARNING sets W", []Event{{Kind: KindWarning, At: t0}}, warned, true},
		{"a WARNING does not set D", []Event{{Kind: KindWarning, At: t0}}, died, false},
		{"a lockup sets neither", []Event{{Kind: KindSoftLockup, At: t0}, {Kind: KindHungTask, At: t0}}, died, false},
		{"too long ago", []Event{{Kind: KindOops, At: at(-20 * time.Second)}}, died, false},
		{"reported after the bit appeared", []Event{{Kind: KindOops, At: at(4 * time.Second)}}, died, false},
		{"the latest report counts", []Event{{Kind: KindOops, At: at(-20 * time.Second)}, {Kind: KindBug, At: at(time.Second)}}, died, true},
	}
	for _, tt := range tests {
		x := &Explained{Within: 10 * time.Second}
		for _, r := range tt.reports {
			x.Report(r)
		}
		if got := x.Explains(tt.taint); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Skip drops what is already known; the rest still comes.
func TestTaintWatcherSkip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tainted")
	if err := os.WriteFile(p, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan Event, 4)
	w := TaintWatcher{Path: p, Every: 2 * time.Millisecond, Skip: func(ev Event) bool { return ev.Kind == KindOops }}
	go w.RunFrom(ctx, 0, out)
	if err := os.WriteFile(p, []byte(strconv.FormatUint(uint64(TaintDied|TaintWarn), 10)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ev := nextTaintEvent(t, out); ev.Kind != KindWarning {
		t.Fatalf("event %+v, want only the W bit's", ev)
	}
	quietTaint(t, out)
}

// The kernel sets D in die() before it prints the end of the report: a
// tick in between saw the bit before the kernel log's report of the same
// oops had closed, and the one oops became two events, the taint one first
// (TestSystemRealKernel in a fresh root: the rollback was taint's, the
// kmsg report second). A new bit now waits Grace for the log's report.
func TestTaintWatcherWaitsForTheLogsReport(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tainted")
	if err := os.WriteFile(p, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan Event, 4)
	var mu sync.Mutex
	reported := false
	w := TaintWatcher{Path: p, Every: 2 * time.Millisecond, Grace: 2 * time.Second,
		Skip: func(ev Event) bool { mu.Lock(); defer mu.Unlock(); return reported && ev.Kind == KindOops }}
	go w.RunFrom(ctx, 0, out)
	if err := os.WriteFile(p, []byte(strconv.FormatUint(uint64(TaintDied), 10)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The log's report closes after the watcher has seen the bit (its
	// 2 ms ticks have run many times by now), within the grace.
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	reported = true
	mu.Unlock()
	select {
	case ev := <-out:
		t.Fatalf("a taint event for an oops the kernel log reported within the grace: %+v", ev)
	case <-time.After(4 * time.Second):
	}
}
