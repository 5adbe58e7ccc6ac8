package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

// Status is what `klp-agent status --json` prints.
type Status struct {
	Kernel       string              `json:"kernel"`
	Phase        state.Phase         `json:"phase"`
	Applied      *state.PatchRecord  `json:"applied,omitempty"`
	Wanted       *manifest.Patch     `json:"wanted,omitempty"`
	WantedReason string              `json:"wanted_reason,omitempty"`
	SoakUntil    *time.Time          `json:"soak_until,omitempty"`
	SoakLeft     string              `json:"soak_left,omitempty"`
	Good         []state.PatchRecord `json:"good"`
	Blocked      []state.Blocked     `json:"blocked"`
	LastPoll     *state.Poll         `json:"last_poll,omitempty"`
	Livepatches  []LivepatchRow      `json:"livepatches"`
	Events       []state.Event       `json:"events"` // recent health events, newest last
	Problems     []string            `json:"problems,omitempty"`
}

// LivepatchRow is one livepatch in the kernel and whether the agent owns it.
type LivepatchRow struct {
	klp.Livepatch
	Owner string `json:"owner"` // "klp-agent" or "foreign"
}

// StatusInput is what status reads: nothing is written, nothing locked.
type StatusInput struct {
	Store *state.Store
	Sysfs *klp.Sysfs
	// Source reads the cached manifest (its version store read-only); nil:
	// no wanted patch is shown.
	Source *manifest.Source
	Host   manifest.Host
	Now    time.Time
	// Root is the host's filesystem root (config paths.root), where an
	// enabled kpatch.service is looked for.
	Root string
}

// CollectStatus reads the recorded state, the kernel's livepatches and the
// cached manifest, and selects as the daemon does.
func CollectStatus(in StatusInput) (*Status, error) {
	s := &Status{Kernel: in.Host.Kernel, Good: []state.PatchRecord{}, Blocked: []state.Blocked{}, Livepatches: []LivepatchRow{}}
	// Reading needs no lock: the file is replaced atomically.
	st, err := in.Store.Load()
	if err != nil {
		return nil, err
	}
	k := st.Kernel(s.Kernel)
	s.Phase, s.Applied, s.LastPoll = k.Phase, k.Current, st.LastPoll
	s.Events = append(s.Events, st.Events...)
	s.Good = append(s.Good, k.Good...)
	s.Blocked = append(s.Blocked, k.Blocked...)
	if k.Phase == state.PhaseSoaking {
		s.SoakUntil = &k.SoakUntil
		s.SoakLeft = max(k.SoakUntil.Sub(in.Now), 0).Round(time.Second).String()
	}
	lps, err := in.Sysfs.List()
	if err != nil && !errors.Is(err, klp.ErrNoLivepatch) {
		s.Problems = append(s.Problems, err.Error())
	}
	for _, p := range lps {
		owner := "foreign"
		if k.Current != nil && p.Name == k.Current.Name {
			owner = "klp-agent"
		}
		s.Livepatches = append(s.Livepatches, LivepatchRow{Livepatch: p, Owner: owner})
	}
	if k.Current != nil && k.Phase != state.PhaseRollingBack {
		if p, err := in.Sysfs.Get(k.Current.Name); err != nil || !p.Enabled {
			s.Problems = append(s.Problems, fmt.Sprintf("recorded patch %s is not enabled in the kernel", k.Current.ID()))
		}
	}
	if in.Source != nil {
		switch err := in.Source.LoadCache(); {
		case err != nil:
			s.Problems = append(s.Problems, err.Error())
		case in.Source.Current() != nil:
			d := Wanted(k, in.Source.Current().Manifest, in.Host, in.Now)
			s.Wanted = d.Wanted
			for _, e := range d.Entries {
				if e.Chosen {
					s.WantedReason = e.Reason
				}
			}
		}
	}
	if w := KpatchServiceWarning(in.Root, in.Host.Kernel); w != "" {
		s.Problems = append(s.Problems, w)
	}
	if f := MetricsListenFailure(in.Store.Layout()); f != "" {
		s.Problems = append(s.Problems, f)
	}
	if RequestPending(in.Store.Layout()) {
		s.Problems = append(s.Problems, "an operator rollback request is waiting for the daemon")
	}
	s.redactURLs()
	return s, nil
}

// RecordMetricsListen keeps the outcome of listening on metrics.listen
// for status: a failure (err) is written to the state dir, success or no
// listener clears it. The daemon's start decides; status only reads.
func RecordMetricsListen(l state.Layout, addr string, err error) error {
	path := l.MetricsListenFailure()
	if err == nil {
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return fmt.Errorf("clear metrics listener failure: %w", rerr)
		}
		return nil
	}
	msg := fmt.Sprintf("metrics listener on %s failed: %v (the daemon serves no metrics there; something else may)\n", addr, err)
	return atomicfile.WriteFile(path, []byte(msg), 0o600)
}

// MetricsListenFailure is the recorded listener failure ("" when none).
func MetricsListenFailure(l state.Layout) string {
	b, err := os.ReadFile(l.MetricsListenFailure())
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// KpatchServiceWarning names an enabled kpatch.service that would load
// modules at boot behind the agent's back ("" when there is none): it
// loads every module in /var/lib/kpatch/<krel>/ before the agent starts,
// blocked patches included.
func KpatchServiceWarning(root, krel string) string {
	s := klp.CheckKpatchService(root, krel)
	if !s.Conflicts() {
		return ""
	}
	return fmt.Sprintf("kpatch.service is enabled and loads %d module(s) at boot before klp-agent, blocked ones too (%s): run `systemctl disable kpatch.service`", len(s.Modules), strings.Join(s.Modules, ", "))
}
