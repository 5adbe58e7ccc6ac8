package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/testutil/runtest"
	"github.com/klp-agent/klp-agent/klp/klptest"
	"github.com/klp-agent/klp-agent/manifest"
)

// polls gives the agent a manifest source for the served manifest,
// trusting pub, and restarts it.
func (h *host) polls(pub ed25519.PublicKey) {
	h.t.Helper()
	f, err := manifest.NewFetcher(manifest.FetcherConfig{URL: h.srv.URL + "/manifest.json", RetryWait: time.Millisecond})
	if err != nil {
		h.t.Fatal(err)
	}
	l := state.Layout{Dir: h.stateDir}
	h.source = &manifest.Source{Fetcher: f, Trust: manifest.Trust{Keys: manifest.Keyring{manifest.KeyID(pub): pub}, Threshold: 1},
		Store: &manifest.MemVersionStore{}, Now: func() time.Time { return h.now },
		Cache: manifest.CacheFiles{Envelope: l.ManifestEnvelope(), Validators: l.ManifestValidators()}}
	h.restart()
}

// publish signs a manifest with the given levels into the served dir.
func (h *host) publish(key ed25519.PrivateKey, version uint64, levels []int, revoked ...int) {
	h.t.Helper()
	m := h.manifest(levels, revoked...).Manifest
	m.Version = version
	payload, err := manifest.Marshal(m)
	if err != nil {
		h.t.Fatal(err)
	}
	env, err := manifest.SignPayload(context.Background(), payload, manifest.NewSigner(key))
	if err != nil {
		h.t.Fatal(err)
	}
	h.serve(env)
}

// serve replaces the served manifest. HTTP validators have one-second
// resolution, so each version gets a distinct modification time.
func (h *host) serve(b []byte) {
	h.t.Helper()
	p := filepath.Join(h.rpmDir, "manifest.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		h.t.Fatal(err)
	}
	h.published++
	mt := time.Unix(1700000000+int64(h.published), 0)
	if err := os.Chtimes(p, mt, mt); err != nil {
		h.t.Fatal(err)
	}
}

// runLoop runs d until the returned stop is called (or the test ends).
func runLoop(t *testing.T, d *Loop) (stop func() error) {
	return runtest.Start(t, d.Run)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDaemonPollsAppliesAndTakesRequests(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h := newHost(t, 1, 2)
	h.publish(priv, 1, []int{1})
	h.polls(pub)
	events := make(chan health.Event)
	d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: 20 * time.Millisecond}, Events: events}
	d.Init()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	kernelLevel := func() string { return h.kernel.Patched("cmdline_proc_show") }
	waitFor(t, "level 1 applied from the manifest", func() bool { return kernelLevel() == "klp_cmdline_1" })

	// A report attributed to the patch rolls back and blocks.
	events <- health.Event{Kind: health.KindOops, Header: "Oops: 0002 [#1] PREEMPT SMP NOPTI", Lines: []string{"Oops: 0002"},
		RIP: health.Frame{Func: "klp_fault", Module: "klp_cmdline_1"}}
	waitFor(t, "health rollback to no patch", func() bool { return kernelLevel() == "" })

	// A tampered manifest is rejected and recorded in the last poll.
	h.serve([]byte(`{"payloadType":"x","payload":"","signatures":[]}`))
	waitFor(t, "rejection recorded", func() bool {
		st, err := (&state.Store{Dir: h.stateDir}).Load()
		return err == nil && st.LastPoll != nil && !st.LastPoll.OK && strings.Contains(st.LastPoll.Error, "payload type")
	})

	// Level 2 published: applied; then an operator rollback asked of the
	// loop steps back to no patch (1 is blocked) and blocks 2, and says so.
	h.publish(priv, 2, []int{1, 2})
	waitFor(t, "level 2 applied", func() bool { return kernelLevel() == "klp_cmdline_2" })
	res, err := d.Ask(ctx, ControlRequest{Op: OpRollback, Operator: state.Operator{Reason: "test"}, Block: true})
	if err != nil || !res.OK || res.Message != "rolled back; now none, no patch (the patch rolled back from is blocked here)" || kernelLevel() != "" {
		t.Fatalf("operator rollback: %+v %v, kernel %q", res, err, kernelLevel())
	}
	// Nothing applied now: the loop refuses a second one, and says why.
	if res, err := d.Ask(ctx, ControlRequest{Op: OpRollback}); err != nil || res.OK || res.Message != "rollback: no patch applied" {
		t.Fatalf("rollback with nothing applied: %+v %v", res, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st, err := (&state.Store{Dir: h.stateDir}).Load()
	if err != nil || !st.CleanStop || len(st.Kernels[krel].Blocked) != 2 {
		t.Fatalf("after stop: clean=%v blocked=%d err=%v", st.CleanStop, len(st.Kernels[krel].Blocked), err)
	}
}

// A kernel report attributed to the current patch rolls it back and blocks
// it; an unrelated one after the soak does not.
func TestDaemonJudgesKernelReports(t *testing.T) {
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	h.converge([]int{1, 2})
	h.soak()
	events := make(chan health.Event)
	d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}, Events: events}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	events <- health.Event{Kind: health.KindWarning, Header: "WARNING: CPU: 0 PID: 0 at net/sched/sch_generic.c:525 dev_watchdog+0x207/0x210",
		RIP: health.Frame{Func: "dev_watchdog"}}
	// Replaced functions count even without a module name in the trace.
	events <- health.Event{Kind: health.KindOops, Header: "Oops: 0002 [#1] PREEMPT SMP NOPTI",
		RIP: health.Frame{Func: "klp_fault", Module: "other"}, Frames: []health.Frame{{Func: "cmdline_proc_show"}}}
	waitFor(t, "rollback to level 1", func() bool { return h.kernel.Patched("cmdline_proc_show") == "klp_cmdline_1" })
	cancel()
	<-done
	k := h.agent.State().Kernels[krel]
	if !k.IsBlocked("klp_cmdline_2", 2, h.patches[2].SHA256) || !strings.Contains(k.Blocked[0].Reason, "oops attributed to klp_cmdline_2") {
		t.Fatalf("blocked %+v", k.Blocked)
	}
	// Both reports are kept for status, on disk.
	st, err := (&state.Store{Dir: h.stateDir}).Load()
	if err != nil || len(st.Events) != 2 || st.Events[0].RolledBack || !st.Events[1].RolledBack || !st.Events[1].Attributed ||
		st.Events[1].Patch != "klp_cmdline_2" || st.Events[1].Kind != "oops" {
		t.Fatalf("recorded events %+v (%v)", st.Events, err)
	}
}

// The daemon ends a soak by itself, though nothing ticks: a timer set for
// the soak's end, and no sooner than Recheck looks again (the wall clock
// can step).
func TestDaemonEndsSoak(t *testing.T) {
	h := newHost(t, 1)
	if err := h.converge([]int{1}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 1)
	var now atomic.Int64 // the daemon reads the clock while the test moves it
	now.Store(h.now.UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()).UTC() }
	h.agent.d.Now, h.agent.d.Store.Now = clock, clock
	// The watchdog's heartbeat is busy within each step, idle between.
	hb := &Heartbeat{}
	var steps, idleSteps atomic.Int32
	d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour, Recheck: 5 * time.Millisecond}, Heartbeat: hb,
		Changed: func() {
			steps.Add(1)
			if hb.since.Load() == 0 {
				idleSteps.Add(1)
			}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	phase := func() state.Phase {
		st, err := (&state.Store{Dir: h.stateDir}).Load()
		if err != nil {
			t.Fatal(err)
		}
		return st.Kernels[krel].Phase
	}
	time.Sleep(50 * time.Millisecond) // ten rechecks
	if p := phase(); p != state.PhaseSoaking {
		t.Fatalf("phase %s before the soak ended", p)
	}
	now.Add(int64(31 * time.Minute))
	waitFor(t, "the soak to end", func() bool { return phase() == state.PhaseGood })
	waitFor(t, "the daemon idle", func() bool { return hb.Busy(time.Now()) == 0 })
	// Changed runs once at start, outside any step, then in each step
	// (the first poll, the soak's end).
	if n, idle := steps.Load(), idleSteps.Load(); n < 3 || idle != 1 {
		t.Fatalf("%d steps, %d of them with the heartbeat idle", n, idle)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A slow mirror holds level 2's download while good level 1 oopses: the
// oops is judged against level 1 (live when it happened) and acted on at
// once, the download is abandoned, level 1 is blocked and level 2 is not.
func TestHealthEventDuringStalledDownload(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	hit, aborted := stallLevel2(t, h)
	h.publish(priv, 1, []int{1, 2})
	h.polls(pub)
	events := make(chan health.Event)
	d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}, Events: events}
	d.Init()
	stop := runLoop(t, d)
	select {
	case <-hit:
	case <-time.After(10 * time.Second):
		t.Fatal("level 2's download never started")
	}
	// An operator's control is answered at once too, the download still
	// stalled (not cancelled for it).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if res, err := d.Ask(ctx, ControlRequest{Op: OpPin, Level: 5}); err != nil || !res.OK {
		t.Fatalf("pin during the stalled download: %+v %v", res, err)
	}
	select {
	case <-aborted:
		t.Fatal("the pin cancelled the download")
	default:
	}
	start := time.Now()
	events <- health.Event{Kind: health.KindOops, Header: "BUG: kernel NULL pointer dereference, address: 0000000000000000",
		Lines: []string{"Oops: 0000 [#1] PREEMPT SMP NOPTI"}, RIP: health.Frame{Func: "cmdline_proc_show", Module: "klp_cmdline_1"}}
	waitFor(t, "level 1 rolled back", func() bool { return h.kernel.Patched("cmdline_proc_show") == "" })
	// The bar the issue sets: acted on within a second (it takes
	// milliseconds; the download would have held it for its whole deadline).
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the oops waited %s behind the download", took)
	}
	select {
	case <-aborted:
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled download was not abandoned")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	k := h.agent.State().Kernels[krel]
	if !k.IsBlocked("klp_cmdline_1", 1, h.patches[1].SHA256) || k.IsBlocked("klp_cmdline_2", 2, h.patches[2].SHA256) {
		t.Fatalf("blocked %+v: want level 1 (the culprit) only", k.Blocked)
	}
	if k.Target != nil || k.Current != nil || k.Phase != state.PhaseNone {
		t.Fatalf("after the rollback: phase %s, current %v, target %v", k.Phase, k.Current, k.Target)
	}
	if b := k.Blocked[0]; b.Cause != state.CauseHealth || !strings.Contains(b.Reason, "attributed to klp_cmdline_1") {
		t.Fatalf("block record %+v", b)
	}
}

// A report that comes after an apply replaced the patch it happened under
// (it waited in the channel while the new level went in) blocks the old
// patch, and leaves the new one alone.
func TestEventJudgedAgainstThePatchLiveAtItsTime(t *testing.T) {
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	before := h.now
	h.now = h.now.Add(time.Minute)
	h.converge([]int{1, 2})
	events := make(chan health.Event, 1)
	events <- health.Event{At: before, Kind: health.KindOops, Header: "Oops: 0000 [#1] PREEMPT SMP NOPTI",
		RIP: health.Frame{Func: "cmdline_proc_show", Module: "klp_cmdline_1"}}
	stop := runLoop(t, &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}, Events: events})
	waitFor(t, "level 1 blocked", func() bool {
		st, err := (&state.Store{Dir: h.stateDir}).Load()
		return err == nil && len(st.Kernels[krel].Blocked) == 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 2)
	if k := h.agent.State().Kernels[krel]; !k.IsBlocked("klp_cmdline_1", 1, h.patches[1].SHA256) {
		t.Fatalf("blocked %+v", k.Blocked)
	}
}

// A report that names only a raw address (an unsymbolised RIP) inside the
// live patch's code is attributed to it: the agent knows where the
// module's text is from the module file and /sys/module/*/sections.
func TestAttributionByAddress(t *testing.T) {
	h := newHost(t, 1)
	h.converge([]int{1})
	h.soak()
	inside := klptest.SectionAddr("klp_cmdline_1", ".text") + 4
	events := make(chan health.Event, 2)
	// One just outside first: not the patch's (and not crash-class
	// enough to roll back unattributed after the soak).
	events <- health.Event{Kind: health.KindWarning, Header: "WARNING: CPU: 0 PID: 1 at 0xffffffff81000000", RIP: health.Frame{Addr: 0xffffffff81000000}}
	events <- health.Event{Kind: health.KindOops, Header: "BUG: unable to handle page fault for address: ffffc90005000410", RIP: health.Frame{Addr: inside}}
	stop := runLoop(t, &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}, Events: events})
	waitFor(t, "rollback", func() bool { return h.kernel.Patched("cmdline_proc_show") == "" })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st := h.agent.State()
	if len(st.Events) != 2 || st.Events[0].Attributed || !st.Events[1].Attributed || !st.Events[1].RolledBack {
		t.Fatalf("events %+v", st.Events)
	}
}

// A report whose RIP is a raw address inside the text of the patch the
// agent just replaced (and unloaded) is that patch's, not the live one's:
// the replaced patch is blocked and the live one keeps soaking. The
// report's lines are the real 4.18 oops in unloaded module code
// (testdata/corpus/reports/oops-paging-request-raw-rip-unloaded-module-4.18.txt,
// "RIP: 0010:0x..." and "Code: Bad RIP value."), its address moved into
// the replaced patch's text.
func TestAttributionToTheReplacedPatchByAddress(t *testing.T) {
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	inside := klptest.SectionAddr("klp_cmdline_1", ".text") + 4
	h.now = h.now.Add(time.Minute)
	h.converge([]int{1, 2})
	if h.kernel.Patched("cmdline_proc_show") != "klp_cmdline_2" {
		t.Fatalf("level 2 not live: %q", h.kernel.Patched("cmdline_proc_show"))
	}
	var c health.Classifier
	var evs []health.Event
	for i, l := range []string{
		"BUG: unable to handle kernel paging request at " + fmt.Sprintf("%016x", inside),
		"PGD 8fe4c0d067 P4D 8fe4c0d067 PUD 8fe4c0f067 PMD 103ad89067 PTE 0",
		"Oops: 0010 [#1] SMP NOPTI",
		"CPU: 67 PID: 668 Comm: kworker/67:1 Kdump: loaded Not tainted 4.18.0.x86_64 #47",
		fmt.Sprintf("RIP: 0010:0x%016x", inside),
		"Code: Bad RIP value.",
		"Call Trace:",
		" ? process_one_work+0x195/0x390",
		" ? worker_thread+0x30/0x390",
		"---[ end trace c82a412d93f57412 ]---",
	} {
		r, err := health.ParseKmsg([]byte(fmt.Sprintf("%d,%d,%d,-;%s\n", 1, i+1, 1000*(i+1), l)))
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, c.Feed(r, h.now)...)
	}
	if len(evs) != 1 || evs[0].RIP.Addr != inside {
		t.Fatalf("events %+v", evs)
	}
	events := make(chan health.Event, 1)
	events <- evs[0]
	stop := runLoop(t, &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}, Events: events})
	waitFor(t, "level 1 blocked", func() bool {
		st, err := (&state.Store{Dir: h.stateDir}).Load()
		return err == nil && len(st.Kernels[krel].Blocked) == 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 2)
	k := h.agent.State().Kernels[krel]
	if !k.IsBlocked("klp_cmdline_1", 1, h.patches[1].SHA256) {
		t.Fatalf("blocked %+v", k.Blocked)
	}
	if ev := h.agent.State().Events; len(ev) != 1 || !ev[0].Attributed || ev[0].Patch != "klp_cmdline_1" || ev[0].RolledBack {
		t.Fatalf("events %+v", ev)
	}
}

// A netconsole report (UDP, which anyone on the path can send) is recorded
// but does not roll back on its own, unless the operator says it may and
// it names this host's kernel release. One naming no release (every
// kernel before 6.6: RHEL 8 and 9, Ubuntu 5.15) never does, acts or not.
func TestNetconsoleAloneDoesNotAct(t *testing.T) {
	for _, tc := range []struct {
		acts     bool
		release  string
		rollback bool
	}{
		{false, "", false},
		{false, "6.1.0-57-amd64", false},
		{true, "", false},
		{true, "6.1.0-57-amd64", true},
	} {
		t.Run(fmt.Sprintf("acts=%v,release=%q", tc.acts, tc.release), func(t *testing.T) {
			h := newHost(t, 1)
			h.converge([]int{1})
			events := make(chan health.Event, 1)
			events <- health.Event{Kind: health.KindOops, Source: "netconsole", Sender: "10.0.0.9:6665", Release: tc.release,
				Header: "Oops: 0000 [#1] PREEMPT SMP NOPTI", RIP: health.Frame{Func: "cmdline_proc_show", Module: "klp_cmdline_1"}}
			stop := runLoop(t, &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour, NetconsoleActs: tc.acts}, Events: events})
			waitFor(t, "the event recorded", func() bool {
				st, err := (&state.Store{Dir: h.stateDir}).Load()
				return err == nil && len(st.Events) == 1
			})
			if tc.rollback {
				waitFor(t, "rollback", func() bool { return h.kernel.Patched("cmdline_proc_show") == "" })
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if rolled := h.kernel.Patched("cmdline_proc_show") == ""; rolled != tc.rollback {
				t.Fatalf("rolled back %v, want %v", rolled, tc.rollback)
			}
			if ev := h.agent.State().Events[0]; !ev.Attributed || ev.RolledBack != tc.rollback {
				t.Fatalf("event %+v", ev)
			}
		})
	}
}

// A server (or anything on the path) answering 304 Not Modified to a host
// that has no cached manifest is a failed poll, recorded as such, and the
// loop polls on: never a crash that systemd restarts into the same crash.
func TestNotModifiedWithoutCacheIsAFailedPoll(t *testing.T) {
	h := newHost(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("ETag", `"forged"`)
		w.WriteHeader(http.StatusNotModified)
	}))
	t.Cleanup(srv.Close)
	f, err := manifest.NewFetcher(manifest.FetcherConfig{URL: srv.URL + "/manifest.json", RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	h.source = &manifest.Source{Fetcher: f, Trust: manifest.Trust{Keys: manifest.Keyring{manifest.KeyID(pub): pub}, Threshold: 1},
		Store: &manifest.MemVersionStore{}, Now: func() time.Time { return h.now }}
	h.restart()
	stop := runLoop(t, &Loop{Agent: h.agent, Config: LoopConfig{Interval: 10 * time.Millisecond}})
	waitFor(t, "two failed polls", func() bool { return strings.Count(h.rec.String(), "poll error v0") >= 2 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if lp := h.agent.State().LastPoll; lp == nil || lp.OK || !strings.Contains(lp.Error, manifest.ErrNoCache.Error()) {
		t.Fatalf("last poll: %+v", lp)
	}
	if h.source.Current() != nil {
		t.Fatal("a manifest is in force after 304s only")
	}
}

// The manifest in force is reported with when this host first accepted its
// version: unchanged polls, failed polls and restarts keep that time (a
// replayed manifest ages), a new version resets it.
func TestManifestSinceAges(t *testing.T) {
	h := newHost(t)
	t0 := h.now
	m1 := h.manifest(nil)
	h.agent.recordPoll(manifest.PollResult{Manifest: m1, Changed: true}, nil)
	h.now = h.now.Add(48 * time.Hour)
	h.agent.recordPoll(manifest.PollResult{Manifest: m1}, nil)
	h.restart()
	h.now = h.now.Add(24 * time.Hour)
	h.agent.recordPoll(manifest.PollResult{Manifest: m1}, errors.New("mirror down"))
	if lp := h.agent.State().LastPoll; lp == nil || !lp.ManifestSince.Equal(t0) {
		t.Fatalf("after unchanged polls and a restart: %+v, want since %s", lp, t0)
	}
	want := fmt.Sprintf("manifest v1 expires %s since %s age 72h0m0s", m1.Expires.UTC().Format(time.RFC3339), t0.Format(time.RFC3339))
	if !strings.Contains(h.rec.String(), want) {
		t.Fatalf("recorder: %s\nwant %s", h.rec.String(), want)
	}
	m2 := h.manifest(nil)
	m2.Version = 2
	h.agent.recordPoll(manifest.PollResult{Manifest: m2, Changed: true}, nil)
	if lp := h.agent.State().LastPoll; !lp.ManifestSince.Equal(h.now) {
		t.Fatalf("a new version: since %s, want %s", lp.ManifestSince, h.now)
	}
}

// Culprit names the replaced patch only for its own code (its module, an
// address in its text, "[last unloaded: ...]"): a report in a function it
// replaced, which runs unpatched since, is judged against the live patch
// that dropped it.
func TestCulpritReplacedPatchOnlyByItsCode(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p1, p2 := &state.PatchRecord{Name: "klp_a", Level: 1}, &state.PatchRecord{Name: "klp_b", Level: 2}
	a := &Agent{live: []span{
		{from: t0, patch: p1, suspect: health.Suspect{Name: "klp_a", Functions: []health.Function{{Object: "vmlinux", Name: "foo"}},
			Text: []health.Range{{Start: 0xffffffffc0a00000, End: 0xffffffffc0a01000}}}},
		{from: t0.Add(time.Hour), patch: p2, suspect: health.Suspect{Name: "klp_b", Functions: []health.Function{{Object: "vmlinux", Name: "bar"}}}},
	}}
	at := t0.Add(2 * time.Hour)
	for _, tc := range []struct {
		name string
		ev   health.Event
		want string
	}{
		{"raw RIP in the replaced patch's text", health.Event{RIP: health.Frame{Addr: 0xffffffffc0a00010}}, "klp_a"},
		{"a frame in the replaced patch's module", health.Event{RIP: health.Frame{Func: "foo_fixed", Module: "klp_a"}}, "klp_a"},
		{"last unloaded", health.Event{RIP: health.Frame{Addr: 0xffffffffc0b00010}, LastUnloaded: "klp_a"}, "klp_a"},
		{"a function the replaced patch replaced", health.Event{RIP: health.Frame{Func: "foo"}}, "klp_b"},
		{"the live patch's function", health.Event{RIP: health.Frame{Func: "bar"}}, "klp_b"},
		{"nothing of either", health.Event{RIP: health.Frame{Func: "baz"}}, "klp_b"},
	} {
		if p, s := a.Culprit(tc.ev, at); p == nil || p.Name != tc.want || s.Name != tc.want {
			t.Errorf("%s: culprit %v (%s), want %s", tc.name, p, s.Name, tc.want)
		}
	}
	if p, _ := a.Culprit(health.Event{RIP: health.Frame{Addr: 0xffffffffc0a00010}}, t0.Add(time.Minute)); p != p1 {
		t.Errorf("before the replacement: culprit %v, want level 1", p)
	}
}

// stallLevel2 serves level 2's RPM from a server that sends its first
// bytes and then stalls until the client goes away, and points h's level 2
// at it. hit is signalled when the download has started, aborted when the
// client gave it up.
func stallLevel2(t *testing.T, h *host) (hit, aborted chan struct{}) {
	t.Helper()
	hit, aborted = make(chan struct{}, 8), make(chan struct{}, 8)
	p2 := h.patches[2]
	stall := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The RPM's own size: a larger Content-Length fails the download
		// at once (ErrTooLarge) instead of stalling it.
		w.Header().Set("Content-Length", fmt.Sprint(p2.Size))
		w.Write([]byte("\xed\xab\xee\xdb"))
		w.(http.Flusher).Flush()
		hit <- struct{}{}
		<-r.Context().Done() // the client went away
		aborted <- struct{}{}
	}))
	t.Cleanup(stall.Close)
	p2.URL = stall.URL + "/" + p2.URL
	h.patches[2] = p2
	return hit, aborted
}
