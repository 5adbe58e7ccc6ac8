package health

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Policy says which events roll the current patch back. Every event is
// logged and counted whatever the policy says; the policy only decides.
type Policy struct {
	// Attributed kinds roll back at once when the event runs through the
	// patch (its module or a function it replaces).
	Attributed []Kind `yaml:"attributed"`
	// SoakUnattributed kinds roll back while the patch soaks even when the
	// trace does not name it: a patch can break a path it does not sit on
	// (a changed data structure, a lock), and during the soak the patch is
	// the likeliest cause of anything fatal.
	SoakUnattributed []Kind `yaml:"soak_unattributed"`
	// Thresholds roll back when this many events of a kind (attributed or
	// not) arrive within Window while the patch is applied: one WARNING is
	// noise on many hosts, a burst after a patch is not.
	Thresholds map[Kind]int  `yaml:"thresholds"`
	Window     time.Duration `yaml:"window"`
}

// DefaultPolicy is conservative: a patch named by any report, a fatal
// report or a failing operator health command during the soak, or a burst
// of warnings, lockups or hung tasks sends the host back to its previous
// good level. Rolling back a good patch costs a retry; keeping a bad one
// costs a host.
func DefaultPolicy() Policy {
	return Policy{
		Attributed:       []Kind{KindPanic, KindOops, KindKernelBug, KindBug, KindHardLockup, KindSoftLockup, KindRCUStall, KindHungTask, KindWarning},
		SoakUnattributed: []Kind{KindPanic, KindOops, KindKernelBug, KindBug, KindHardLockup, kindCommand},
		Thresholds:       map[Kind]int{KindWarning: 10, KindHungTask: 5, KindSoftLockup: 3, KindRCUStall: 3},
		Window:           30 * time.Minute,
	}
}

// kindCommand is the operator health command's kind (command.go).
const kindCommand Kind = "command"

// Kinds lists every event kind, worst first.
func Kinds() []Kind {
	ks := []Kind{kindCommand}
	for k := range severity {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b Kind) int { return severity[b] - severity[a] })
	return ks
}

// ErrPolicy marks an invalid policy.
var ErrPolicy = errors.New("invalid health policy")

// Validate checks kind names and numbers, so a typo in the configuration is
// an error, not a policy that silently never fires.
func (p Policy) Validate() error {
	known := Kinds()
	var errs []error
	check := func(field string, ks []Kind) {
		for _, k := range ks {
			if !slices.Contains(known, k) {
				errs = append(errs, fmt.Errorf("%s: unknown kind %q (one of %s)", field, k, kindList(known)))
			}
		}
	}
	check("attributed", p.Attributed)
	check("soak_unattributed", p.SoakUnattributed)
	for k, n := range p.Thresholds {
		check("thresholds", []Kind{k})
		if n < 1 {
			errs = append(errs, fmt.Errorf("thresholds: %s: %d must be >= 1", k, n))
		}
	}
	if len(p.Thresholds) > 0 && p.Window <= 0 {
		errs = append(errs, errors.New("window: must be > 0 when thresholds are set"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrPolicy, errors.Join(errs...))
	}
	return nil
}

func kindList(ks []Kind) string {
	s := make([]string, len(ks))
	for i, k := range ks {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// Verdict is the policy's answer for one event.
type Verdict struct {
	Rollback   bool
	Attributed bool
	Reason     string
}

// Judge applies a Policy to a stream of events; it remembers counts for
// the thresholds, per patch. Not safe for concurrent use.
type Judge struct {
	Policy Policy
	patch  string
	seen   map[Kind][]time.Time
}

// Judge decides about ev, seen at now, for the patch currently applied
// (p.Name empty when none) which is soaking or not.
func (j *Judge) Judge(ev Event, p Suspect, soaking bool, now time.Time) Verdict {
	v := Verdict{Attributed: Attributed(ev, p)}
	if p.Name == "" {
		j.patch, j.seen = "", nil
		return v
	}
	if j.patch != p.Name {
		// Counts belong to the patch they were seen under.
		j.patch, j.seen = p.Name, map[Kind][]time.Time{}
	}
	pol := j.Policy
	switch {
	case v.Attributed && slices.Contains(pol.Attributed, ev.Kind):
		v.Rollback, v.Reason = true, fmt.Sprintf("%s attributed to %s: %s", ev.Kind, p.Name, ev.Header)
		return v
	case soaking && slices.Contains(pol.SoakUnattributed, ev.Kind):
		v.Rollback, v.Reason = true, fmt.Sprintf("%s while %s was soaking: %s", ev.Kind, p.Name, ev.Header)
		return v
	}
	limit, ok := pol.Thresholds[ev.Kind]
	if !ok {
		return v
	}
	recent := j.seen[ev.Kind][:0]
	for _, t := range j.seen[ev.Kind] {
		if now.Sub(t) < pol.Window {
			recent = append(recent, t)
		}
	}
	recent = append(recent, now)
	j.seen[ev.Kind] = recent
	if len(recent) >= limit {
		v.Rollback = true
		v.Reason = fmt.Sprintf("%d %s reports within %s under %s (threshold %d): %s", len(recent), ev.Kind, pol.Window, p.Name, limit, ev.Header)
	}
	return v
}
