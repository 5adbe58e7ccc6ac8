package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/agent/window"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

func (h *host) control(r ControlRequest) string {
	h.t.Helper()
	if r.By == "" {
		r.Operator = state.Operator{By: "alice (uid 0)", At: h.now, Reason: "test"}
	}
	msg, err := h.agent.Control(r)
	if err != nil {
		h.t.Fatalf("%s: %v", r.Op, err)
	}
	return msg
}

func TestHoldBlocksNewLevelsNotRollbacks(t *testing.T) {
	h := newHost(t, 1, 2, 3)
	h.converge([]int{1})
	h.soak()
	h.control(ControlRequest{Op: OpHold})
	if err := h.converge([]int{1, 2}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseGood, 1)
	plan, _ := h.agent.Plan(h.manifest([]int{1, 2}))
	if !strings.Contains(plan.Waits, "held by alice (uid 0) until resumed: test") {
		t.Fatalf("plan while held: %+v", plan)
	}
	// The hold survives a restart (it is in the state file).
	h.agent.Stop()
	h.restart()
	if err := h.converge([]int{1, 2}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseGood, 1)
	// A revocation still rolls back while held.
	if err := h.converge([]int{1, 2}, 1); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseNone, 0)
	h.control(ControlRequest{Op: OpResume})
	if err := h.converge([]int{1, 2}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 2)
}

func TestHoldUntilExpires(t *testing.T) {
	h := newHost(t, 1)
	h.control(ControlRequest{Op: OpHold, Until: h.now.Add(time.Hour)})
	plan, _ := h.agent.Plan(h.manifest([]int{1}))
	if plan.Apply != nil || !plan.Until.Equal(h.now.Add(time.Hour)) {
		t.Fatalf("plan while held until an hour from now: %+v", plan)
	}
	h.now = h.now.Add(time.Hour)
	if err := h.converge([]int{1}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 1)
}

func TestPin(t *testing.T) {
	h := newHost(t, 1, 2, 3)
	h.control(ControlRequest{Op: OpPin, Level: 2})
	d := h.agent.Wanted(h.manifest([]int{1, 2, 3}).Manifest)
	if d.Wanted == nil || d.Wanted.Level != 2 || !strings.Contains(d.Entries[0].Reason, "above the pin at level 2") {
		t.Fatalf("wanted under pin 2: %+v", d)
	}
	h.converge([]int{1, 2, 3})
	h.expect(state.PhaseSoaking, 2)
	h.soak()
	h.agent.Stop()
	h.restart()
	if err := h.converge([]int{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseGood, 2)
	h.control(ControlRequest{Op: OpUnpin})
	h.converge([]int{1, 2, 3})
	h.expect(state.PhaseSoaking, 3)
	if _, err := h.agent.Control(ControlRequest{Op: OpPin, Level: 0}); !errors.Is(err, ErrControl) {
		t.Fatalf("pin 0: %v", err)
	}
}

func TestUnblockThenReapply(t *testing.T) {
	h := newHost(t, 1)
	h.converge([]int{1})
	if err := h.agent.Rollback(context.Background(), state.CauseHealth, "false positive", nil, true); err != nil {
		t.Fatal(err)
	}
	h.converge([]int{1})
	h.expect(state.PhaseNone, 0)
	if _, err := h.agent.Control(ControlRequest{Op: OpUnblock, Name: "klp_cmdline_2", Level: 2}); !errors.Is(err, ErrControl) {
		t.Fatalf("unblocking what is not blocked: %v", err)
	}
	h.control(ControlRequest{Op: OpUnblock, Name: "klp_cmdline_1", Level: 1})
	h.converge([]int{1})
	h.expect(state.PhaseSoaking, 1)
}

func TestWindowClosedWaitsOpenApplies(t *testing.T) {
	h := newHost(t, 1)
	// h.now is Wednesday 2026-11-25 12:00 UTC.
	var err error
	h.windows, err = window.ParseAll([]window.Spec{{Days: []string{"wed"}, Start: "14:00", End: "16:00", Timezone: "UTC"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.restart()
	plan, _ := h.agent.Plan(h.manifest([]int{1}))
	if plan.Apply != nil || !plan.Until.Equal(time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC)) || !strings.Contains(plan.Waits, "maintenance windows") {
		t.Fatalf("plan outside the window: %+v", plan)
	}
	h.converge([]int{1})
	h.expect(state.PhaseNone, 0)
	h.now = time.Date(2026, 11, 25, 14, 30, 0, 0, time.UTC)
	h.converge([]int{1})
	h.expect(state.PhaseSoaking, 1)
	// Outside it again: a rollback does not wait, and after a reboot the
	// good level is re-applied at once.
	h.soak()
	h.now = time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	h.agent.Stop()
	h.reboot()
	h.expect(state.PhaseGood, 1)
	if err := h.agent.Rollback(context.Background(), state.CauseOperator, "operator", nil, false); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseNone, 0)
}

func TestKillSwitch(t *testing.T) {
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	h.agent.Stop()
	h.killSwitch = "klp_agent.enable=0 on the kernel command line"
	h.reboot()
	if served := h.kernel.Patched("cmdline_proc_show"); served != "" || len(h.kernel.Loads) != 0 {
		t.Fatalf("kill switch: the boot re-applied %q", served)
	}
	if err := h.converge([]int{1, 2}); err != nil || len(h.kernel.Loads) != 0 {
		t.Fatalf("kill switch: converge loaded %v (%v)", h.kernel.Loads, err)
	}
	if why, _ := h.agent.Gate(); !strings.Contains(why, "kill switch") {
		t.Fatalf("gate: %q", why)
	}
	// The next boot without it re-applies the recorded good level.
	h.agent.Stop()
	h.killSwitch = ""
	h.reboot()
	h.expect(state.PhaseGood, 1)
}

// Under the kill switch a revocation and an operator rollback move the
// record (and rpm's database) back without loading anything; the next
// boot without the switch applies the level stepped back to.
func TestKillSwitchRollbackIsRecordOnly(t *testing.T) {
	h := newHost(t, 1, 2, 3)
	h.converge([]int{1})
	h.soak()
	h.converge([]int{1, 2})
	h.soak()
	h.converge([]int{1, 2, 3})
	h.soak()
	h.agent.Stop()
	h.killSwitch = "klp_agent.enable=0 on the kernel command line"
	h.reboot()
	if err := h.converge([]int{1, 2, 3}, 3); err != nil {
		t.Fatal(err)
	}
	if err := h.agent.Rollback(context.Background(), state.CauseOperator, "operator", nil, false); err != nil {
		t.Fatal(err)
	}
	k := h.agent.Kernel()
	if len(h.kernel.Loads) != 0 || k.Current == nil || k.Current.Level != 1 || !k.IsBlocked(h.patches[3].Name, 3, h.patches[3].SHA256) {
		t.Fatalf("kill switch: loads %v, current %+v, blocked %+v", h.kernel.Loads, k.Current, k.Blocked)
	}
	if got := h.rpmQ(); got != "1-1" {
		t.Fatalf("rpm after record-only rollbacks: %s", got)
	}
	h.agent.Stop()
	h.killSwitch = ""
	h.reboot()
	h.expect(state.PhaseGood, 1)
}

// The daemon takes controls from request files and answers them: hold
// keeps a published level off, poll answers with the outcome, resume lets
// it in, and a health rollback happens while held.
func TestDaemonTakesControls(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h := newHost(t, 1, 2)
	h.publish(priv, 1, []int{1})
	h.polls(pub)
	var now atomic.Int64 // the daemon reads the clock while the test moves it
	now.Store(h.now.UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()).UTC() }
	h.agent.d.Now, h.agent.d.Store.Now = clock, clock
	events := make(chan health.Event)
	d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}, Events: events}
	d.Init()
	stop := runLoop(t, d)
	kernelLevel := func() string { return h.kernel.Patched("cmdline_proc_show") }
	waitFor(t, "level 1 applied", func() bool { return kernelLevel() == "klp_cmdline_1" })
	ask := func(r ControlRequest) ControlResult {
		t.Helper()
		r.Operator = state.Operator{By: "bob (uid 0)", Reason: "change freeze"}
		res, err := d.Ask(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		if res.PID != os.Getpid() {
			t.Fatalf("%s answered by pid %d", r.Op, res.PID)
		}
		return res
	}
	if res := ask(ControlRequest{Op: OpHold}); !res.OK || !strings.Contains(res.Message, "held") {
		t.Fatalf("hold: %+v", res)
	}
	now.Add(int64(time.Hour)) // level 1's soak is over
	h.publish(priv, 2, []int{1, 2})
	res := ask(ControlRequest{Op: OpPoll})
	if !res.OK || !strings.Contains(res.Message, "manifest version 2") || !strings.Contains(res.Message, "held by bob (uid 0) until resumed: change freeze") || kernelLevel() != "klp_cmdline_1" {
		t.Fatalf("poll while held: %+v, kernel %q", res, kernelLevel())
	}
	if res := ask(ControlRequest{Op: OpUnblock, Name: "klp_cmdline_9", Level: 9}); res.OK {
		t.Fatalf("unblock of nothing: %+v", res)
	}
	// A health rollback happens while held.
	events <- health.Event{Kind: health.KindOops, Header: "Oops: 0002 [#1] PREEMPT SMP NOPTI", Lines: []string{"Oops: 0002"},
		RIP: health.Frame{Func: "klp_fault", Module: "klp_cmdline_1"}}
	waitFor(t, "health rollback while held", func() bool { return kernelLevel() == "" })
	// Level 2 is eligible now (no soak runs) but held.
	if res := ask(ControlRequest{Op: OpPoll}); !res.OK || !strings.Contains(res.Message, "now none") || kernelLevel() != "" {
		t.Fatalf("poll after the rollback while held: %+v, kernel %q", res, kernelLevel())
	}
	if res := ask(ControlRequest{Op: OpResume}); !res.OK {
		t.Fatalf("resume: %+v", res)
	}
	waitFor(t, "level 2 applied after resume", func() bool { return kernelLevel() == "klp_cmdline_2" })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// A poll without the daemon (klp-agent poll when none runs) applies what
// is wanted; status then shows the manifest in force, what the applied
// patch fixes and the controls.
func TestPollOnceAndStatusShowsControls(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h := newHost(t, 1, 2)
	p := h.patches[1]
	p.Description, p.CVEs, p.Annotations = "fixes cmdline", []string{"CVE-2026-10001"}, map[string]string{"risk": "low"}
	h.patches[1] = p
	h.publish(priv, 3, []int{1})
	h.polls(pub)
	out, err := h.agent.PollOnce(context.Background())
	if err != nil || !strings.Contains(out, "manifest version 3; now soaking klp_cmdline_1@1") {
		t.Fatalf("poll: %q %v", out, err)
	}
	h.control(ControlRequest{Op: OpHold, Until: h.now.Add(time.Hour)})
	h.control(ControlRequest{Op: OpPin, Level: 5})
	// status reads the cache through its own source
	src := &manifest.Source{Fetcher: h.source.Fetcher, Trust: h.source.Trust, Store: h.source.Store, Now: h.source.Now, Cache: h.source.Cache}
	s, err := CollectStatus(StatusInput{Store: &state.Store{Dir: h.stateDir}, Sysfs: &klp.Sysfs{FS: h.kernel}, Source: src,
		Host: h.agent.Host(), Now: h.now.Add(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if s.Manifest == nil || s.Manifest.Version != 3 || s.Manifest.Age != "10m0s" || !s.Configured {
		t.Fatalf("manifest in status: %+v", s.Manifest)
	}
	if s.AppliedEntry == nil || s.AppliedEntry.Fixes() != "fixes cmdline; CVE-2026-10001" || s.AppliedEntry.Annotations["risk"] != "low" {
		t.Fatalf("what the applied patch fixes: %+v", s.AppliedEntry)
	}
	c := s.Controls
	if c.Hold == nil || c.Pin == nil || c.Pin.Level != 5 || !strings.Contains(c.Waiting, "held by alice") || !c.WindowOpen || c.Windows != "any time" {
		t.Fatalf("controls in status: %+v", c)
	}
	s.Daemon = &DaemonInfo{PID: 1, Running: true} // as status sees a running daemon
	if code, why := s.Check(); code != CheckPending {
		t.Fatalf("check while soaking and held: %d %s", code, why)
	}
}

// The daemon looks again when a hold ends by itself (or a window opens),
// not only at the next poll an interval later.
func TestDaemonAppliesWhenHoldEnds(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h := newHost(t, 1)
	h.now = time.Now().UTC() // the hold's end is a real timer
	h.publish(priv, 1, []int{1})
	h.polls(pub)
	h.agent.d.Now, h.agent.d.Store.Now = time.Now, time.Now
	if err := h.agent.LoadState(); err != nil {
		t.Fatal(err)
	}
	h.control(ControlRequest{Op: OpHold, Until: time.Now().Add(300 * time.Millisecond)})
	d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}}
	start := time.Now()
	stop := runLoop(t, d)
	waitFor(t, "level 1 applied once the hold ended", func() bool { return h.kernel.Patched("cmdline_proc_show") == "klp_cmdline_1" })
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("applied after %s, during the hold", el)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// Without manifest.url the daemon answers a poll at once, as failed.
func TestDaemonPollWithoutSource(t *testing.T) {
	h := newHost(t)
	d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}}
	d.Init() // before Ask and Run race to make its channels
	stop := runLoop(t, d)
	res, err := d.Ask(context.Background(), ControlRequest{Op: OpPoll})
	if err != nil || res.OK || !strings.Contains(res.Message, "manifest.url is not set") {
		t.Fatalf("poll without a source: %+v %v", res, err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// A request the loop has not answered when it stops gets no verdict (an
// error), never an answer that reads as done.
func TestAskWhenTheLoopStops(t *testing.T) {
	d := &Loop{Agent: newHost(t).agent}
	d.Init() // no Run: nobody takes the request
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if res, err := d.Ask(ctx, ControlRequest{Op: OpHold}); err == nil || res.OK {
		t.Fatalf("no loop running: %+v %v", res, err)
	}
}

// A hold reads as one sentence, with who, until when and why; status
// --check says it once ("held: held by" before).
func TestHoldWording(t *testing.T) {
	h := newHost(t)
	h.control(ControlRequest{Op: OpHold, Operator: state.Operator{By: "root (uid 0)", Reason: "change freeze"}})
	why, _ := h.agent.Gate()
	if why != "held by root (uid 0) until resumed: change freeze" {
		t.Errorf("gate: %q", why)
	}
	h.control(ControlRequest{Op: OpHold, Operator: state.Operator{By: "alice via sudo (uid 0)"}, Until: h.now.Add(time.Hour)})
	why, _ = h.agent.Gate()
	if why != "held by alice via sudo (uid 0) until 2026-11-25T13:00:00Z" {
		t.Errorf("gate with --until, no reason: %q", why)
	}
	s := Status{At: h.now, Configured: true, Phase: state.PhaseNone, LastPoll: &state.Poll{At: h.now, OK: true},
		Daemon:   &DaemonInfo{PID: 42, Running: true, Written: h.now},
		Controls: Controls{Hold: h.agent.State().Hold, Waiting: why}}
	if code, line := s.Check(); code != CheckPending || line != why {
		t.Errorf("check: %d %q", code, line)
	}
}
