package state

import (
	"slices"
	"time"
)

// Operator is who asked for a host control, for the journal and status.
type Operator struct {
	By     string    `json:"by"` // "alice (uid 0)": SUDO_USER if set, and the uid
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// Hold keeps new levels off this host until resumed (or Until passes);
// health watching and rollbacks go on.
type Hold struct {
	Operator
	Until time.Time `json:"until,omitzero"` // zero: until `klp-agent resume`
}

// Active reports whether the hold is in force at now.
func (h *Hold) Active(now time.Time) bool {
	return h != nil && (h.Until.IsZero() || now.Before(h.Until))
}

// Pin is the highest level an operator lets this host run for one kernel.
type Pin struct {
	Operator
	Level int `json:"level"`
}

// Unblock forgets the block of name@level (every sha256 of it) and reports
// whether there was one.
func (k *Kernel) Unblock(name string, level int) bool {
	n := len(k.Blocked)
	k.Blocked = slices.DeleteFunc(k.Blocked, func(b Blocked) bool { return b.Name == name && b.Level == level })
	return len(k.Blocked) != n
}
