package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/daemon"
	"github.com/klp-agent/klp-agent/agent/history"
	"github.com/klp-agent/klp-agent/internal/sanitize"
	"github.com/klp-agent/klp-agent/manifest"
)

func cmdHistory(env *Env, args []string) error {
	fs := newFlags(env, "history", "history [--since TIME] [--json] [--config PATH]")
	path := fs.String("config", config.DefaultPath, "main configuration file (for paths.state_dir)")
	asJSON := fs.Bool("json", false, "print the events as JSON")
	since := fs.String("since", "", "only events from this RFC 3339 time on, or this long ago (7d, 12h)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	var from time.Time
	if *since != "" {
		t, err := parseSince(*since, env.Now())
		if err != nil {
			return err
		}
		from = t
	}
	h, err := daemon.LoadHost(*path)
	if err != nil {
		return err
	}
	events, skipped, err := agent.HistoryLog(h.Layout()).Read()
	if err != nil {
		return err
	}
	events = history.Since(events, from)
	if *asJSON {
		return writeHistoryJSON(env.Stdout, events, skipped)
	}
	writeHistory(env.Stdout, events, skipped)
	return nil
}

// parseSince takes an RFC 3339 time or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := manifest.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("%w: --since %q: an RFC 3339 time or a positive duration (12h, 7d)", errUsage, s)
	}
	return now.Add(-d), nil
}

// historyJSON is `history --json`.
type historyJSON struct {
	Events []history.Event `json:"events"`
	// SkippedLines counts damaged lines (a write torn by a power cut).
	SkippedLines int `json:"skipped_lines"`
}

func writeHistoryJSON(w io.Writer, events []history.Event, skipped int) error {
	sanitize.Strings(&events)
	if events == nil {
		events = []history.Event{}
	}
	b, err := json.MarshalIndent(historyJSON{Events: events, SkippedLines: skipped}, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func writeHistory(w io.Writer, events []history.Event, skipped int) {
	// Reasons, evidence and kernel text come from outside: the output
	// boundary, for the table and --json alike.
	sanitize.Strings(&events)
	if len(events) == 0 {
		fmt.Fprintln(w, "no events recorded")
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tKERNEL\tEVENT\tPATCH\tDETAIL")
		for _, ev := range events {
			patch := "-"
			if ev.Patch != "" {
				patch = fmt.Sprintf("%s@%d", ev.Patch, ev.Level)
			} else if ev.Level > 0 {
				patch = fmt.Sprintf("level %d", ev.Level)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ev.Time.UTC().Format(time.RFC3339), orDash(ev.Kernel), ev.Kind, patch,
				oneLine(historyDetail(ev)))
		}
		tw.Flush()
	}
	if skipped > 0 {
		fmt.Fprintf(w, "(damaged lines skipped: %d)\n", skipped)
	}
}

// historyDetail says what an event's fields mean, in a few words.
func historyDetail(ev history.Event) string {
	var parts []string
	add := func(format string, a ...any) { parts = append(parts, fmt.Sprintf(format, a...)) }
	d := ev.Duration.Round(time.Millisecond)
	switch ev.Kind {
	case history.KindApply:
		add("applied in %s; soaking", d)
	case history.KindReapply:
		add("re-applied after boot in %s", d)
	case history.KindGood:
		add("good after a soak of %s", d)
	case history.KindStall:
		add("transition stalled after %s; reversed", d)
	case history.KindRollback:
		add("to %s in %s, cause %s", orDash(ev.To), d, orDash(ev.Cause))
	case history.KindBlock:
		add("cause %s", orDash(ev.Cause))
	case history.KindUninstall:
		add("kernel taken to %s for klp-agent uninstall", orDash(ev.To))
	case history.KindHold:
		if ev.Until.IsZero() {
			add("until resumed")
		} else {
			add("until %s", ev.Until.UTC().Format(time.RFC3339))
		}
	}
	if ev.Operator != "" {
		add("by %s", ev.Operator)
	}
	if ev.Reason != "" {
		add("%s", ev.Reason)
	}
	if len(ev.Evidence) > 0 {
		add("evidence: %s", strings.Join(ev.Evidence, " | "))
	}
	return strings.Join(parts, "; ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a field on its row: control characters (a kernel line's
// tab or newline, an operator's --reason) are shown escaped.
func oneLine(s string) string { return sanitize.Text(s) }
