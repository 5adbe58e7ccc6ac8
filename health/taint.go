package health

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Taint is the kernel's taint bitmask (/proc/sys/kernel/tainted).
type Taint uint64

// Taint bits the agent acts on (Documentation/admin-guide/tainted-kernels.rst).
const (
	TaintDied      Taint = 1 << 7  // D: an oops or BUG killed a task
	TaintWarn      Taint = 1 << 9  // W: a WARN() fired
	TaintLivepatch Taint = 1 << 15 // K: live patched

	taintWatchedSet = TaintDied | TaintWarn
)

// taintLetters: bit i is letter i. J (bit 19, fwctl) came in 6.15.
const taintLetters = "PFSRMBUDAWCIOELKXTNJ"

// String gives the letters of the set bits, e.g. "OEK" for 45056. Unlike
// the kernel's "Tainted:" it leaves out G and the blanks for unset bits;
// bits newer than this table are left out too.
func (t Taint) String() string {
	var b strings.Builder
	for i := 0; i < len(taintLetters); i++ {
		if t&(1<<i) != 0 {
			b.WriteByte(taintLetters[i])
		}
	}
	return b.String()
}

// ReadTaint reads the taint mask from path.
func ReadTaint(path string) (Taint, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read taint: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read taint %s: %w", path, err)
	}
	return Taint(v), nil
}

// NewBits is what after has of D and W that before had not.
func NewBits(before, after Taint) Taint { return after &^ before & taintWatchedSet }

// TaintWatcher reports D and W bits that appear while the agent runs: a
// backstop for reports the kernel log lost (overwritten, or printed where
// the agent could not read them). Taint bits are sticky until reboot, so
// each bit is reported once.
type TaintWatcher struct {
	Path  string        // <root>/proc/sys/kernel/tainted
	Every time.Duration // 0 = 5 s
	// Skip, if set, drops an event that is already known: the bit of an
	// oops the kernel log reported (see Explained).
	Skip func(Event) bool
	// Grace is how long a new bit waits for the kernel log's report of
	// the same oops before Skip is asked: the kernel sets D in die(),
	// before it prints the report's end, so a tick can land in between and
	// the one oops would be two events (and the taint one, first, would
	// take the rollback). 0 = none.
	Grace time.Duration
}

// Run polls until ctx ends. The baseline is the mask at start: bits set
// before the agent started are an earlier story.
func (w TaintWatcher) Run(ctx context.Context, out chan<- Event) error {
	seen, err := ReadTaint(w.Path)
	if err != nil {
		return err
	}
	return w.RunFrom(ctx, seen, out)
}

// RunFrom polls until ctx ends and reports D and W bits that baseline (say,
// the mask when a patch went in) does not have, each once.
func (w TaintWatcher) RunFrom(ctx context.Context, baseline Taint, out chan<- Event) error {
	every := w.Every
	if every <= 0 {
		every = 5 * time.Second
	}
	seen := baseline
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		now, err := ReadTaint(w.Path)
		if err != nil {
			continue // transient; the next tick retries
		}
		nb := NewBits(seen, now)
		seen |= now
		if nb != 0 && w.Grace > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(w.Grace):
			}
		}
		for _, ev := range taintEvents(nb, now) {
			if w.Skip != nil && w.Skip(ev) {
				continue
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

func taintEvents(nb, all Taint) []Event {
	var evs []Event
	if nb&TaintDied != 0 {
		evs = append(evs, Event{Kind: KindOops, Source: SourceTaint, At: time.Now(),
			Header: fmt.Sprintf("kernel taint D (a task died in an oops or BUG) appeared; taint now %s (%d)", all, uint64(all))})
	}
	if nb&TaintWarn != 0 {
		evs = append(evs, Event{Kind: KindWarning, Source: SourceTaint, At: time.Now(),
			Header: fmt.Sprintf("kernel taint W (a WARNING fired) appeared; taint now %s (%d)", all, uint64(all))})
	}
	return evs
}

// Explained remembers the kernel log's reports so that a taint bit one of
// them accounts for is not counted as a second incident: an oops or BUG
// sets D, a WARNING sets W. The taint watcher is the backstop for reports
// the log lost; without this, the D bit of a faulty patch's oops, seen a
// poll later, would count as a crash of whatever patch the rollback left
// in place. (A report still being grouped when the poll comes is not yet
// known here: the bit is then reported, erring towards telling.)
type Explained struct {
	// Within is how long after a report's first record a new bit counts
	// as its: the taint poll interval and the report's own length.
	Within time.Duration

	mu           sync.Mutex
	died, warned time.Time // the last reports that set D and W
}

// Report notes a report from the kernel log (kmsg, netconsole).
func (x *Explained) Report(ev Event) {
	x.mu.Lock()
	defer x.mu.Unlock()
	switch ev.Kind {
	case KindOops, KindBug, KindKernelBug, KindPanic:
		x.died = ev.At
	case KindWarning:
		x.warned = ev.At
	}
}

// Explains reports whether a taint event's bit comes from a report the
// log already gave.
func (x *Explained) Explains(taint Event) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	var t time.Time
	switch taint.Kind {
	case KindOops:
		t = x.died
	case KindWarning:
		t = x.warned
	}
	return !t.IsZero() && !t.After(taint.At) && taint.At.Sub(t) <= x.Within
}
