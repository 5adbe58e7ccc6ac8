package health

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Kind is a class of kernel report.
type Kind string

// Kinds, with how bad each is (higher is worse).
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

// Frame is one code location a report names: a call-trace frame, the
// faulting RIP/pc, or the site a WARNING or sanitizer report names.
type Frame struct {
	Func   string `json:"func,omitempty"`
	Module string `json:"module,omitempty"`
	Addr   uint64 `json:"addr,omitempty"` // a raw address, when the kernel could not name it
}

// Event is one whole report, header to end of trace.
type Event struct {
	Kind    Kind      `json:"kind"`
	Header  string    `json:"header"`
	At      time.Time `json:"at"`
	RIP     Frame     `json:"rip"`
	Frames  []Frame   `json:"frames,omitempty"`
	Modules []string  `json:"modules,omitempty"` // "Modules linked in:", taint letters stripped
	// Loading are the modules listed there with the "+" flag: being
	// loaded (MODULE_STATE_COMING) when the report came.
	Loading []string `json:"loading,omitempty"`
	// LastUnloaded is "[last unloaded: mod]" at the end of that list.
	LastUnloaded string   `json:"last_unloaded,omitempty"`
	Lines        []string `json:"lines"`
	Source       Source   `json:"source"`
	Sender       string   `json:"sender,omitempty"` // netconsole's host:port
	// Release is the kernel release the report's first record named
	// (netconsole's "r" option, Linux 6.6+); "" when it named none. A
	// netconsole report without it never acts on its own (docs/health.md).
	Release string `json:"release,omitempty"`
	// KernelTime is the kernel's timestamp (since boot) of the record that
	// completed the report, when the source has one: detection latency is
	// measured from it.
	KernelTime time.Duration `json:"kernel_time,omitempty"`
	// Detect is how long after KernelTime the agent had the whole report.
	Detect time.Duration `json:"detect,omitempty"`
}

// Code locations, each anchored to the whole line, so text a user
// controls inside a line (a task name) is never read as a frame.
const (
	symPat = `[A-Za-z_.$][A-Za-z0-9_.$]*`
	modPat = `[A-Za-z0-9_-]+`
	// loc is one location: "func+0x1c/0x40 [mod buildid] file.c:12 (P)",
	// syzkaller's "func file.c:12 [inline]", decode_stacktrace.sh's
	// "func (file.c:12 file.h:3) [mod]", or a raw address.
	locPat = `(?:(` + symPat + `)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[(` + modPat + `)(?: [0-9a-f]+)?\])?(?: \S+:\d+)?(?: \([PL]\))?` +
		`|(` + symPat + `) \S+:\d+ \[inline\]` +
		`|(` + symPat + `) \((?:\S+:\d+ ?)+\)(?: \[?(` + modPat + `)\]?)?` +
		`|0x([0-9a-f]{8,16}))`
)

var (
	ripRE   = regexp.MustCompile(`^\s*(?:RIP|EIP|IP|pc) ?: ?(?:[0-9a-f]{4}:)?(?:\[<[0-9a-f]+>\]\s+)*` + locPat + `\s*$`)
	lrRE    = regexp.MustCompile(`^\s*lr ?: ` + locPat + `\s*$`)
	frameRE = regexp.MustCompile(`^\s*(?:\[<[0-9a-f]+>\]\s+)?(?:\? )?` + locPat + `\s*$`)
	// The work function a worker ran when the report came:
	// "Workqueue: events_unbound func [mod]".
	workRE = regexp.MustCompile(`^\s*Workqueue: \S+ (?:(` + symPat + `)(?: \[(` + modPat + `)\])?|0x([0-9a-f]{8,16}))\s*$`)
	// The site a WARNING names ("at file:line func+0x/0x [mod]", or the
	// 6.19 form "file:line at func+0x/0x [mod], CPU#..."), or a
	// sanitizer's access site ("BUG: KASAN: use-after-free in func+...").
	warnSiteRE = regexp.MustCompile(`^WARNING: (?:CPU: \d+ PID: \d+ at (?:\S+:\d+ )?|(?:\[.*\] )?(?:\S+:\d+ )?at )` + locPat + `(?:, CPU#\d+: .*)?\s*$`)
	sanSiteRE  = regexp.MustCompile(`^BUG: (?:KASAN|KFENCE|KMSAN|KCSAN): [a-z -]+ in ` + locPat + `\s*$`)
	modNameRE  = regexp.MustCompile(`^([A-Za-z0-9_]+)(?:\(([A-Z+-]+)\))?$`)
	// print_modules ends the list with the last module unloaded, with
	// its taint letters since 6.0: " [last unloaded: name(OEK)]".
	lastUnloadedRE = regexp.MustCompile(`\[last unloaded: ([A-Za-z0-9_-]+)(?:\([A-Z]*\))?\]`)
	sanEndRE       = regexp.MustCompile(`^={20,}$`)
	// ftrace_bug()'s lines (kernel/trace/ftrace.c): "ftrace failed to
	// modify " and the function, print_ip_sym's "[<addr>] func+0x0/0x30",
	// a record of its own (4.18) or joined on one console line.
	ftraceBugRE = regexp.MustCompile(`^ftrace (?:failed to modify|faulted on (?:modifying|writing|unknown error))(?: (?:\[<[0-9a-f]+>\] )?` + locPat + `)?\s*$`)
	// Up to 5.7 ftrace_bug() WARNs first and prints its lines after the
	// WARNING's end marker: a WARNING at ftrace_bug takes the lines of
	// this shape that follow it.
	ftraceSiteRE = regexp.MustCompile(` ftrace_bug\+0x[0-9a-f]+/0x[0-9a-f]+`)
	ftraceTailRE = regexp.MustCompile(`^\s*(?:ftrace |\[<[0-9a-f]+>\] |actual: |expected(?: tramp)?: |\(\d+\)|(?:Initializing|Setting|Updating) ftrace call site|tramp: )`)
)

// parseLoc turns a locPat match into a Frame.
func parseLoc(m []string, at int) Frame {
	switch {
	case m[at] != "":
		return Frame{Func: m[at], Module: m[at+1]}
	case m[at+2] != "":
		return Frame{Func: m[at+2]}
	case m[at+3] != "":
		return Frame{Func: m[at+3], Module: m[at+4]}
	}
	a, _ := strconv.ParseUint(m[at+5], 16, 64)
	return Frame{Addr: a}
}

// MaxEventLines bounds one event's memory.
const MaxEventLines = 400

// Classifier groups one stream's records into reports. It is fed in order
// and is not safe for concurrent use.
//
// Only kernel records count: a record with a facility other than the
// kernel's (a write to /dev/kmsg) neither opens a report nor joins one.
// A report opens on a header (see headers.go) at the kernel's own level
// and takes the records that follow until its end marker, the next header,
// or Idle. Each hung task, soft lockup and RCU stall is its own report.
type Classifier struct {
	cur       *Event
	curHeader *header
	cut       bool // the open report is "cut here" waiting for its BUG or WARNING line
	died      bool // the open report has its die header
	ftraceOn  bool // the open report began with ftrace_bug()'s block (5.8+)
	tailing   bool // the open report is an ftrace_bug WARNING past its end marker, taking ftrace_bug()'s lines (to 5.7)
	lastSeen  time.Time
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
		done = append(done, c.close()...)
	}
	if r.Facility > 0 {
		return done // not the kernel's
	}
	text := r.Text
	if h, ok := matchHeader(text, r.Level); ok {
		switch {
		case c.cur != nil && h.role == roleDie && c.takesDie():
			// The page fault or BUG line just before was this incident's
			// first line: "BUG: kernel NULL pointer dereference" then
			// "Oops: 0002 [#1]", "kernel BUG at" then "invalid opcode".
			c.died = true
		case c.cur != nil && c.cut && (h.kind == KindWarning || h.kind == KindKernelBug) && h.role != roleCut && h.role != roleFtrace:
			c.cut = false
			c.cur.Kind, c.cur.Header, c.curHeader = h.kind, text, h
		case c.cur != nil && c.cut && c.curHeader.role == roleFtrace && h.role == roleCut:
			// ftrace_bug()'s "cut here": the WARNING that follows is
			// the report the function named above belongs to.
			c.curHeader = h
		default:
			if c.cur != nil {
				done = append(done, c.close()...)
			}
			c.cur = &Event{Kind: h.kind, Header: text, At: now, Source: r.Source, Sender: r.Sender, Release: r.Dict["RELEASE"]}
			c.curHeader, c.cut, c.died = h, h.role == roleCut || h.role == roleFtrace, h.role == roleDie
			c.ftraceOn = h.role == roleFtrace
		}
	} else if c.cur == nil {
		return done
	} else if c.tailing && !ftraceTailRE.MatchString(text) {
		// ftrace_bug()'s lines are over: the report was whole.
		return append(done, c.close()...)
	}
	c.lastSeen = now
	c.cur.KernelTime = r.Time
	c.add(text)
	end := strings.Contains(text, "---[ end trace")
	if end && !c.ftraceOn && c.cur.Kind == KindWarning && ftraceSiteRE.MatchString(c.cur.Header) {
		end, c.tailing = false, true
	}
	if end || strings.HasPrefix(text, "---[ end Kernel panic") || len(c.cur.Lines) >= MaxEventLines ||
		(c.curHeader.sanitizer && len(c.cur.Lines) > 1 && sanEndRE.MatchString(strings.TrimSpace(text))) {
		done = append(done, c.close()...)
	}
	return done
}

// takesDie: a die header completes a report opened by a page fault, BUG
// or "cut here" line that has no die header yet; it starts one otherwise.
func (c *Classifier) takesDie() bool {
	if c.died || c.curHeader.sanitizer {
		return false
	}
	switch c.cur.Kind {
	case KindOops, KindKernelBug:
		return true
	case KindWarning:
		if c.cut { // BUG() without its "kernel BUG at" line
			c.cut = false
			c.cur.Kind = KindKernelBug
			return true
		}
	}
	return false
}

// Flush closes an open report (at shutdown, or when the stream is idle).
func (c *Classifier) Flush(now time.Time) []Event {
	if c.cur == nil || now.Sub(c.lastSeen) <= c.idle() {
		return nil
	}
	return c.close()
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

// add takes one line of the open report and the locations it names.
func (c *Classifier) add(text string) {
	e := c.cur
	e.Lines = append(e.Lines, text)
	t := strings.TrimRight(text, " \t\r")
	var site Frame
	found := false
	if m := ftraceBugRE.FindStringSubmatch(t); m != nil {
		if m[1] != "" || m[3] != "" || m[4] != "" || m[6] != "" {
			e.Frames = append(e.Frames, parseLoc(m, 1))
		}
		return
	}
	for _, re := range []*regexp.Regexp{ripRE, warnSiteRE, sanSiteRE} {
		if m := re.FindStringSubmatch(t); m != nil {
			site, found = parseLoc(m, 1), true
			break
		}
	}
	switch {
	case found:
		// The first site is the report's RIP; later ones (an inlined
		// RIP after its caller's, a second CPU) are frames too.
		if e.RIP == (Frame{}) {
			e.RIP = site
		} else {
			e.Frames = append(e.Frames, site)
		}
	case strings.HasPrefix(strings.TrimLeft(t, " "), "Modules linked in:"):
		_, list, _ := strings.Cut(t, "Modules linked in:")
		if m := lastUnloadedRE.FindStringSubmatch(list); m != nil {
			e.LastUnloaded = strings.ReplaceAll(m[1], "-", "_")
			list = strings.Replace(list, m[0], "", 1)
		}
		for _, f := range strings.Fields(list) {
			if m := modNameRE.FindStringSubmatch(strings.Trim(f, "[]")); m != nil {
				e.Modules = append(e.Modules, m[1])
				if strings.Contains(m[2], "+") {
					e.Loading = append(e.Loading, m[1])
				}
			}
		}
	default:
		if m := lrRE.FindStringSubmatch(t); m != nil {
			e.Frames = append(e.Frames, parseLoc(m, 1))
		} else if m := workRE.FindStringSubmatch(t); m != nil {
			f := Frame{Func: m[1], Module: m[2]}
			if m[3] != "" {
				f = Frame{}
				f.Addr, _ = strconv.ParseUint(m[3], 16, 64)
			}
			e.Frames = append(e.Frames, f)
		} else if m := frameRE.FindStringSubmatch(t); m != nil {
			e.Frames = append(e.Frames, parseLoc(m, 1))
		}
	}
}

// close ends the open report. A "cut here" line that never got its BUG or
// WARNING line is not a report (a stray line of another one).
func (c *Classifier) close() []Event {
	e, orphan := *c.cur, c.cut
	c.cur, c.curHeader, c.cut, c.died, c.ftraceOn, c.tailing = nil, nil, false, false, false, false
	if orphan {
		return nil
	}
	return []Event{e}
}

// Suspect is what attribution knows about a livepatch: its module, the
// functions it replaces (per patched object), and where its code is.
type Suspect struct {
	Name      string     // module name
	Functions []Function // replaced functions
	Text      []Range    // the module's executable sections in memory
}

// Function is a function a livepatch replaces in object ("vmlinux" or a
// module name).
type Function struct {
	Object, Name string
}

// Range is [Start, End) of kernel addresses.
type Range struct {
	Start, End uint64
}

// kernelHalf is where 64-bit kernels (x86_64, arm64) keep their code.
const kernelHalf = 1 << 63

// Attributed reports whether ev's code path runs through s: its RIP, a
// frame or the site it names is in s's module (by name, or by address
// inside its text), or is one of the functions s replaces in that object.
// Two more ties hold without a named frame: s was being loaded when the
// report came (listed with "+": its init, relocation or enable ran), or
// the RIP is a raw kernel address the kernel could no longer name and s
// is the module unloaded last (code of a patch gone from memory).
func Attributed(ev Event, s Suspect) bool {
	if s.Name == "" {
		return false
	}
	if slices.Contains(ev.Loading, s.Name) {
		return true
	}
	// Only the RIP: a raw address in a stack dump ("? 0xffffffffc0...")
	// is often stale, and a user-mode RIP is no kernel code at all.
	if ev.RIP.Addr >= kernelHalf && ev.LastUnloaded == s.Name {
		return true
	}
	for _, f := range append([]Frame{ev.RIP}, ev.Frames...) {
		if f.Module == s.Name {
			return true
		}
		if f.Addr != 0 {
			for _, r := range s.Text {
				if r.Start <= f.Addr && f.Addr < r.End {
					return true
				}
			}
			continue
		}
		for _, fn := range s.Functions {
			// vmlinux code carries no module; a patched module's function
			// carries that module's name. Either runs the patch's copy
			// once it is live, or the original it replaces.
			if f.Func == fn.Name && (f.Module == fn.Object || (fn.Object == "vmlinux" && f.Module == "")) {
				return true
			}
		}
	}
	return false
}
