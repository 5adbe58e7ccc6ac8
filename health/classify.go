package health

import (
	"regexp"
	"strings"
	"time"
)

// Kind is a class of kernel report.
type Kind string

// Kinds, with how bad each is (higher is worse) for grouping.
const (
	KindWarning    Kind = "warning"
	KindHungTask   Kind = "hung-task"
	KindRCUStall   Kind = "rcu-stall"
	KindSoftLockup Kind = "soft-lockup"
	KindHardLockup Kind = "hard-lockup"
	KindBug        Kind = "bug"
	KindKernelBug  Kind = "kernel-bug"
	KindOops       Kind = "oops"
	KindPanic      Kind = "panic"
)

var severity = map[Kind]int{KindWarning: 1, KindHungTask: 2, KindRCUStall: 3, KindSoftLockup: 4, KindHardLockup: 5,
	KindBug: 6, KindKernelBug: 7, KindOops: 8, KindPanic: 9}

// CrashClass reports whether k means the kernel hit a fatal path.
func (k Kind) CrashClass() bool { return severity[k] >= severity[KindHardLockup] }

// markers start a report; substrings, because formats drift across versions.
var markers = []struct {
	sub  string
	kind Kind
}{
	{"Kernel panic - not syncing:", KindPanic},
	{"Oops:", KindOops},
	{"kernel BUG at", KindKernelBug},
	{"BUG: kernel NULL pointer dereference", KindBug},
	{"BUG: unable to handle page fault", KindBug},
	{"BUG: unable to handle kernel", KindBug},
	{"Watchdog detected hard LOCKUP", KindHardLockup},
	{"watchdog: BUG: soft lockup - CPU#", KindSoftLockup},
	{"detected stalls", KindRCUStall},
	{"blocked for more than", KindHungTask},
	{"WARNING: CPU:", KindWarning},
	{"------------[ cut here ]------------", KindWarning},
}

// Frame is one call-trace line.
type Frame struct {
	Func   string `json:"func"`
	Module string `json:"module,omitempty"`
}

// Event is one whole report, header to end of trace.
type Event struct {
	Kind    Kind      `json:"kind"`
	Header  string    `json:"header"`
	At      time.Time `json:"at"`
	RIP     Frame     `json:"rip"`
	Frames  []Frame   `json:"frames,omitempty"`
	Modules []string  `json:"modules,omitempty"` // "Modules linked in:", taint letters stripped
	Lines   []string  `json:"lines"`
	Source  string    `json:"source"`
	Sender  string    `json:"sender,omitempty"` // netconsole's host:port
	// KernelTime is the kernel's timestamp (since boot) of the record that
	// completed the report, when the source has one: detection latency is
	// measured from it.
	KernelTime time.Duration `json:"kernel_time,omitempty"`
	// Detect is how long after KernelTime the agent had the whole report.
	Detect time.Duration `json:"detect,omitempty"`
}

var (
	frameRE   = regexp.MustCompile(`(?:^|\s)(?:\? )?([A-Za-z0-9_.$]+)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[([A-Za-z0-9_]+)\])?`)
	ripRE     = regexp.MustCompile(`(?:RIP|EIP|pc) ?: ?(?:[0-9a-f]{4}:)?([A-Za-z0-9_.$]+)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[([A-Za-z0-9_]+)\])?`)
	warnAtRE  = regexp.MustCompile(`WARNING: CPU: \d+ PID: \d+ at .* ([A-Za-z0-9_.$]+)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[([A-Za-z0-9_]+)\])?`)
	modNameRE = regexp.MustCompile(`^([A-Za-z0-9_]+)(?:\([A-Z]+\))?$`)
)

// MaxEventLines bounds one event's memory.
const MaxEventLines = 400

// Classifier groups records into events. It is fed in order and is not
// safe for concurrent use.
type Classifier struct {
	cur      *Event
	lastSeen time.Time
	// Idle closes an open report after this long without a record that
	// belongs to it (default 2 s).
	Idle time.Duration
}

func (c *Classifier) idle() time.Duration {
	if c.Idle > 0 {
		return c.Idle
	}
	return 2 * time.Second
}

// Feed takes one record seen at now and returns the events it completed.
func (c *Classifier) Feed(r Record, now time.Time) []Event {
	var done []Event
	if c.cur != nil && now.Sub(c.lastSeen) > c.idle() {
		done = append(done, c.close())
	}
	text := r.Text
	kind, isMarker := Kind(""), false
	for _, m := range markers {
		if strings.Contains(text, m.sub) {
			kind, isMarker = m.kind, true
			break
		}
	}
	if c.cur == nil {
		if !isMarker {
			return done
		}
		c.cur = &Event{Kind: kind, Header: text, At: now, Source: r.Source, Sender: r.Sender}
	} else if isMarker && severity[kind] > severity[c.cur.Kind] {
		// "BUG: ... NULL pointer" then "Oops:" is one report: keep the worst.
		c.cur.Kind = kind
	}
	c.lastSeen = now
	c.cur.KernelTime = r.Time
	c.add(text)
	if strings.Contains(text, "---[ end trace") || strings.Contains(text, "---[ end Kernel panic") || len(c.cur.Lines) >= MaxEventLines {
		done = append(done, c.close())
	}
	return done
}

// Flush closes an open report (at shutdown, or when the stream is idle).
func (c *Classifier) Flush(now time.Time) []Event {
	if c.cur == nil || now.Sub(c.lastSeen) <= c.idle() {
		return nil
	}
	return []Event{c.close()}
}

// Deadline is when Flush will close the open report if no record comes
// first; ok is false when no report is open (nothing to wake for).
func (c *Classifier) Deadline() (t time.Time, ok bool) {
	if c.cur == nil {
		return time.Time{}, false
	}
	return c.lastSeen.Add(c.idle() + time.Nanosecond), true
}

// Reports groups a source's records into reports with one Classifier per
// sender, so reports from two netconsole senders that arrive interleaved
// stay apart. It holds a classifier only while its report is open.
type Reports struct {
	Idle time.Duration // see Classifier.Idle
	by   map[string]*Classifier
}

// Feed takes one record seen at now and returns the reports it completed.
func (g *Reports) Feed(r Record, now time.Time) []Event {
	c := g.by[r.Sender]
	if c == nil {
		c = &Classifier{Idle: g.Idle}
	}
	evs := c.Feed(r, now)
	g.keep(r.Sender, c)
	return evs
}

// Flush closes the reports idle at now.
func (g *Reports) Flush(now time.Time) []Event {
	var evs []Event
	for s, c := range g.by {
		evs = append(evs, c.Flush(now)...)
		g.keep(s, c)
	}
	return evs
}

// Deadline is the earliest Flush that will close a report; ok is false
// when none is open.
func (g *Reports) Deadline() (t time.Time, ok bool) {
	for _, c := range g.by {
		if d, open := c.Deadline(); open && (!ok || d.Before(t)) {
			t, ok = d, true
		}
	}
	return t, ok
}

func (g *Reports) keep(sender string, c *Classifier) {
	if c.cur == nil {
		delete(g.by, sender)
		return
	}
	if g.by == nil {
		g.by = map[string]*Classifier{}
	}
	g.by[sender] = c
}

func (c *Classifier) add(text string) {
	e := c.cur
	e.Lines = append(e.Lines, text)
	if m := ripRE.FindStringSubmatch(text); m != nil && e.RIP.Func == "" {
		e.RIP = Frame{Func: m[1], Module: m[2]}
	} else if m := warnAtRE.FindStringSubmatch(text); m != nil && e.RIP.Func == "" {
		e.RIP = Frame{Func: m[1], Module: m[2]}
	} else if _, list, ok := strings.Cut(text, "Modules linked in:"); ok {
		for _, f := range strings.Fields(list) {
			if m := modNameRE.FindStringSubmatch(strings.Trim(f, "[]")); m != nil {
				e.Modules = append(e.Modules, m[1])
			}
		}
	} else if m := frameRE.FindStringSubmatch(text); m != nil {
		e.Frames = append(e.Frames, Frame{Func: m[1], Module: m[2]})
	}
}

func (c *Classifier) close() Event {
	e := *c.cur
	c.cur = nil
	return e
}

// Suspect is what attribution needs to know about a livepatch.
type Suspect struct {
	Name      string   // module name
	Functions []string // replaced functions ("func" or "func,sympos")
}

// Attributed reports whether ev's code path runs through patch p: its
// faulting function or a call-trace frame is in p's module, or is one of
// the functions p replaces.
func Attributed(ev Event, p Suspect) bool {
	if p.Name == "" {
		return false
	}
	fns := map[string]bool{}
	for _, f := range p.Functions {
		name, _, _ := strings.Cut(f, ",")
		fns[name] = true
	}
	for _, f := range append([]Frame{ev.RIP}, ev.Frames...) {
		if f.Module == p.Name || (f.Func != "" && fns[f.Func]) {
			return true
		}
	}
	return false
}
