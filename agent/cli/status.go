package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

// Status is what `klp-agent status --json` prints.
type Status struct {
	Kernel       string          `json:"kernel"`
	Phase        state.Phase     `json:"phase"`
	Applied      *state.PatchRecord    `json:"applied,omitempty"`
	Wanted       *manifest.Patch `json:"wanted,omitempty"`
	WantedReason string          `json:"wanted_reason,omitempty"`
	SoakUntil    *time.Time      `json:"soak_until,omitempty"`
	SoakLeft     string          `json:"soak_left,omitempty"`
	Good         []state.PatchRecord   `json:"good"`
	Blocked      []state.Blocked `json:"blocked"`
	LastPoll     *state.Poll     `json:"last_poll,omitempty"`
	Livepatches  []LivepatchRow  `json:"livepatches"`
	Events       []state.Event   `json:"events"` // recent health events, newest last
	Problems     []string        `json:"problems,omitempty"`
}

// LivepatchRow is one livepatch in the kernel and whether the agent owns it.
type LivepatchRow struct {
	klp.Livepatch
	Owner string `json:"owner"` // "klp-agent" or "foreign"
}

// maxEvidenceLines bounds the evidence the human status shows per block.
const maxEvidenceLines = 4

func cmdStatus(env *Env, args []string) error {
	fs := newFlags(env, "status", "status [--config PATH] [--json]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	s, err := collectStatus(*path, env.Now())
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	writeStatus(env, s)
	return nil
}

func collectStatus(path string, now time.Time) (*Status, error) {
	l, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	s := &Status{Good: []state.PatchRecord{}, Blocked: []state.Blocked{}, Livepatches: []LivepatchRow{}}
	if s.Kernel, err = klp.KernelRelease(l.Paths.Root); err != nil {
		return nil, err
	}
	// Reading needs no lock: the file is replaced atomically.
	st, err := (&state.Store{Dir: l.Paths.StateDir}).Load()
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
		s.SoakLeft = max(k.SoakUntil.Sub(now), 0).Round(time.Second).String()
	}
	sysfs := &klp.Sysfs{FS: klp.OSFS{Root: l.Paths.Root}}
	lps, err := sysfs.List()
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
		if p, err := sysfs.Get(k.Current.Name); err != nil || !p.Enabled {
			s.Problems = append(s.Problems, fmt.Sprintf("recorded patch %s is not enabled in the kernel", k.Current.ID()))
		}
	}
	// Wanted, from the cached manifest, as the daemon would select it.
	env, err := os.ReadFile(filepath.Join(l.Paths.StateDir, "manifest.dsse.json"))
	if err == nil {
		kr, kerr := manifest.LoadKeyring(l.Trust.KeysDir)
		id, ierr := l.HostID()
		if kerr == nil && ierr == nil {
			v, verr := manifest.Trust{Keys: kr, Threshold: l.Trust.Threshold, MaxSize: int(l.Manifest.MaxSize)}.Verify(env, now, nil)
			if verr != nil {
				s.Problems = append(s.Problems, "cached manifest: "+verr.Error())
			} else {
				d := manifest.Select(v.Manifest, manifest.Host{ID: id, Tier: l.Host.Tier, Kernel: s.Kernel}, now,
					func(p *manifest.Patch) bool { return k.IsBlocked(p.Name, p.Level, p.SHA256) })
				s.Wanted = d.Wanted
				for _, e := range d.Entries {
					if e.Chosen {
						s.WantedReason = e.Reason
					}
				}
			}
		}
	}
	if _, err := os.Stat(agent.RequestPath(l.Paths.StateDir)); err == nil {
		s.Problems = append(s.Problems, "an operator rollback request is waiting for the daemon")
	}
	return s, nil
}

func writeStatus(env *Env, s *Status) {
	w := env.Stdout
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	fmt.Fprintf(w, "kernel:     %s\n", s.Kernel)
	ph := string(s.Phase)
	if s.SoakLeft != "" {
		ph += " (soak ends in " + s.SoakLeft + ")"
	}
	fmt.Fprintf(w, "state:      %s\n", ph)
	if a := s.Applied; a != nil {
		fmt.Fprintf(w, "applied:    %s level %d (sha256 %.12s…, applied %s)\n", a.Name, a.Level, a.SHA256, ts(a.Applied))
	} else {
		fmt.Fprintf(w, "applied:    none\n")
	}
	if s.Wanted != nil {
		fmt.Fprintf(w, "wanted:     %s level %d (%s)\n", s.Wanted.Name, s.Wanted.Level, s.WantedReason)
	} else {
		fmt.Fprintf(w, "wanted:     none for this kernel\n")
	}
	var good []string
	for _, g := range s.Good {
		good = append(good, g.ID())
	}
	fmt.Fprintf(w, "good:       %s\n", orNone(strings.Join(good, ", ")))
	if p := s.LastPoll; p != nil {
		res := "ok"
		if !p.OK {
			res = "failed: " + p.Error
		}
		fmt.Fprintf(w, "last poll:  %s, manifest version %d, %s\n", ts(p.At), p.ManifestVersion, res)
		if !p.Next.IsZero() {
			fmt.Fprintf(w, "next poll:  %s\n", ts(p.Next))
		}
	} else {
		fmt.Fprintf(w, "last poll:  never\n")
	}
	fmt.Fprintf(w, "blocked:    %d\n", len(s.Blocked))
	for _, b := range s.Blocked {
		fmt.Fprintf(w, "  %s at %s: %s\n", b.ID(), ts(b.At), b.Reason)
		// A whole oops is evidence, not a status line: the head here, the
		// rest in --json.
		for _, e := range b.Evidence[:min(len(b.Evidence), maxEvidenceLines)] {
			fmt.Fprintf(w, "    %s\n", e)
		}
		if n := len(b.Evidence) - maxEvidenceLines; n > 0 {
			fmt.Fprintf(w, "    ... %d more evidence lines in status --json\n", n)
		}
	}
	if len(s.Events) > 0 {
		fmt.Fprintf(w, "health events (last %d):\n", len(s.Events))
		for _, e := range s.Events[max(len(s.Events)-5, 0):] {
			what := "recorded"
			switch {
			case e.RolledBack:
				what = "rolled back " + e.Patch
			case e.Attributed:
				what = "attributed to " + e.Patch
			case e.Patch != "":
				what = "while " + e.Patch + " applied"
			}
			fmt.Fprintf(w, "  %s %s/%s (%s): %s\n", ts(e.At), e.Source, e.Kind, what, e.Header)
		}
	} else {
		fmt.Fprintf(w, "health events: none\n")
	}
	fmt.Fprintf(w, "livepatches in the kernel: %d\n", len(s.Livepatches))
	if len(s.Livepatches) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  NAME\tENABLED\tTRANSITION\tOWNER")
		for _, p := range s.Livepatches {
			fmt.Fprintf(tw, "  %s\t%v\t%v\t%s\n", p.Name, p.Enabled, p.Transition, p.Owner)
		}
		tw.Flush()
	}
	for _, p := range s.Problems {
		fmt.Fprintf(w, "problem:    %s\n", p)
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func cmdRollback(env *Env, args []string) error {
	fs := newFlags(env, "rollback", "rollback [--config PATH] [--block] [--reason TEXT] [--wait DURATION]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	block := fs.Bool("block", false, "never re-apply the current patch on this host")
	reason := fs.String("reason", "requested with klp-agent rollback", "why, for the journal and the block record")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for a running daemon to do it")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	store := &state.Store{}
	b, err := build(*path, store, os.Stderr, nil)
	if err != nil {
		return err
	}
	if err := store.Lock(); err == nil {
		defer store.Unlock()
		a := b.daemon.Agent
		if err := a.Start(env.Ctx); err != nil {
			return err
		}
		if err := a.Rollback(env.Ctx, "operator: "+*reason, nil, *block); err != nil {
			return err
		}
		a.Stop()
		fmt.Fprintf(env.Stdout, "rolled back; now %s\n", describeCurrent(a.State().Kernel(a.Host().Kernel)))
		return nil
	} else if !errors.Is(err, state.ErrLocked) {
		return err
	}
	// The daemon holds the lock: hand it the request and wait.
	if err := agent.WriteRequest(store.Dir, agent.RollbackRequest{Reason: *reason, Block: *block, At: env.Now()}); err != nil {
		return err
	}
	deadline := time.Now().Add(*wait)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(agent.RequestPath(store.Dir)); errors.Is(err, os.ErrNotExist) {
			st, err := store.Load()
			if err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "the daemon rolled back; now %s\n", describeCurrent(st.Kernel(b.daemon.Agent.Host().Kernel)))
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the daemon did not take the rollback request within %s (it stays queued in %s)", *wait, agent.RequestPath(store.Dir))
}

func describeCurrent(k *state.Kernel) string {
	if k.Current == nil {
		return string(k.Phase) + ", no patch"
	}
	return string(k.Phase) + " " + k.Current.ID()
}
