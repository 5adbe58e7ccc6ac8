package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/daemon"
	"github.com/klp-agent/klp-agent/agent/state"
)

// maxEvidenceLines bounds the evidence the human status shows per block.
const maxEvidenceLines = 4

func cmdStatus(env *Env, args []string) error {
	fs := newFlags(env, "status", "status [--config PATH] [--json]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	h, err := daemon.LoadHost(*path)
	if err != nil {
		return err
	}
	in, err := h.StatusInput(env.Now())
	if err != nil {
		return err
	}
	s, err := agent.CollectStatus(in)
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

func writeStatus(env *Env, s *agent.Status) {
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
	h, err := daemon.LoadHost(*path)
	if err != nil {
		return err
	}
	log, err := h.Logger(env.Stderr)
	if err != nil {
		return err
	}
	store := h.Store()
	if err := store.Lock(); err == nil {
		defer store.Unlock()
		a, err := h.Agent(log, store, nil)
		if err != nil {
			return err
		}
		if err := a.Start(env.Ctx); err != nil {
			return err
		}
		if err := a.Rollback(env.Ctx, state.CauseOperator, "operator: "+*reason, nil, *block); err != nil {
			return err
		}
		a.Stop()
		fmt.Fprintf(env.Stdout, "rolled back; now %s\n", describeCurrent(a.State().Kernel(a.Host().Kernel)))
		return nil
	} else if !errors.Is(err, state.ErrLocked) {
		return err
	}
	// The daemon holds the lock: hand it the request and wait.
	l := store.Layout()
	if err := agent.WriteRequest(l, agent.RollbackRequest{Reason: *reason, Block: *block, At: env.Now()}); err != nil {
		return err
	}
	deadline := time.Now().Add(*wait)
	for time.Now().Before(deadline) {
		if !agent.RequestPending(l) {
			st, err := store.Load()
			if err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "the daemon rolled back; now %s\n", describeCurrent(st.Kernel(h.Host.Kernel)))
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the daemon did not take the rollback request within %s (it stays queued in %s)", *wait, l.RollbackRequest())
}

func describeCurrent(k *state.Kernel) string {
	if k.Current == nil {
		return string(k.Phase) + ", no patch"
	}
	return string(k.Phase) + " " + k.Current.ID()
}
