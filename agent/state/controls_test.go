package state

import (
	"testing"
	"time"
)

func TestHoldActive(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name   string
		h      *Hold
		active bool
	}{
		{"none", nil, false},
		{"until resumed", &Hold{}, true},
		{"until later", &Hold{Until: now.Add(time.Second)}, true},
		{"ended", &Hold{Until: now}, false},
	} {
		if got := tt.h.Active(now); got != tt.active {
			t.Errorf("%s: %v", tt.name, got)
		}
	}
}

// Unblock forgets every sha256 of name@level and nothing else; a control
// survives a save and load.
func TestUnblockAndControlsPersist(t *testing.T) {
	k := &Kernel{Blocked: []Blocked{
		{PatchRecord: PatchRecord{Name: "a", Level: 1, SHA256: "x"}},
		{PatchRecord: PatchRecord{Name: "a", Level: 2, SHA256: "y"}},
		{PatchRecord: PatchRecord{Name: "a", Level: 2, SHA256: "z"}},
	}}
	if k.Unblock("a", 3) || !k.Unblock("a", 2) || len(k.Blocked) != 1 || k.Blocked[0].Level != 1 {
		t.Fatalf("blocked after unblocking a@2: %+v", k.Blocked)
	}
	k.Pin = &Pin{Level: 4, Operator: Operator{By: "root (uid 0)"}}
	s := &Store{Dir: t.TempDir()}
	st := &State{Kernels: map[string]*Kernel{"k": k}, Hold: &Hold{Operator: Operator{Reason: "freeze"}}}
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil || got.Hold == nil || got.Hold.Reason != "freeze" || got.Kernels["k"].Pin.Level != 4 {
		t.Fatalf("loaded %+v %v", got, err)
	}
}
