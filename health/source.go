package health

import (
	"fmt"
	"slices"
	"time"
)

// Source names where a report came from. It is a label of the agent's
// journal entries, metrics and state, so its values are an interface.
type Source string

// The live sources, which deliver events while the host runs. A
// scanner's source (kdump, pstore) is declared in its own file.
const (
	SourceKmsg       Source = "kmsg"       // /dev/kmsg, the running kernel's log
	SourceNetconsole Source = "netconsole" // UDP datagrams: spoofable
	SourceTaint      Source = "taint"      // /proc/sys/kernel/tainted
	SourceCommand    Source = "command"    // the operator's health command
)

// sourceTraits is what the agent and its metrics need to know of a source.
type sourceTraits struct {
	local  bool // the host's own kernel wrote it
	record bool // a crash record found after the reboot: a crash by construction
}

var sources = map[Source]sourceTraits{}

// registerSource declares a source; each scanner's file declares its own.
func registerSource(s Source, t sourceTraits) { sources[s] = t }

func init() {
	registerSource(SourceKmsg, sourceTraits{local: true})
	registerSource(SourceNetconsole, sourceTraits{})
	registerSource(SourceTaint, sourceTraits{local: true})
	registerSource(SourceCommand, sourceTraits{})
}

// Local reports whether the host's own kernel wrote the report (its log,
// its taint bits, its kdump or pstore record), as opposed to what came
// over the network or from the operator's command. Only local crash
// reports count in the fleet's crash budget.
func (s Source) Local() bool { return sources[s].local }

// AfterReboot reports whether s is a Scanner's: a record that exists only
// because the kernel crashed (kdump ran, kmsg_dump wrote).
func (s Source) AfterReboot() bool { return sources[s].record }

// Sources lists every source, sorted: a closed set, so a metric label
// over it has a fixed cardinality.
func Sources() []Source {
	out := make([]Source, 0, len(sources))
	for s := range sources {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// Scanner finds the crash records a reboot left behind (a kdump capture,
// a pstore record). A new kind of after-the-reboot evidence is one type
// implementing it, added to the list the daemon builds.
type Scanner interface {
	// Source is what this scanner's crashes are labelled with.
	Source() Source
	// CrashesSince returns the crashes recorded after t, oldest first. A
	// record that cannot be read or is not trusted is left out and named
	// in the error, which comes with the crashes that could be read.
	CrashesSince(t time.Time) ([]Crash, error)
}

// Crash is one crash record found after a reboot: where it is, when it
// was written and the kernel reports it holds.
type Crash struct {
	Source Source    `json:"source"`
	Path   string    `json:"path"`
	At     time.Time `json:"at"`
	// Note qualifies the record in its evidence line ("capture
	// incomplete", "Panic#1, 2 parts"); "" for none.
	Note   string  `json:"note,omitempty"`
	Events []Event `json:"events,omitempty"`
}

// Cause is the report that most likely brought the kernel down: the first
// crash-class one (the first oops is the one that matters; a "Fatal
// exception" panic follows it), else the worst, else nil.
func (c Crash) Cause() *Event {
	var w *Event
	for i := range c.Events {
		e := &c.Events[i]
		if e.Kind.CrashClass() {
			return e
		}
		if w == nil || severity[e.Kind] > severity[w.Kind] {
			w = e
		}
	}
	return w
}

// Attributed reports whether any report in the record runs through p.
func (c Crash) Attributed(p Suspect) bool {
	for _, e := range c.Events {
		if Attributed(e, p) {
			return true
		}
	}
	return false
}

// Evidence is one line for a block record: the source, the path and the
// cause.
func (c Crash) Evidence() string {
	note := ""
	if c.Note != "" {
		note = " (" + c.Note + ")"
	}
	if w := c.Cause(); w != nil {
		return fmt.Sprintf("%s %s%s: %s: %s", c.Source, c.Path, note, w.Kind, oneLine(w.Header, 240))
	}
	return fmt.Sprintf("%s %s%s: no kernel report found in it", c.Source, c.Path, note)
}

// EvidenceLines is what a block record keeps of the crash: its evidence
// line, then the cause's first lines of trace (at most n).
func (c Crash) EvidenceLines(n int) []string {
	ev := []string{c.Evidence()}
	if w := c.Cause(); w != nil {
		ev = append(ev, w.Lines[:min(len(w.Lines), n)]...)
	}
	return ev
}
