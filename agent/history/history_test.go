package history

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testLog(t *testing.T, max int64) Log {
	dir := t.TempDir()
	return Log{Path: filepath.Join(dir, "history.jsonl"), Old: filepath.Join(dir, "history.jsonl.1"), Max: max}
}

func TestAppendRead(t *testing.T) {
	l := testLog(t, 0)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	want := []Event{
		{Time: t0, Kind: KindApply, Kernel: "k", Patch: "p", Level: 1, Duration: 2 * time.Second},
		{Time: t0.Add(time.Hour), Kind: KindRollback, Kernel: "k", Patch: "p", Level: 1, Cause: "health", Reason: "oops", To: "no patch"},
	}
	for _, ev := range want {
		if err := l.Append(ev); err != nil {
			t.Fatal(err)
		}
	}
	got, skipped, err := l.Read()
	if err != nil || skipped != 0 || len(got) != 2 || got[1].Cause != "health" || got[0].Duration != 2*time.Second {
		t.Fatalf("read %+v, %d skipped, %v", got, skipped, err)
	}
	fi, err := os.Stat(l.Path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode(), err)
	}
}

// The history never takes more than twice Max: at the limit the file is
// renamed to .1 (replacing the older one) and the newest events are kept.
func TestRotationBoundsSize(t *testing.T) {
	const max = 4096
	l := testLog(t, max)
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	const n = 1000
	for i := range n {
		if err := l.Append(Event{Time: t0.Add(time.Duration(i) * time.Minute), Kind: KindHold, Reason: fmt.Sprintf("event %d", i)}); err != nil {
			t.Fatal(err)
		}
		var total int64
		for _, p := range []string{l.Path, l.Old} {
			if fi, err := os.Stat(p); err == nil {
				if fi.Size() > max {
					t.Fatalf("after %d events %s has %d bytes, over %d", i+1, p, fi.Size(), max)
				}
				total += fi.Size()
			}
		}
		if total > 2*max {
			t.Fatalf("after %d events the history takes %d bytes", i+1, total)
		}
	}
	got, _, err := l.Read()
	if err != nil || len(got) == 0 || len(got) >= n {
		t.Fatalf("read %d events, %v", len(got), err)
	}
	if last := got[len(got)-1]; last.Reason != fmt.Sprintf("event %d", n-1) {
		t.Fatalf("newest kept %q", last.Reason)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Time.Before(got[i-1].Time) {
			t.Fatalf("out of order at %d", i)
		}
	}
}

// A symlink planted at the history's name is refused, never written
// through; a torn last line is skipped and counted.
func TestSymlinkRefusedTornLineSkipped(t *testing.T) {
	l := testLog(t, 0)
	target := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(target, []byte("keep\n"), 0o644)
	if err := os.Symlink(target, l.Path); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Event{Kind: KindHold}); err == nil {
		t.Fatal("append through a symlink: no error")
	}
	if _, _, err := l.Read(); err == nil {
		t.Fatal("read through a symlink: no error")
	}
	if b, _ := os.ReadFile(target); string(b) != "keep\n" {
		t.Fatalf("victim written: %q", b)
	}
	os.Remove(l.Path)
	l.Append(Event{Kind: KindHold, Reason: "a"})
	f, _ := os.OpenFile(l.Path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"time":"2026-12-01T10:00:00Z","kind":"ap`)
	f.Close()
	got, skipped, err := l.Read()
	if err != nil || len(got) != 1 || skipped != 1 {
		t.Fatalf("torn line: %d events, %d skipped, %v", len(got), skipped, err)
	}
	// A line far too long is skipped too, and what follows is read.
	f, _ = os.OpenFile(l.Path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("\n" + strings.Repeat("x", 3*maxLine) + "\n")
	f.Close()
	l.Append(Event{Kind: KindResume})
	got, skipped, err = l.Read()
	if err != nil || len(got) != 2 || got[1].Kind != KindResume || skipped != 2 {
		t.Fatalf("long line: %+v, %d skipped, %v", got, skipped, err)
	}
}
