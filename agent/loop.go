package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/manifest"
)

// Notifier is what the loop tells its service manager (agent/daemon
// implements it for systemd).
type Notifier interface {
	Ready() error
	Status(string) error
}

type nopNotifier struct{}

func (nopNotifier) Ready() error        { return nil }
func (nopNotifier) Status(string) error { return nil }

// LoopConfig is how the loop paces itself and judges; a reload replaces it.
type LoopConfig struct {
	Interval time.Duration // between polls, before jitter
	Jitter   float64
	// Recheck is the longest the loop sleeps while a patch soaks: the soak
	// ends at a wall-clock time, and a clock step moves that. 0 = 1 min.
	// Between soaks and polls nothing wakes it but events.
	Recheck time.Duration
	Policy  health.Policy // the zero Policy is health.DefaultPolicy
	// NetconsoleActs lets a netconsole report that names this host's
	// kernel release roll back on its own (one naming none never does); by
	// default it is recorded and counted, and corroborates what the
	// host's own kernel log and kdump say (UDP can be forged).
	NetconsoleActs bool
	// RevocationsInterval paces the revocation channel's polls, with
	// Jitter (0: off, as without Deps.Revocations).
	RevocationsInterval time.Duration
}

// Loop drives an Agent: poll with jitter, apply, end soaks, judge health
// events, take operator requests, until its context ends. Network work (a
// poll, an RPM download) runs beside the loop, so a health event is judged
// the moment it comes; one that asks for a rollback drops that work and
// never waits on it (see dropJob).
type Loop struct {
	Agent  *Agent
	Config LoopConfig
	Notify Notifier // nil: none
	// Changed is called after anything an exporter shows may have changed
	// (metrics textfile).
	Changed func()
	// Events delivers health events; each is judged against the patch that
	// was live when it happened.
	Events    <-chan health.Event
	Rand      *rand.Rand
	Heartbeat *Heartbeat // marked busy while a step runs (systemd watchdog)

	reload   chan reloadReq
	controls chan controlCall
}

// controlCall is a request handed to the running loop; the loop never
// waits on reply (it has room for the one answer).
type controlCall struct {
	req   ControlRequest
	reply chan ControlResult
}

// reloadReq hands a new configuration to the running loop.
type reloadReq struct {
	cfg      LoopConfig
	settings *Settings
	done     chan error
}

// job is I/O running beside the loop: a poll or an RPM download, the
// only two kinds. Both only read from a source and write files of their
// own (the manifest cache, the persisted root, a verified RPM copy); the
// agent's state and the kernel are touched only by what a job returns,
// which the loop runs. That is what lets the loop drop a job without
// waiting for it. Installing and enabling (rpm -U, the module load, the
// livepatch transition) are never a job: they run in the loop, which
// waits for them, because a kernel left half-way is worse than a late
// rollback; they are bounded by their own timeouts (the rpm command's
// context, klp's transition and unload timeouts).
type job struct {
	what   string
	cancel context.CancelFunc
	done   chan func() // the loop runs what the job returns
	// dropped is the job's ending when the loop drops it: what a
	// cancelled job would have done, without waiting for it to say so.
	dropped func()
	start   time.Time
}

// running is the loop's own state; only its goroutine touches it.
type running struct {
	l      *Loop
	a      *Agent
	cfg    LoopConfig
	notify Notifier
	rnd    *rand.Rand
	judge  *health.Judge
	job    *job
	// stray is a dropped job that has not ended yet: what it returns is
	// discarded, and no new job starts until it ends (a source stuck in
	// a syscall would stick the next one too, and two polls of one
	// source must not overlap: each moves the root and the version floor).
	stray   *job
	poll    *time.Timer
	pollDue bool     // a poll is owed as soon as no job runs
	rev     revState // the revocation channel: its own timer and job
	// `klp-agent poll` requests: waiting for a poll to start, waiting
	// for the one started for them, and answered once the loop is idle.
	pollWaiting, pollRunning, pollAnswer []controlCall
}

// Reload hands the running loop a new configuration and new agent
// settings (nil: keep them); it waits until the loop took them. Work in
// flight under the old settings is cancelled and the next poll comes at
// once.
func (l *Loop) Reload(ctx context.Context, cfg LoopConfig, s *Settings) error {
	r := reloadReq{cfg: cfg, settings: s, done: make(chan error, 1)}
	select {
	case l.reloadCh() <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *Loop) reloadCh() chan reloadReq {
	if l.reload == nil {
		l.reload = make(chan reloadReq)
	}
	return l.reload
}

// Ask hands the running loop an operator's request and returns its
// verdict: a host control and a rollback at once (a rollback cancels the
// network work in flight, as a health rollback does), a poll once the poll
// started for it and what that started are done. A reload is not the
// loop's (the daemon supervises it). An error is no verdict: ctx ended
// first, and the request may or may not have been taken.
func (l *Loop) Ask(ctx context.Context, req ControlRequest) (ControlResult, error) {
	c := controlCall{req: req, reply: make(chan ControlResult, 1)}
	select {
	case l.controlCh() <- c:
	case <-ctx.Done():
		return ControlResult{}, ctx.Err()
	}
	select {
	case res := <-c.reply:
		return res, nil
	case <-ctx.Done():
		return ControlResult{}, ctx.Err()
	}
}

func (l *Loop) controlCh() chan controlCall {
	if l.controls == nil {
		l.controls = make(chan controlCall)
	}
	return l.controls
}

// Init prepares Reload and Ask before Run starts (Run calls it too).
func (l *Loop) Init() { l.reloadCh(); l.controlCh() }

func policyOf(c LoopConfig) health.Policy {
	if c.Policy.Attributed == nil && c.Policy.SoakUnattributed == nil && c.Policy.Thresholds == nil {
		return health.DefaultPolicy()
	}
	return c.Policy
}

// Run loops until ctx ends. Work in flight when ctx ends finishes first if
// it touches the kernel (the kernel is never left half-way); network work
// is cancelled.
func (l *Loop) Run(ctx context.Context) error {
	l.Init()
	r := &running{l: l, a: l.Agent, cfg: l.Config, notify: l.Notify, rnd: l.Rand}
	if r.notify == nil {
		r.notify = nopNotifier{}
	}
	if r.rnd == nil {
		r.rnd = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	r.judge = &health.Judge{Policy: policyOf(r.cfg)}
	recheck := func() time.Duration {
		if r.cfg.Recheck > 0 {
			return r.cfg.Recheck
		}
		return time.Minute
	}
	work := context.WithoutCancel(ctx)
	r.notify.Ready()
	r.changed()
	r.poll = time.NewTimer(0) // first poll right away: a booted host wants its patch
	defer r.poll.Stop()
	soak := time.NewTimer(time.Hour)
	defer soak.Stop()
	r.revArm()
	defer func() {
		if r.rev.timer != nil {
			r.rev.timer.Stop()
		}
	}()
	for {
		l.Heartbeat.End()
		// Wake for the end of a soak, if one runs; otherwise sleep.
		if k := r.a.kernel(); k.Phase == state.PhaseSoaking && k.Current != nil {
			soak.Reset(min(max(k.SoakUntil.Sub(r.a.now()), 0), recheck()))
		} else {
			soak.Stop()
		}
		r.startPoll(ctx) // one owed while a job ran, or after a rollback
		r.answerPolls()  // once their poll and what it started are done
		var jobDone, strayDone chan func()
		if r.job != nil {
			jobDone = r.job.done
		}
		if r.stray != nil {
			strayDone = r.stray.done
		}
		select {
		case <-ctx.Done():
			l.Heartbeat.Begin()
			r.dropJob()
			r.revCancel()
			// No STOPPING=1 here: the caller that owns the process says it.
			return r.a.Stop()
		case <-r.poll.C:
			l.Heartbeat.Begin()
			r.pollDue = true
			r.startPoll(ctx)
		case finish := <-jobDone:
			l.Heartbeat.Begin()
			r.job = nil
			finish()
		case <-strayDone:
			// Its ending was run when it was dropped; what it returns now
			// (an apply, a converge) is stale and must not run.
			l.Heartbeat.Begin()
			r.a.log().Info(fmt.Sprintf("dropped %s ended after %s", r.stray.what, time.Since(r.stray.start).Round(time.Millisecond)))
			r.stray = nil
		case <-r.revTimerC():
			l.Heartbeat.Begin()
			r.revStart(ctx)
		case finish := <-r.revJobDone():
			l.Heartbeat.Begin()
			r.rev.job = nil
			finish()
		case ev := <-l.Events:
			l.Heartbeat.Begin()
			r.event(work, ev)
		case <-soak.C:
			l.Heartbeat.Begin()
			before := r.a.kernel().Phase
			if err := r.a.Tick(); err != nil {
				r.a.log().Error("soak end: " + err.Error())
			}
			if r.a.kernel().Phase != before {
				r.changed()
			}
		case c := <-l.controls:
			l.Heartbeat.Begin()
			r.control(work, c)
		case req := <-l.reload:
			l.Heartbeat.Begin()
			req.done <- r.reconfigure(req)
		}
	}
}

func (r *running) status() string {
	k := r.a.kernel()
	s := string(k.Phase)
	if k.Current != nil {
		s += " " + k.Current.ID()
	}
	if k.Phase == state.PhaseSoaking {
		s += fmt.Sprintf(" (soak ends in %s)", k.SoakUntil.Sub(r.a.now()).Round(time.Second))
	}
	return s
}

func (r *running) changed() {
	r.notify.Status(r.status())
	if r.l.Changed != nil {
		r.l.Changed()
	}
}

// spawn runs fn beside the loop; what fn returns runs in the loop, and
// dropped runs instead if the loop drops the job. fn must not touch the
// agent's state: it may still run after the loop went on.
func (r *running) spawn(ctx context.Context, what string, fn func(ctx context.Context) func(), dropped func()) {
	jctx, cancel := context.WithCancel(ctx)
	j := &job{what: what, cancel: cancel, done: make(chan func(), 1), dropped: dropped, start: time.Now()}
	r.job = j
	go func() { j.done <- fn(jctx) }()
}

// busy reports whether a job, or a dropped one, still runs.
func (r *running) busy() bool { return r.job != nil || r.stray != nil }

// dropJob stops waiting on the work in flight, so the caller (a rollback,
// a reload, the stop) acts at once on a settled state: the job is
// cancelled, its dropped ending runs now (a download gives its phase
// back, a poll is owed again), and what it returns when it does end is
// discarded. The old code waited for the job to return after cancelling
// it, and a source stuck in a syscall that ignores cancellation (open(2)
// of a FIFO, a hard NFS mount) held every rollback behind it for ever.
// Even a job that finished just before is dropped: its ending would
// apply a download or converge on a poll ahead of the rollback.
func (r *running) dropJob() {
	j := r.job
	if j == nil {
		return
	}
	r.job = nil
	j.cancel()
	select {
	case <-j.done: // it already ended: nothing left running
	default:
		r.stray = j
		r.a.log().Info(fmt.Sprintf("dropped the %s in flight (running for %s); no poll or download starts until it ends",
			j.what, time.Since(j.start).Round(time.Millisecond)))
	}
	j.dropped()
}

// startPoll polls if one is owed and nothing else runs.
func (r *running) startPoll(ctx context.Context) {
	if !r.pollDue || r.busy() {
		return
	}
	r.pollDue = false
	r.pollRunning = append(r.pollRunning, r.pollWaiting...)
	r.pollWaiting = nil
	src := r.a.d.Source
	if src == nil {
		r.pollAnswer = append(r.pollAnswer, r.pollRunning...)
		r.pollRunning = nil
		r.schedulePoll()
		r.changed()
		return
	}
	r.spawn(ctx, "poll", func(jctx context.Context) func() {
		res, err := src.Poll(jctx)
		return func() { r.polled(ctx, res, err) }
	}, func() { r.polled(ctx, manifest.PollResult{}, context.Canceled) })
}

func (r *running) schedulePoll() {
	next := manifest.NextInterval(r.cfg.Interval, r.cfg.Jitter, r.rnd)
	if lp := r.a.st.LastPoll; lp != nil {
		lp.Next = r.a.now().Add(next)
		r.a.save()
	}
	r.poll.Reset(next)
}

// rejected reports whether err is the manifest failing its trust checks,
// as opposed to the server being unreachable.
func rejected(err error) bool {
	for _, e := range []error{manifest.ErrBadSignature, manifest.ErrNoSignature, manifest.ErrUnknownKey, manifest.ErrThreshold,
		manifest.ErrPayloadType, manifest.ErrExpired, manifest.ErrExpiryTooFar, manifest.ErrRollback, manifest.ErrVersionConflict, manifest.ErrInvalid,
		manifest.ErrInvalidName, manifest.ErrDuplicate, manifest.ErrSchema, manifest.ErrTooLarge, manifest.ErrRoot} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// polled records a poll's outcome and goes on with what the manifest in
// force asks (the cached one when the server is unreachable, so a rollout
// that ramps with time still advances; an expired one applies nothing).
func (r *running) polled(ctx context.Context, res manifest.PollResult, err error) {
	defer r.changed()
	a := r.a
	log := a.log()
	if errors.Is(err, context.Canceled) {
		// Cancelled for a rollback or a reload (poll again once the loop
		// is free), or because the agent stops.
		if ctx.Err() == nil {
			log.Info("manifest poll cancelled; polling again")
			r.pollDue = true
		}
		r.pollWaiting = append(r.pollRunning, r.pollWaiting...)
		r.pollRunning = nil
		return
	}
	r.pollAnswer = append(r.pollAnswer, r.pollRunning...)
	r.pollRunning = nil
	a.recordPoll(res, err)
	r.schedulePoll()
	if m := res.Manifest; m != nil && !m.Expired(a.now()) {
		r.converge(ctx, m)
	}
}

// recordPoll logs a poll's outcome and keeps it for status and metrics.
func (a *Agent) recordPoll(res manifest.PollResult, err error) {
	log := a.log()
	p := &state.Poll{At: a.now(), OK: err == nil}
	if p.OK {
		p.LastOK = p.At
	} else {
		p.LastOK = a.st.LastPoll.LastGood()
	}
	if res.Manifest != nil {
		p.ManifestVersion = res.Manifest.Version
		p.ManifestSince = p.At
		if prev := a.st.LastPoll; !res.Changed && prev != nil && prev.ManifestVersion == p.ManifestVersion && !prev.ManifestSince.IsZero() {
			p.ManifestSince = prev.ManifestSince
		}
	}
	result := "not-modified"
	switch {
	case err != nil:
		p.Error, result = err.Error(), "error"
		if rejected(err) {
			log.Error("manifest rejected: "+err.Error(), logging.MessageID(MsgManifestRejected), zap.Uint64("MANIFEST_VERSION", p.ManifestVersion))
		} else {
			log.Warn("manifest poll failed: "+err.Error(), zap.Uint64("MANIFEST_VERSION", p.ManifestVersion))
		}
	case res.Changed:
		result = "ok"
		log.Info(fmt.Sprintf("manifest version %d accepted", res.Manifest.Version), zap.Uint64("MANIFEST_VERSION", res.Manifest.Version))
	}
	a.st.LastPoll = p
	a.d.Recorder.Polled(result, p.At, p.ManifestVersion)
	if res.Manifest != nil {
		a.d.Recorder.ManifestInForce(p.ManifestVersion, res.Manifest.Expires, p.ManifestSince, p.At)
	}
	if r := res.TrustedRoot; r != nil {
		a.d.Recorder.TrustedRoot(r.Version, r.Expires)
	}
	if err := a.save(); err != nil {
		log.Error(err.Error())
	}
}

// converge acts on the manifest in force: a revocation at once, an apply
// with its download beside the loop.
func (r *running) converge(ctx context.Context, v *manifest.Verified) {
	a := r.a
	log := a.log()
	plan, err := a.Plan(v)
	switch {
	case err != nil:
		log.Error("converge: "+err.Error(), patchFields(a.kernel().Current)...)
		return
	case plan.Revoked != nil:
		if err := a.rollback(context.WithoutCancel(ctx), *plan.Revoked, state.CauseRevoked, plan.Reason, nil, true); err != nil {
			log.Error("revocation rollback failed: " + err.Error())
		}
		return
	case plan.Waits != "":
		log.Info(plan.Waits)
		if !plan.Until.IsZero() {
			// Look again when the hold ends or the window opens.
			r.poll.Reset(min(max(plan.Until.Sub(a.now()), 0)+time.Second, manifest.NextInterval(r.cfg.Interval, r.cfg.Jitter, r.rnd)))
		}
		return
	case plan.Apply == nil:
		return
	}
	p := *plan.Apply
	rpm, cached, err := a.BeginApply(p)
	if err != nil {
		log.Error("apply: "+err.Error(), patchFields(&p)...)
		return
	}
	finish := func(rpm string) {
		if err := a.FinishApply(context.WithoutCancel(ctx), p, rpm); err != nil {
			log.Error("converge: "+err.Error(), patchFields(&p)...)
		}
	}
	if cached {
		finish(rpm)
		return
	}
	abandoned := func(err error) {
		a.AbandonApply(fmt.Errorf("download %s: %w", p.ID(), err))
		log.Warn("download of "+p.ID()+" abandoned: "+err.Error(), patchFields(&p)...)
	}
	download := a.d.download // bound now: a reload may change a.d while a dropped download still runs
	r.spawn(ctx, "download", func(jctx context.Context) func() {
		rpm, err := download(jctx, p)
		return func() {
			switch {
			case err == nil:
				finish(rpm)
			case errors.Is(err, context.Canceled):
				abandoned(err)
			default:
				a.d.Recorder.Applied(false, 0)
				log.Error("converge: "+a.AbandonApply(fmt.Errorf("download %s: %w", p.ID(), err)).Error(), patchFields(&p)...)
			}
		}
	}, func() { abandoned(context.Canceled) })
}

// event judges a health event against the patch that was live when it
// happened, records it, and acts on the verdict: the live patch is rolled
// back (work in flight cancelled first), a patch replaced meanwhile is
// only blocked.
func (r *running) event(ctx context.Context, ev health.Event) {
	a := r.a
	log := a.log()
	at := ev.At
	if at.IsZero() {
		at = a.now()
	}
	patch, suspect := a.Culprit(ev, at)
	k := a.kernel()
	isCurrent := patch != nil && k.Current != nil && patch.Same(k.Current)
	v := r.judge.Judge(ev, suspect, isCurrent && k.Phase == state.PhaseSoaking, a.now())
	switch {
	case v.Rollback && ev.Source == health.SourceNetconsole && ev.Release == "":
		// A kernel before 6.6 cannot name its release; nothing ties the
		// datagram to this host's kernel, whatever acts says.
		v.Rollback = false
		log.Info("a netconsole report that names no kernel release never rolls back on its own: " + v.Reason)
	case v.Rollback && ev.Source == health.SourceNetconsole && !r.cfg.NetconsoleActs:
		v.Rollback = false
		log.Info("a netconsole report does not roll back on its own (health.netconsole.acts): " + v.Reason)
	}
	from, sender := string(ev.Source), zap.Skip()
	if ev.Sender != "" {
		from, sender = string(ev.Source)+" ("+ev.Sender+")", zap.String("KLP_EVENT_SENDER", ev.Sender)
	}
	log.Warn(fmt.Sprintf("%s %s report: %s", from, ev.Kind, ev.Header), zap.String("KLP_EVENT_KIND", string(ev.Kind)),
		zap.String("KLP_EVENT_SOURCE", string(ev.Source)), sender, zap.Bool("KLP_ATTRIBUTED", v.Attributed),
		zap.String("KLP_RIP", strings.TrimSpace(ev.RIP.Func+" "+ev.RIP.Module)), zap.String("KLP_PATCH", suspect.Name),
		zap.Bool("KLP_ROLLBACK", v.Rollback), zap.Int64("KLP_DETECT_US", ev.Detect.Microseconds()), logging.MessageID(MsgHealthEvent))
	a.d.Recorder.HealthEvent(string(ev.Kind), ev.Source, v.Attributed, suspect.Name)
	a.st.AddEvent(state.Event{At: a.now(), Kind: string(ev.Kind), Source: string(ev.Source), Header: ev.Header,
		Patch: suspect.Name, Attributed: v.Attributed, RolledBack: v.Rollback && isCurrent})
	if err := a.save(); err != nil {
		log.Error("record health event: " + err.Error())
	}
	if !v.Rollback || patch == nil {
		return
	}
	evidence := ev.Lines[:min(len(ev.Lines), 40)]
	if !isCurrent {
		// Replaced by an apply since: keep it from coming back.
		if err := a.Block(*patch, state.CauseHealth, v.Reason, evidence); err != nil {
			log.Error("block " + patch.ID() + ": " + err.Error())
		}
		r.changed()
		return
	}
	r.dropJob()
	if err := a.Rollback(ctx, state.CauseHealth, v.Reason, evidence, true); err != nil {
		log.Error("health rollback failed: " + err.Error())
	}
	r.pollDue = true // the manifest may offer what is good now
	r.changed()
}

// reconfigure takes a reload between steps.
func (r *running) reconfigure(req reloadReq) error {
	r.dropJob()
	r.revCancel()
	if req.settings != nil {
		if err := r.a.Reconfigure(*req.settings); err != nil {
			return err
		}
	}
	if !samePolicy(r.cfg, req.cfg) {
		r.judge = &health.Judge{Policy: policyOf(req.cfg)}
	}
	r.cfg = req.cfg
	r.pollDue = true
	r.poll.Reset(0)
	r.revArm()
	return nil
}

func samePolicy(a, b LoopConfig) bool {
	return fmt.Sprint(policyOf(a)) == fmt.Sprint(policyOf(b))
}

// control takes an operator's request: a poll waits for its poll, the
// others are answered at once.
func (r *running) control(ctx context.Context, c controlCall) {
	a := r.a
	switch c.req.Op {
	case OpPoll:
		a.log().Info("poll requested by " + c.req.By)
		r.pollWaiting = append(r.pollWaiting, c)
		r.pollDue = true
		return
	case OpRollback:
		if a.kernel().Current != nil {
			r.dropJob() // not for one refused: nothing applied
		}
		msg, err := a.OperatorRollback(ctx, c.req)
		if err != nil {
			a.log().Error("operator rollback failed: " + err.Error())
		}
		r.answer(c, Verdict(msg, err))
	case OpReload:
		r.answer(c, ControlResult{Message: "reload is not the loop's to take"})
		return
	default:
		r.answer(c, Verdict(a.Control(c.req)))
		// What is wanted may have changed: look again now.
		r.pollDue = true
	}
	r.changed()
}

// answer gives c its verdict, signed with the daemon's pid.
func (r *running) answer(c controlCall, res ControlResult) {
	res.PID = os.Getpid()
	c.reply <- res
}

// answerPolls answers poll requests once their poll and what it started
// (a download, an apply) are done.
func (r *running) answerPolls() {
	if len(r.pollAnswer) == 0 || r.job != nil {
		return
	}
	a := r.a
	res := ControlResult{OK: a.st.LastPoll != nil && a.st.LastPoll.OK, Message: a.Outcome()}
	if a.d.Source == nil {
		res = ControlResult{Message: "manifest.url is not set: nothing to poll"}
	}
	for _, c := range r.pollAnswer {
		r.answer(c, res)
	}
	r.pollAnswer = nil
}
