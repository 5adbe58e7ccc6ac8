package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/manifest"
)

// Notifier is what the daemon tells its service manager (agent/notify
// implements it for systemd).
type Notifier interface {
	Ready() error
	Status(string) error
}

type nopNotifier struct{}

func (nopNotifier) Ready() error        { return nil }
func (nopNotifier) Status(string) error { return nil }

// Daemon runs the agent: poll with jitter, converge, end soaks, take
// operator requests, until its context ends.
type Daemon struct {
	Agent       *Agent
	Source      *manifest.Source
	ManifestURL string
	Interval    time.Duration
	Jitter      float64
	// Recheck is the longest the daemon sleeps while a patch soaks: the
	// soak ends at a wall-clock time, and a clock step moves that. 0 =
	// 1 min. Between soaks and polls nothing wakes it but events.
	Recheck time.Duration
	Notify  Notifier
	// Changed is called after anything an exporter shows may have changed
	// (metrics textfile).
	Changed func()
	// Verdicts delivers health verdicts; a verdict asking for a rollback
	// rolls the current patch back and blocks it.
	Verdicts <-chan Verdict
	// Events delivers kernel reports (from the kmsg monitor); the daemon
	// judges each against the current patch.
	Events <-chan health.Event
	// Judge applies the health policy to Events (nil: the default policy).
	Judge *health.Judge
	Rand  *rand.Rand
	// Heartbeat is marked busy while the loop works on a step, so the
	// systemd watchdog can tell a stuck step from a quiet daemon.
	Heartbeat *Heartbeat
}

// judge turns a health event into a verdict about the current patch, under
// the daemon's policy (health.DefaultPolicy when none is set).
func (d *Daemon) judge(ev health.Event) Verdict {
	a := d.Agent
	k := a.kernel()
	log := a.log()
	var p health.Suspect
	if c := k.Current; c != nil {
		p.Name = c.Name
		if lp, err := a.d.Installer.Controller.Sysfs.Get(c.Name); err == nil {
			for _, o := range lp.Objects {
				p.Functions = append(p.Functions, o.Functions...)
			}
		}
	}
	if d.Judge == nil {
		d.Judge = &health.Judge{Policy: health.DefaultPolicy()}
	}
	v := d.Judge.Judge(ev, p, k.Phase == state.PhaseSoaking, a.d.Now())
	from, sender := ev.Source, zap.Skip()
	if ev.Sender != "" {
		from, sender = ev.Source+" ("+ev.Sender+")", zap.String("KLP_EVENT_SENDER", ev.Sender)
	}
	log.Warn(fmt.Sprintf("%s %s report: %s", from, ev.Kind, ev.Header), zap.String("KLP_EVENT_KIND", string(ev.Kind)),
		zap.String("KLP_EVENT_SOURCE", ev.Source), sender, zap.Bool("KLP_ATTRIBUTED", v.Attributed),
		zap.String("KLP_RIP", strings.TrimSpace(ev.RIP.Func+" "+ev.RIP.Module)), zap.String("KLP_PATCH", p.Name),
		zap.Bool("KLP_ROLLBACK", v.Rollback), zap.Int64("KLP_DETECT_US", ev.Detect.Microseconds()), logging.MessageID(MsgHealthEvent))
	a.rec().HealthEvent(string(ev.Kind), ev.Source, v.Attributed, p.Name)
	a.st.AddEvent(state.Event{At: a.d.Now(), Kind: string(ev.Kind), Source: ev.Source, Header: ev.Header,
		Patch: p.Name, Attributed: v.Attributed, RolledBack: v.Rollback})
	if err := a.save(); err != nil {
		log.Error("record health event: " + err.Error())
	}
	if !v.Rollback {
		return Verdict{}
	}
	ev.Lines = ev.Lines[:min(len(ev.Lines), 40)]
	return Verdict{Rollback: true, Reason: v.Reason, Evidence: ev.Lines}
}

// Verdict is a health judgement about the current patch.
type Verdict struct {
	Rollback bool
	Reason   string
	Evidence []string
}

// RollbackRequest is an operator's `klp-agent rollback`, handed to a
// running daemon through the state dir.
type RollbackRequest struct {
	Reason string    `json:"reason"`
	Block  bool      `json:"block"`
	At     time.Time `json:"at"`
}

// RequestPath is where a rollback request waits for the daemon.
func RequestPath(stateDir string) string { return filepath.Join(stateDir, "rollback-request.json") }

// WriteRequest hands a rollback request to the daemon.
func WriteRequest(stateDir string, r RollbackRequest) error {
	b, _ := json.Marshal(r)
	return atomicfile.WriteFile(RequestPath(stateDir), b, 0o600)
}

// rejected reports whether err is the manifest failing its trust checks,
// as opposed to the server being unreachable.
func rejected(err error) bool {
	for _, e := range []error{manifest.ErrBadSignature, manifest.ErrNoSignature, manifest.ErrUnknownKey, manifest.ErrThreshold,
		manifest.ErrPayloadType, manifest.ErrExpired, manifest.ErrRollback, manifest.ErrVersionConflict, manifest.ErrInvalid,
		manifest.ErrInvalidName, manifest.ErrDuplicate, manifest.ErrSchema, manifest.ErrTooLarge} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (d *Daemon) status() string {
	k := d.Agent.kernel()
	s := string(k.Phase)
	if k.Current != nil {
		s += " " + k.Current.ID()
	}
	if k.Phase == state.PhaseSoaking {
		s += fmt.Sprintf(" (soak ends in %s)", k.SoakUntil.Sub(d.Agent.d.Now()).Round(time.Second))
	}
	return s
}

func (d *Daemon) changed() {
	if d.Notify != nil {
		d.Notify.Status(d.status())
	}
	if d.Changed != nil {
		d.Changed()
	}
}

// PollOnce polls, records the outcome, and converges on the manifest in
// force (the cached one when the server is unreachable, so a rollout that
// ramps with time still advances; an expired one applies nothing).
func (d *Daemon) PollOnce(ctx context.Context) error {
	a := d.Agent
	log := a.log()
	res, err := d.Source.Poll(ctx)
	p := &state.Poll{At: a.d.Now(), OK: err == nil}
	if res.Manifest != nil {
		p.ManifestVersion = res.Manifest.Version
	}
	if err != nil {
		p.Error = err.Error()
		if rejected(err) {
			log.Error("manifest rejected: "+err.Error(), logging.MessageID(MsgManifestRejected), zap.Uint64("MANIFEST_VERSION", p.ManifestVersion))
		} else {
			log.Warn("manifest poll failed: "+err.Error(), zap.Uint64("MANIFEST_VERSION", p.ManifestVersion))
		}
	} else if res.Changed {
		log.Info(fmt.Sprintf("manifest version %d accepted", res.Manifest.Version), zap.Uint64("MANIFEST_VERSION", res.Manifest.Version))
	}
	a.st.LastPoll = p
	switch {
	case err != nil:
		a.rec().Polled("error", p.At, p.ManifestVersion)
	case res.Changed:
		a.rec().Polled("ok", p.At, p.ManifestVersion)
	default:
		a.rec().Polled("not-modified", p.At, p.ManifestVersion)
	}
	if serr := a.save(); serr != nil {
		return serr
	}
	m := res.Manifest
	if m == nil || m.Expired(a.d.Now()) {
		return err
	}
	if cerr := a.Converge(context.WithoutCancel(ctx), m, d.ManifestURL); cerr != nil {
		log.Error("converge: "+cerr.Error(), patchFields(a.kernel().Current)...)
		return errors.Join(err, cerr)
	}
	return err
}

// handleRequest performs a pending operator rollback.
func (d *Daemon) handleRequest(ctx context.Context) {
	path := RequestPath(d.Agent.d.Store.Dir)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var r RollbackRequest
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err == nil {
		reason := "operator: " + r.Reason
		err = d.Agent.Rollback(ctx, reason, nil, r.Block)
	}
	if err != nil {
		d.Agent.log().Error("operator rollback failed: " + err.Error())
	}
	os.Remove(path)
	d.changed()
}

// act carries out a health verdict: a rollback that blocks the current
// patch, if one is applied.
func (d *Daemon) act(ctx context.Context, v Verdict) {
	if !v.Rollback || d.Agent.kernel().Current == nil {
		return
	}
	if err := d.Agent.Rollback(ctx, v.Reason, v.Evidence, true); err != nil {
		d.Agent.log().Error("health rollback failed: " + err.Error())
	}
	d.changed()
}

// Run loops until ctx ends. Work in flight when ctx ends (an apply, a
// rollback) finishes first: it runs on a context that is not cancelled,
// and the kernel is never left half-way.
func (d *Daemon) Run(ctx context.Context) error {
	if d.Notify == nil {
		d.Notify = nopNotifier{}
	}
	if d.Rand == nil {
		d.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	recheck := d.Recheck
	if recheck <= 0 {
		recheck = time.Minute
	}
	work := context.WithoutCancel(ctx)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	requests, err := watchRequests(wctx, d.Agent.d.Store.Dir)
	if err != nil {
		// No inotify (exhausted instances): look for requests every second.
		d.Agent.log().Warn("rollback requests checked every second: " + err.Error())
		ch := make(chan struct{}, 1)
		go pollRequests(wctx, ch)
		requests = ch
	}
	d.Notify.Ready()
	d.changed()
	d.handleRequest(work)    // one written while the daemon was down
	poll := time.NewTimer(0) // first poll right away: a booted host wants its patch
	defer poll.Stop()
	soak := time.NewTimer(time.Hour)
	defer soak.Stop()
	for {
		d.Heartbeat.End()
		// Wake for the end of a soak, if one runs; otherwise sleep.
		if k := d.Agent.kernel(); k.Phase == state.PhaseSoaking && k.Current != nil {
			soak.Reset(min(max(k.SoakUntil.Sub(d.Agent.d.Now()), 0), recheck))
		} else {
			soak.Stop()
		}
		select {
		case <-ctx.Done():
			d.Heartbeat.Begin()
			// No STOPPING=1 here: ctx also ends for a reload, and the
			// service manager would take that for a shutdown. The caller
			// that owns the process says it.
			return d.Agent.Stop()
		case <-poll.C:
			d.Heartbeat.Begin()
			if d.Source != nil {
				d.PollOnce(work)
			}
			next := manifest.NextInterval(d.Interval, d.Jitter, d.Rand)
			if lp := d.Agent.st.LastPoll; lp != nil {
				lp.Next = d.Agent.d.Now().Add(next)
				d.Agent.save()
			}
			poll.Reset(next)
			d.changed()
		case ev := <-d.Events:
			d.Heartbeat.Begin()
			d.act(work, d.judge(ev))
		case v := <-d.Verdicts:
			d.Heartbeat.Begin()
			d.act(work, v)
		case <-soak.C:
			d.Heartbeat.Begin()
			before := d.Agent.kernel().Phase
			if err := d.Agent.Tick(); err != nil {
				d.Agent.log().Error("soak end: " + err.Error())
			}
			if d.Agent.kernel().Phase != before {
				d.changed()
			}
		case <-requests:
			d.Heartbeat.Begin()
			d.handleRequest(work)
		}
	}
}
