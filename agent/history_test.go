package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/klp-agent/klp-agent/agent/history"
	"github.com/klp-agent/klp-agent/agent/state"
)

// history lists the recorded events as "kind patch@level cause".
func (h *host) history() []string {
	h.t.Helper()
	evs, skipped, err := h.agent.History().Read()
	if err != nil || skipped != 0 {
		h.t.Fatalf("history: %v (%d skipped)", err, skipped)
	}
	var out []string
	for _, ev := range evs {
		s := string(ev.Kind)
		if ev.Patch != "" || ev.Level > 0 {
			s += fmt.Sprintf(" %s@%d", ev.Patch, ev.Level)
		}
		if ev.Cause != "" {
			s += " " + ev.Cause
		}
		out = append(out, s)
	}
	return out
}

// Every step the agent journals as an event of this host's history is in
// `klp-agent history` too: apply, soak, a rollback with its cause, the
// block, the operator's unblock, hold and pin, and a kill-switch boot.
func TestHistoryRecordsEachStep(t *testing.T) {
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	h.converge([]int{1, 2})
	if err := h.agent.Rollback(context.Background(), state.CauseHealth, "oops attributed to klp_cmdline_2", []string{"BUG: oops"}, true); err != nil {
		t.Fatal(err)
	}
	h.control(ControlRequest{Op: OpUnblock, Name: h.patches[2].Name, Level: 2})
	h.control(ControlRequest{Op: OpHold})
	h.control(ControlRequest{Op: OpPin, Level: 1})
	h.agent.Stop()
	h.killSwitch = "klp_agent.enable=0 on the kernel command line"
	h.reboot()
	// A restart in the same boot is not another kill-switch boot.
	h.agent.Stop()
	h.restart()
	got := strings.Join(h.history(), "\n")
	want := strings.Join([]string{
		"apply klp_cmdline_1@1",
		"good klp_cmdline_1@1",
		"apply klp_cmdline_2@2",
		"block klp_cmdline_2@2 health",
		"rollback klp_cmdline_2@2 health",
		"unblock klp_cmdline_2@2",
		"hold",
		"pin @1",
		"kill-switch klp_cmdline_1@1",
	}, "\n")
	if got != want {
		t.Fatalf("history:\n%s\nwant:\n%s", got, want)
	}
	evs, _, _ := h.agent.History().Read()
	rb := evs[4]
	if rb.To != h.patches[1].Name+"@1" || rb.Reason != "oops attributed to klp_cmdline_2" || rb.Kernel != krel {
		t.Fatalf("rollback event %+v", rb)
	}
	if good := evs[1]; good.Duration != 31*60e9 {
		t.Fatalf("soak duration %s", good.Duration)
	}
	if hold := evs[6]; hold.Operator != "alice (uid 0)" || hold.Reason != "test" {
		t.Fatalf("hold event %+v", hold)
	}
	// A boot without the switch re-applies, and says so.
	h.agent.Stop()
	h.killSwitch = ""
	h.reboot()
	if got := h.history(); got[len(got)-1] != "reapply klp_cmdline_1@1" {
		t.Fatalf("after a normal boot: %q", got[len(got)-1])
	}
}

// The history can fail (here a directory sits at its name); the apply and
// the rollback go on and succeed: a write error is journaled, not fatal.
func TestHistoryFailureDoesNotStopApplyOrRollback(t *testing.T) {
	h := newHost(t, 1, 2)
	if err := os.Mkdir(h.agent.Layout().History(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := h.converge([]int{1}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 1)
	if err := h.agent.Rollback(context.Background(), state.CauseOperator, "operator", nil, false); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseNone, 0)
	if err := h.agent.History().Append(history.Event{Kind: history.KindHold}); err == nil {
		t.Fatal("the history was writable after all")
	}
}
