package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/daemon"
	"github.com/klp-agent/klp-agent/internal/sanitize"
	"github.com/klp-agent/klp-agent/manifest"
)

// maxEvidenceLines bounds the evidence the human status shows per block.
const maxEvidenceLines = 4

func cmdStatus(env *Env, args []string) error {
	fs := newFlags(env, "status", "status [--config PATH] [--json] [--check] [--snapshot PATH]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	asJSON := fs.Bool("json", false, "print JSON")
	check := fs.Bool("check", false, "print one line, the reason, and exit with the check code (also in --json and the metric klp_agent_check_code):\n"+
		"0 up to date: the wanted level is applied and good, nothing waits;\n"+
		"1 pending: a higher level wanted, a patch soaking or being applied, a hold, or the kill switch on;\n"+
		"2 degraded: a problem, the last poll failed, the manifest or trusted root expired, a rollback in flight, a level above the applied one blocked;\n"+
		"3 not configured: no manifest.url, or nothing to read (no configuration or state, no status snapshot);\n"+
		"4 daemon not running: no process holds the state lock (as root), or the snapshot's daemon stopped or its pid is gone, or its snapshot is older than 3 poll intervals;\n"+
		"5 not polling: no poll has succeeded yet, or the last good one is older than 3 poll intervals (poll_interval with the most poll_jitter);\n"+
		"6 configuration refused: klp-agent run would refuse the configuration on disk (exit 78)")
	snap := fs.String("snapshot", "", "the daemon's status snapshot, read when the configuration or the state is not readable\n(default: paths.status_file, else "+config.DefaultStatusFile+")")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	s, err := collectStatus(env, *path, *snap)
	if err != nil {
		if *check {
			if daemon.Refused(err) {
				fmt.Fprintln(env.Stdout, "configuration refused: klp-agent run would not start: "+sanitize.Text(err.Error()))
				return answerCode(agent.CheckConfigRefused)
			}
			fmt.Fprintln(env.Stdout, "not configured: "+sanitize.Text(err.Error()))
			return answerCode(agent.CheckNotConfigured)
		}
		return err
	}
	if *check {
		code, why := s.Answer.Code, s.Answer.Reason
		fmt.Fprintln(env.Stdout, why)
		if code != 0 {
			return answerCode(code)
		}
		return nil
	}
	if *asJSON {
		b, err := daemon.MarshalStatus(s)
		if err != nil {
			return err
		}
		_, err = env.Stdout.Write(b)
		return err
	}
	writeStatus(env, s)
	return nil
}

// collectStatus reads the status (daemon.ReadStatus), saying on stderr
// when it comes from the daemon's snapshot.
func collectStatus(env *Env, path, snap string) (*agent.Status, error) {
	s, via, err := daemon.ReadStatus(path, snap, env.Now())
	if err != nil {
		return nil, err
	}
	if via != nil {
		fmt.Fprintf(env.Stderr, "klp-agent status: from the daemon's snapshot %s\n", sanitize.Text(via.Error()))
	}
	return s, nil
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
	writeDaemon(w, s, ts)
	if m := s.Manifest; m != nil {
		line := fmt.Sprintf("version %d", m.Version)
		if !m.Accepted.IsZero() {
			line += fmt.Sprintf(", accepted %s (%s ago)", ts(m.Accepted), m.Age)
		}
		exp := "expires"
		if m.Expired {
			exp = "EXPIRED"
		}
		fmt.Fprintf(w, "manifest:   %s, %s %s\n", line, exp, ts(m.Expires))
		writeAnnotations(w, "            ", m.Annotations)
	} else if !s.Configured {
		fmt.Fprintf(w, "manifest:   not configured (manifest.url)\n")
	} else {
		fmt.Fprintf(w, "manifest:   none cached yet\n")
	}
	if r := s.TrustedRoot; r != nil {
		exp := "expires"
		if r.Expired {
			exp = "EXPIRED"
		}
		fmt.Fprintf(w, "root:       version %d, %s %s\n", r.Version, exp, ts(r.Expires))
	}
	if a := s.Applied; a != nil {
		fmt.Fprintf(w, "applied:    %s level %d (sha256 %.12s…, applied %s)\n", a.Name, a.Level, a.SHA256, ts(a.Applied))
		writeFixes(w, s.AppliedEntry)
	} else {
		fmt.Fprintf(w, "applied:    none\n")
	}
	if s.Wanted != nil {
		fmt.Fprintf(w, "wanted:     %s level %d (%s)\n", s.Wanted.Name, s.Wanted.Level, s.WantedReason)
		if s.AppliedEntry == nil || s.Wanted.ID() != s.AppliedEntry.ID() {
			writeFixes(w, s.Wanted)
		}
	} else {
		fmt.Fprintf(w, "wanted:     none for this kernel\n")
	}
	writeControls(w, s, ts)
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
		if !p.OK {
			good := "never"
			if g := p.LastGood(); !g.IsZero() {
				good = ts(g)
			}
			fmt.Fprintf(w, "last good:  %s\n", good)
		}
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
	if s.ConfigRefused != "" {
		fmt.Fprintf(w, "config:     klp-agent run refuses it: %s\n", s.ConfigRefused)
	}
	code, why := s.Check()
	fmt.Fprintf(w, "check:      %d, %s\n", code, why)
}

func writeDaemon(w io.Writer, s *agent.Status, ts func(time.Time) string) {
	switch d := s.Daemon; {
	case d == nil:
		fmt.Fprintf(w, "daemon:     not running (no process holds the state lock, no status snapshot)\n")
	case d.Running && d.Since.IsZero():
		fmt.Fprintf(w, "daemon:     running, pid %d (it holds the state lock; no status snapshot from it)\n", d.PID)
	case d.Running:
		fmt.Fprintf(w, "daemon:     running, pid %d since %s, version %s\n", d.PID, ts(d.Since), d.Version)
	case !d.Stopped.IsZero():
		fmt.Fprintf(w, "daemon:     not running (stopped %s)\n", ts(d.Stopped))
	default:
		fmt.Fprintf(w, "daemon:     not running (pid %d is gone; its snapshot is from %s)\n", d.PID, ts(d.Written))
	}
}

// writeFixes says what a patch fixes, from its manifest entry.
func writeFixes(w io.Writer, p *manifest.Patch) {
	if p == nil {
		return
	}
	if f := p.Fixes(); f != "" {
		fmt.Fprintf(w, "  fixes:    %s\n", f)
	}
	writeAnnotations(w, "            ", p.Annotations)
}

func writeAnnotations(w io.Writer, indent string, a map[string]string) {
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s%s: %s\n", indent, k, a[k])
	}
}

func writeControls(w io.Writer, s *agent.Status, ts func(time.Time) string) {
	c := s.Controls
	if h := c.Hold; h != nil {
		until := "until resumed"
		if !h.Until.IsZero() {
			until = "until " + ts(h.Until)
		}
		fmt.Fprintf(w, "hold:       by %s at %s, %s: %s\n", h.By, ts(h.At), until, orNone(h.Reason))
	} else {
		fmt.Fprintf(w, "hold:       none\n")
	}
	if p := c.Pin; p != nil {
		fmt.Fprintf(w, "pin:        level %d, by %s at %s: %s\n", p.Level, p.By, ts(p.At), orNone(p.Reason))
	} else {
		fmt.Fprintf(w, "pin:        none\n")
	}
	win := c.Windows
	if win == "" {
		win = "any time"
	}
	if !c.WindowOpen && !c.NextWindow.IsZero() {
		win += ", closed now, next opens " + ts(c.NextWindow)
	}
	fmt.Fprintf(w, "windows:    %s\n", win)
	if c.KillSwitch != "" {
		fmt.Fprintf(w, "kill switch: %s: nothing is applied in this boot\n", c.KillSwitch)
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
