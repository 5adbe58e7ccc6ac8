package agent

import (
	"sync/atomic"
	"time"
)

// Heartbeat tells the service manager's watchdog whether the daemon's
// work moves: it is idle (waiting for the next poll or event) or busy with
// one step (a poll, an apply, a rollback) since a known time. A nil
// Heartbeat does nothing.
type Heartbeat struct{ since atomic.Int64 }

// Begin marks the start of a step.
func (h *Heartbeat) Begin() {
	if h != nil {
		h.since.Store(time.Now().UnixNano())
	}
}

// End marks the daemon idle again.
func (h *Heartbeat) End() {
	if h != nil {
		h.since.Store(0)
	}
}

// Busy is how long the current step has run at now; 0 when idle.
func (h *Heartbeat) Busy(now time.Time) time.Duration {
	if h == nil {
		return 0
	}
	s := h.since.Load()
	if s == 0 {
		return 0
	}
	return max(now.Sub(time.Unix(0, s)), 0)
}
