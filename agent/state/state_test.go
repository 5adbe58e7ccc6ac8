package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/manifest"
)

func p(level int) PatchRecord {
	return PatchRecord{Name: fmt.Sprintf("klp_cmdline_%d", level), Level: level, SHA256: fmt.Sprintf("%064x", level), Size: 100}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	s := &Store{Dir: t.TempDir(), Now: func() time.Time { return time.Unix(1700000000, 0) }}
	st, err := s.Load()
	if err != nil || len(st.Kernels) != 0 {
		t.Fatalf("empty load: %+v %v", st, err)
	}
	k := st.Kernel("6.1.0-56-amd64")
	c := p(2)
	k.Phase, k.Current = PhaseSoaking, &c
	k.MarkGood(p(1))
	k.Block(p(3), CauseHealth, "oops attributed to klp_cmdline_3", []string{"BUG: kernel NULL pointer dereference"}, time.Unix(1700000001, 0))
	st.BootID = "b1"
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	gk := got.Kernels["6.1.0-56-amd64"]
	if gk.Phase != PhaseSoaking || !gk.Current.Same(&c) || len(gk.Good) != 1 || !gk.IsBlocked("klp_cmdline_3", 3, fmt.Sprintf("%064x", 3)) || got.BootID != "b1" {
		t.Fatalf("round trip lost data: %+v", gk)
	}
	if fi, err := os.Stat(s.Path()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode: %v %v", fi, err)
	}
}

func TestLoadRefusesDamage(t *testing.T) {
	tests := []struct {
		name, content string
		want          error
	}{
		{"truncated", `{"format": 1, "kernels": {`, ErrCorrupt},
		{"future format", `{"format": 2, "kernels": {}}`, ErrFormat},
		{"bad record", `{"format": 1, "kernels": {"k": {"phase": "good", "current": {"name": "../x", "level": 1, "sha256": "00", "size": 1}}}}`, ErrCorrupt},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := (&Store{Dir: dir}).Load(); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestLockIsExclusive(t *testing.T) {
	dir := t.TempDir()
	a, b := &Store{Dir: dir}, &Store{Dir: dir}
	if err := a.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(); !errors.Is(err, ErrLocked) {
		t.Fatalf("second lock: %v, want ErrLocked", err)
	}
	if err := a.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(); err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	b.Unlock()
}

// A symlink planted at the lock file is not followed: its target is neither
// created nor opened, and the lock fails saying why.
func TestLockRefusesSymlink(t *testing.T) {
	for _, tt := range []struct {
		name   string
		exists bool
	}{{"to a file", true}, {"dangling", false}} {
		t.Run(tt.name, func(t *testing.T) {
			dir, victim := t.TempDir(), filepath.Join(t.TempDir(), "victim")
			if tt.exists {
				os.WriteFile(victim, []byte("precious"), 0o644)
			}
			if err := os.Symlink(victim, filepath.Join(dir, "lock")); err != nil {
				t.Fatal(err)
			}
			s := &Store{Dir: dir}
			if err := s.Lock(); !errors.Is(err, ErrSymlink) {
				s.Unlock()
				t.Fatalf("lock through a symlink: %v", err)
			}
			b, err := os.ReadFile(victim)
			if tt.exists != (err == nil) || (tt.exists && string(b) != "precious") {
				t.Fatalf("victim after lock: %q %v", b, err)
			}
		})
	}
}

func TestGoodAndBlocked(t *testing.T) {
	var k Kernel
	for _, l := range []int{1, 2, 3} {
		k.MarkGood(p(l))
	}
	if g := k.PreviousGood(3); g == nil || g.Level != 2 {
		t.Fatalf("PreviousGood(3) = %v", g)
	}
	k.Block(p(2), CauseOperator, "x", nil, time.Now())
	if g := k.PreviousGood(3); g == nil || g.Level != 1 {
		t.Fatalf("after blocking 2, PreviousGood(3) = %v", g)
	}
	k.Block(p(2), CauseHealth, "again", nil, time.Now())
	if len(k.Blocked) != 1 {
		t.Fatalf("blocked twice: %d", len(k.Blocked))
	}
	if g := k.PreviousGood(1); g != nil {
		t.Fatalf("PreviousGood(1) = %v, want none", g)
	}
	// The same name and level with another digest is a different RPM.
	if k.IsBlocked("klp_cmdline_2", 2, fmt.Sprintf("%064x", 99)) {
		t.Fatal("block matched another digest")
	}
	s := &Store{Dir: "/var/lib/klp-agent"}
	if _, err := s.RPMPath(&PatchRecord{SHA256: "../../etc/passwd"}); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("RPMPath with a bad digest: %v", err)
	}
}

func TestAddEventKeepsTheNewest(t *testing.T) {
	var s State
	for i := 0; i < MaxEvents+7; i++ {
		s.AddEvent(Event{Kind: "warning", Header: strings.Repeat("x", 400) + string(rune('a'+i%26))})
	}
	if len(s.Events) != MaxEvents || len(s.Events[0].Header) != 300 {
		t.Fatalf("%d events, header %d bytes", len(s.Events), len(s.Events[0].Header))
	}
	s.AddEvent(Event{Kind: "oops", Header: "last"})
	if s.Events[len(s.Events)-1].Header != "last" || len(s.Events) != MaxEvents {
		t.Fatalf("newest not kept last: %+v", s.Events[len(s.Events)-1])
	}
}

// A state file written before causes were recorded keeps its meaning:
// each block and an in-flight rollback get the cause their text names.
func TestLoadMigratesCauses(t *testing.T) {
	dir := t.TempDir()
	sha := strings.Repeat("a", 64)
	legacy := `{"format":1,"kernels":{"6.1.0-56-amd64":{"phase":"rolling-back",
"from":{"name":"klp_cmdline_2","level":2,"sha256":"` + sha + `","size":10},"reason":"operator: test",
"blocked":[{"name":"klp_cmdline_3","level":3,"sha256":"` + sha + `","size":10,"reason":"revoked by manifest version 4","at":"2026-11-25T12:00:00Z"},
{"name":"klp_cmdline_4","level":4,"sha256":"` + sha + `","size":10,"reason":"previous boot crashed while it was soaking","at":"2026-11-25T12:00:00Z"},
{"name":"klp_cmdline_5","level":5,"sha256":"` + sha + `","size":10,"reason":"oops attributed to klp_cmdline_5: Oops","at":"2026-11-25T12:00:00Z"}]}}}`
	if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := (&Store{Dir: dir}).Load()
	if err != nil {
		t.Fatal(err)
	}
	k := st.Kernels["6.1.0-56-amd64"]
	var got []Cause
	for _, b := range k.Blocked {
		got = append(got, b.Cause)
	}
	if k.Cause != CauseOperator || !slices.Equal(got, []Cause{CauseRevoked, CauseBootCrash, CauseHealth}) {
		t.Fatalf("in flight %q, blocked %v", k.Cause, got)
	}
}

// The manifest package derives the origin record's name itself; the layout
// names the same file.
func TestTrustedRootOriginName(t *testing.T) {
	l := Layout{Dir: "/var/lib/klp-agent"}
	if got, want := l.TrustedRootOrigin(), manifest.RootOriginPath(l.TrustedRoot()); got != want {
		t.Errorf("layout %s, manifest %s", got, want)
	}
}
