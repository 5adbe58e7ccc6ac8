package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/manifest"
)

// The fast revocation channel on the host: revocations.json is polled by
// its own job beside the loop's (a manifest poll or a download never
// delays it, and it never delays a health event), and what it revokes or
// pauses adds to what the manifest in force says.

// channelInForce is the channel's document in force, or nil.
func (a *Agent) channelInForce() *manifest.Revocations {
	if a.d.Revocations == nil {
		return nil
	}
	r, err := a.d.Revocations.InForce()
	if err != nil {
		a.log().Error("revocations.json record: " + err.Error())
		return nil
	}
	return r
}

// channelRevokes is the rollback of c that the channel asks, if it does.
func (a *Agent) channelRevokes(c *state.PatchRecord) (Plan, bool) {
	rev := a.channelInForce()
	e := rev.Revokes(&manifest.Patch{Name: c.Name, Level: c.Level, Kernel: a.d.Host.Kernel, SHA256: c.SHA256})
	if e == nil {
		return Plan{}, false
	}
	reason := fmt.Sprintf("revoked by revocations.json version %d", rev.Version)
	if e.Reason != "" {
		reason += ": " + e.Reason
	}
	cur := *c
	return Plan{Revoked: &cur, Reason: reason}, true
}

// wantedNow is the selection under m and the channel in force.
func (a *Agent) wantedNow(m *manifest.Manifest) manifest.Decision {
	return WantedWith(a.kernel(), m, a.channelInForce(), a.d.Host, a.now())
}

// WantedWith is Wanted with the revocation channel's document in force
// (nil: none): its revocations add to the manifest's, and its paused
// levels are not eligible (a host already on one keeps it: a lower wanted
// level is no change).
func WantedWith(k *state.Kernel, m *manifest.Manifest, rev *manifest.Revocations, host manifest.Host, now time.Time) manifest.Decision {
	if rev != nil && len(rev.Revoked) > 0 {
		c := *m
		c.Revoked = append(slices.Clone(m.Revoked), rev.Revoked...)
		m = &c
	}
	d := Wanted(k, m, host, now)
	if rev != nil && len(rev.Paused) > 0 {
		paused(&d, rev)
	}
	return d
}

// paused re-chooses with rev's paused levels not eligible.
func paused(d *manifest.Decision, rev *manifest.Revocations) {
	changed := false
	for i := range d.Entries {
		e := &d.Entries[i]
		if x := rev.Pauses(e.Patch); x != nil && e.Eligible {
			e.Eligible, e.Chosen = false, false
			e.Reason = fmt.Sprintf("ramp paused by revocations.json version %d", rev.Version)
			if x.Reason != "" {
				e.Reason += ": " + x.Reason
			}
			changed = true
		}
	}
	if !changed {
		return
	}
	d.Wanted = nil
	for i := range d.Entries {
		e := &d.Entries[i]
		switch {
		case !e.Eligible:
		case d.Wanted == nil:
			if !e.Chosen {
				e.Chosen, e.Reason = true, "chosen: highest eligible level not paused"
			}
			d.Wanted = e.Patch
		default:
			e.Chosen, e.Reason = false, fmt.Sprintf("superseded by level %d", d.Wanted.Level)
		}
	}
}

// revocationsRecorder is a Recorder that also shows the channel's
// document in force (agent/metrics; optional, so other Recorders need not).
type revocationsRecorder interface {
	RevocationsInForce(version uint64)
}

// revState is the loop's revocation-channel state; only its goroutine
// touches it.
type revState struct {
	timer *time.Timer
	job   *job
	stray *job // dropped by revCancel, maybe still running
	// What was last journaled, so a steady 404 or failure is said once.
	notPublished bool
	lastErr      string
	// The version in force last shown to the Recorder (0: none).
	version uint64
	shown   bool
}

// revInterval is the channel's next wait, with the poll jitter.
func (r *running) revInterval() time.Duration {
	return manifest.NextInterval(r.cfg.RevocationsInterval, r.cfg.Jitter, r.rnd)
}

// revTimerC is the channel's timer, or nil (never fires) when it is off.
func (r *running) revTimerC() <-chan time.Time {
	if r.rev.timer == nil {
		return nil
	}
	return r.rev.timer.C
}

// revJobDone is the channel job's ending, or nil when none runs.
func (r *running) revJobDone() chan func() {
	if r.rev.job == nil {
		return nil
	}
	return r.rev.job.done
}

// revArm (re)starts the channel's timer: at once (start, reload), if the
// channel is on.
func (r *running) revArm() {
	if r.a.d.Revocations == nil || r.cfg.RevocationsInterval <= 0 {
		if r.rev.timer != nil {
			r.rev.timer.Stop()
		}
		return
	}
	if r.rev.timer == nil {
		r.rev.timer = time.NewTimer(0)
		return
	}
	r.rev.timer.Reset(0)
}

// revStart polls revocations.json beside the loop and any other job.
func (r *running) revStart(ctx context.Context) {
	ch := r.a.d.Revocations
	if r.rev.job != nil || ch == nil {
		return
	}
	if j := r.rev.stray; j != nil {
		select {
		case <-j.done: // the dropped poll ended; its result is stale
			r.rev.stray = nil
		default:
			// Two polls of the channel must not overlap (each moves its
			// version floor): try again at the next interval.
			if r.rev.timer != nil {
				r.rev.timer.Reset(r.revInterval())
			}
			return
		}
	}
	jctx, cancel := context.WithCancel(ctx)
	j := &job{what: "revocations", cancel: cancel, done: make(chan func(), 1)}
	r.rev.job = j
	go func() {
		res, err := ch.Poll(jctx)
		j.done <- func() { r.revPolled(ctx, ch, res, err) }
	}()
}

// revCancel drops a channel poll in flight without waiting for it: a
// poll stuck where its context cannot reach (a FIFO, a hung NFS mount)
// must not hold a stop, a reload or a rollback. Its result is thrown
// away; the next poll asks again once it has ended.
func (r *running) revCancel() {
	if j := r.rev.job; j != nil {
		r.rev.job = nil
		j.cancel()
		r.rev.stray = j
	}
}

// revPolled journals a channel poll (a steady 404 or failure once) and
// acts on the document in force: a revoked current patch is rolled back
// at once, a download of a revoked or paused level is abandoned.
func (r *running) revPolled(ctx context.Context, ch *manifest.RevocationChannel, res manifest.RevocationsPoll, err error) {
	a := r.a
	log := a.log()
	if r.rev.timer != nil && ctx.Err() == nil {
		r.rev.timer.Reset(r.revInterval())
	}
	if errors.Is(err, context.Canceled) {
		return
	}
	switch {
	case err != nil:
		if msg := err.Error(); msg != r.rev.lastErr {
			r.rev.lastErr = msg
			if errors.Is(err, manifest.ErrRevocations) || rejected(err) {
				log.Error("revocations.json refused: " + msg)
			} else {
				log.Warn("revocations.json poll failed: " + msg)
			}
		}
	case res.NotPublished:
		r.rev.lastErr = ""
		if !r.rev.notPublished {
			log.Info("no revocations.json at " + ch.String() + " (not published); the manifest's revocations still count")
		}
	default:
		r.rev.lastErr = ""
		if res.Changed && res.InForce != nil {
			log.Info(fmt.Sprintf("revocations.json version %d accepted: %d revoked, %d paused", res.InForce.Version,
				len(res.InForce.Revoked), len(res.InForce.Paused)))
		}
	}
	r.rev.notPublished = err == nil && res.NotPublished
	var v uint64
	if res.InForce != nil {
		v = res.InForce.Version
	}
	if v != r.rev.version || !r.rev.shown {
		r.rev.version, r.rev.shown = v, true
		if rec, ok := a.d.Recorder.(revocationsRecorder); ok {
			rec.RevocationsInForce(v)
		}
		if r.l.Changed != nil {
			r.l.Changed()
		}
	}
	if ch != a.d.Revocations {
		return // a reload replaced the channel meanwhile
	}
	r.revAct(ctx)
}

// revAct carries out what the channel in force asks now.
func (r *running) revAct(ctx context.Context) {
	a := r.a
	rev := a.channelInForce()
	if rev == nil {
		return
	}
	k := a.kernel()
	if t := k.Target; k.Phase == state.PhaseDownloading && t != nil {
		p := &manifest.Patch{Name: t.Name, Level: t.Level, Kernel: a.d.Host.Kernel, SHA256: t.SHA256}
		if rev.Revokes(p) != nil || rev.Pauses(p) != nil {
			r.dropJob() // gives the phase back; the next poll plans again
			r.pollDue = true
			r.changed()
		}
	}
	c := k.Current
	if c == nil {
		return
	}
	plan, ok := a.channelRevokes(c)
	if !ok {
		return
	}
	r.dropJob() // a poll or a download of another level: dropped, never waited on
	if k = a.kernel(); k.Current == nil || !k.Current.Same(plan.Revoked) || (k.Phase != state.PhaseSoaking && k.Phase != state.PhaseGood) {
		return
	}
	if err := a.rollback(context.WithoutCancel(ctx), *plan.Revoked, state.CauseRevoked, plan.Reason, nil, true); err != nil {
		a.log().Error("revocation rollback failed: " + err.Error())
	}
	r.pollDue = true
	r.changed()
}
