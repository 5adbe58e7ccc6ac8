// Package agent is the host's decision maker: the per-kernel state machine
// (Agent) and the loop that drives it (Loop). It joins the verified
// manifest, the klp installer and the health verdicts, and keeps its
// memory in agent/state so that every step survives kill -9 and reboots.
//
// Per kernel release a patch goes none → downloading → enabling → soaking
// → good. A bad verdict or a revocation goes rolling-back → (previous good
// level | none) and blocks the patch on this host for good. Every step
// writes its intent before acting and every action is idempotent, so a
// restarted agent resumes where it stopped.
package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/history"
	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/agent/window"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

// Stable journald MESSAGE_IDs, one per event kind, so operators can run
// `journalctl -u klp-agent MESSAGE_ID=...`; packaging/klp-agent.catalog
// explains each.
const (
	MsgApplied          = "23c4302fd2d04d98978905bc094656f3"
	MsgRolledBack       = "f3c92b7809854091b9c79d2e5085b082"
	MsgBlocked          = "20f4a0e86aa84254ba4a266a3ef27848"
	MsgStalled          = "3c26043d1e894c3ea15f62b2276fb56f"
	MsgManifestRejected = "1ebb7e0d7b404f9eb3fba2a8f4d99e91"
	MsgGood             = "c9f10de955234c509eff71deb31a4c69"
	MsgReapplied        = "f0ad8c489b0d404495f09341f9a8f84c"
	MsgHealthEvent      = "afc50722c68d4f2cbf7bc878288c11bb"
	// A kept module copy refused before loading (tampered or unsafe).
	MsgModuleRefused = "e7188cccabb94a94978492ec0c75884c"
	// The root of trust (logged by the daemon, which owns the root).
	MsgRootUpdated    = "4d8bc6be6ae6486d9c46782e8c901e8d"
	MsgRootFloorReset = "2fce3504c79e44e492e75620cd1c9e1b"
	// trust.root re-provisioned: the chain restarted from it.
	MsgRootReprovisioned = "906dd192044a4fb3876594d3e91ebdd6"
	// The guard (agent/guard): a decision on an alert, and a webhook
	// request refused for want of credentials.
	MsgGuardDecision     = "6517cf6c8ce4430ba237f75d86a59a04"
	MsgGuardUnauthorized = "216549be408c4a18b7147b96ec82c752"
)

// Downloader fetches RPMs: the same HTTP client as the manifest
// (manifest.Client), so a private CA, proxies and limits hold for both.
type Downloader interface {
	Download(ctx context.Context, url string, w io.Writer, limit int64) (int64, error)
}

// Deps is everything the agent acts through, injected so tests can use a
// simulated kernel, a test rpm root and a fake clock.
type Deps struct {
	Log    *zap.Logger
	Now    func() time.Time
	Store  *state.Store
	Source *manifest.Source // nil: offline (boot re-apply only)
	// Revocations is the fast revocation channel (revocations.json); nil:
	// none. Its entries add to the manifest's (see revocations.go).
	Revocations *manifest.RevocationChannel
	// Downloader fetches RPMs; nil: the Source's client (or, without a
	// Source, a default one).
	Downloader Downloader
	Host       manifest.Host
	Installer  *klp.Installer
	Soak       time.Duration
	// BootID identifies the running boot (/proc/sys/kernel/random/boot_id).
	BootID func() (string, error)
	// Scanners find the crash records (kdump, pstore) a previous boot
	// left; none: only a missing clean stop says it crashed.
	Scanners []health.Scanner
	// Crashpoint, if set, is called at every step boundary; the
	// crash-consistency tests kill the process there.
	Crashpoint func(step string)
	// Recorder hears about applies, rollbacks, polls and health events
	// (agent/metrics); nil = nobody.
	Recorder Recorder
	// Windows are the maintenance windows new levels wait for (none:
	// any time). Rollbacks and the boot re-apply never wait.
	Windows window.Set
	// KillSwitch, when set, says why nothing may be applied or re-applied
	// in this boot (klp_agent.enable=0 on the kernel command line).
	KillSwitch string
}

// Recorder is what the agent reports for metrics.
type Recorder interface {
	Applied(ok bool, d time.Duration)
	RolledBack(cause state.Cause)
	Polled(result string, at time.Time, manifestVersion uint64)
	// ManifestInForce reports the manifest in force after a poll: its
	// expiry and when this host first accepted its version.
	ManifestInForce(version uint64, expires, since, at time.Time)
	// TrustedRoot reports the root of trust after a poll (with trust.root).
	TrustedRoot(version uint64, expires time.Time)
	HealthEvent(kind string, source health.Source, attributed bool, patch string)
}

type nopRecorder struct{}

func (nopRecorder) Applied(bool, time.Duration)                             {}
func (nopRecorder) RolledBack(state.Cause)                                  {}
func (nopRecorder) Polled(string, time.Time, uint64)                        {}
func (nopRecorder) ManifestInForce(uint64, time.Time, time.Time, time.Time) {}
func (nopRecorder) TrustedRoot(uint64, time.Time)                           {}
func (nopRecorder) HealthEvent(string, health.Source, bool, string)         {}

// Agent is one host's agent. Its methods are called from one goroutine at
// a time (the Loop's, or a CLI command's); Download alone may run beside
// the others.
type Agent struct {
	d    Deps
	st   *state.State
	live []span // which patch was live since when, newest last
}

// span is a stretch of time during which one patch (or none) was live.
type span struct {
	patch   *state.PatchRecord // nil: no patch
	suspect health.Suspect
	from    time.Time
}

// maxSpans bounds the timeline: events are judged within seconds.
const maxSpans = 8

// ErrNoRPM means a rollback target's RPM is no longer at hand.
var ErrNoRPM = errors.New("rpm of the previous good level is not at hand")

// maxRPMBytes bounds an RPM download when the manifest pins a size beyond
// reason (the pinned size is the real limit).
const maxRPMBytes = 1 << 30

// New makes an agent; Start loads its state.
func New(d Deps) *Agent {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	a := &Agent{}
	a.setDeps(d)
	return a
}

func (a *Agent) setDeps(d Deps) {
	if d.Recorder == nil {
		d.Recorder = nopRecorder{}
	}
	if d.Downloader == nil && d.Source != nil {
		d.Downloader = d.Source.Fetcher.Client()
	}
	if d.Downloader == nil {
		c, _ := manifest.NewClient(manifest.ClientConfig{})
		d.Downloader = c
	}
	a.d = d
}

// Settings are what a configuration reload may change.
type Settings struct {
	Source      *manifest.Source
	Revocations *manifest.RevocationChannel
	Downloader  Downloader
	Host        manifest.Host // same kernel release
	Installer   *klp.Installer
	Soak        time.Duration
	Scanners    []health.Scanner
	Log         *zap.Logger
	Windows     window.Set
}

// Reconfigure takes new settings; the state and the kernel are as they were.
func (a *Agent) Reconfigure(s Settings) error {
	if s.Host.Kernel != a.d.Host.Kernel {
		return fmt.Errorf("reconfigure: kernel release %q, running %q", s.Host.Kernel, a.d.Host.Kernel)
	}
	d := a.d
	d.Source, d.Downloader, d.Host, d.Installer, d.Soak, d.Scanners = s.Source, s.Downloader, s.Host, s.Installer, s.Soak, s.Scanners
	d.Windows, d.Revocations = s.Windows, s.Revocations
	if s.Log != nil {
		d.Log = s.Log
	}
	a.setDeps(d)
	if a.st != nil && a.d.Source != nil {
		if err := a.d.Source.LoadCache(); err != nil {
			a.log().Warn("cached manifest not usable: " + err.Error())
		}
	}
	return nil
}

func (a *Agent) kernel() *state.Kernel { return a.st.Kernel(a.d.Host.Kernel) }

// Kernel is the state for the running kernel release.
func (a *Agent) Kernel() *state.Kernel { return a.kernel() }

func (a *Agent) crashpoint(step string) {
	if a.d.Crashpoint != nil {
		a.d.Crashpoint(step)
	}
}

// Host is who this agent selects patches for.
func (a *Agent) Host() manifest.Host { return a.d.Host }

// Source is the manifest source; nil when offline.
func (a *Agent) Source() *manifest.Source { return a.d.Source }

// State returns the in-memory state (for status and tests).
func (a *Agent) State() *state.State { return a.st }

// Layout names the state directory's files.
func (a *Agent) Layout() state.Layout { return a.d.Store.Layout() }

func (a *Agent) now() time.Time { return a.d.Now() }

func (a *Agent) save() error {
	if err := a.d.Store.Save(a.st); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// setPhase records a step before it is taken.
func (a *Agent) setPhase(ph state.Phase) error {
	a.kernel().Phase = ph
	return a.save()
}

func patchFields(p *state.PatchRecord) []zap.Field {
	if p == nil {
		return nil
	}
	return []zap.Field{zap.String("KLP_PATCH", p.Name), zap.Int("KLP_LEVEL", p.Level), zap.String("KLP_SHA256", p.SHA256)}
}

func (a *Agent) log() *zap.Logger {
	return a.d.Log.With(zap.String("KERNEL_RELEASE", a.d.Host.Kernel))
}

// Start loads the state and brings the kernel back to what the agent
// last decided, before any network is needed: after a reboot into the same
// kernel it re-applies the good (or soaking) patch from its local RPM, or,
// if the previous boot ended in a crash while a patch was live, blocks
// that patch and applies the previous good level instead.
func (a *Agent) Start(ctx context.Context) error {
	st, err := a.d.Store.Load()
	if err != nil {
		return err
	}
	a.st = st
	defer func() {
		if a.d.KillSwitch == "" {
			a.golive(a.kernel().Current, time.Time{})
		}
	}()
	boot := ""
	if a.d.BootID != nil {
		if boot, err = a.d.BootID(); err != nil {
			return fmt.Errorf("boot id: %w", err)
		}
	}
	rebooted := st.BootID != "" && boot != st.BootID
	newBoot := boot != st.BootID || boot == ""
	cleanStop := st.CleanStop
	st.BootID, st.CleanStop = boot, false
	k := a.kernel()
	log := a.log()
	if err := a.save(); err != nil {
		return err
	}
	if a.d.Source != nil {
		if err := a.d.Source.LoadCache(); err != nil {
			log.Warn("cached manifest not usable: " + err.Error())
		}
	}
	if a.d.KillSwitch != "" {
		// Nothing of ours is in this boot's kernel and nothing goes in:
		// the state stays as recorded for the next boot without it.
		log.Warn("kill switch: "+a.d.KillSwitch+"; nothing is applied or re-applied in this boot (health watching and status go on)",
			append(patchFields(k.Current), logging.MessageID(MsgKillSwitch))...)
		if newBoot {
			// Once per boot: a restart or a CLI command in the same boot
			// is not another kill-switch boot.
			a.record(history.Event{Kind: history.KindKillSwitch, Reason: a.d.KillSwitch}, k.Current)
		}
		return nil
	}
	switch k.Phase {
	case state.PhaseNone, "":
		return nil
	case state.PhaseDownloading:
		// Nothing was loaded yet. A verified copy at hand is installed
		// now, offline; otherwise the next poll starts the apply again.
		t := *k.Target
		if rpm, ok := a.cached(&t); ok {
			log.Info("resuming an interrupted apply", patchFields(&t)...)
			return a.FinishApply(ctx, t, rpm)
		}
		if err := a.AbandonApply(nil); err != nil {
			return err
		}
		log.Info("the apply of "+t.ID()+" was interrupted during its download; the next poll starts it again", patchFields(&t)...)
		return nil
	case state.PhaseInstalling:
		// rpm was at work; the module was not in the kernel yet, so a
		// crash is not its doing: install it again.
		if k.Target == nil {
			return fmt.Errorf("%w: phase installing without a target", state.ErrCorrupt)
		}
		log.Info("resuming an apply interrupted before its module was loaded", patchFields(k.Target)...)
		rpm, err := a.d.Store.RPMPath(k.Target)
		if err != nil {
			return err
		}
		return a.FinishApply(ctx, *k.Target, rpm)
	case state.PhaseEnabling:
		// The patch may have been live when the agent or the host died.
		if k.Target == nil {
			return fmt.Errorf("%w: phase enabling without a target", state.ErrCorrupt)
		}
		if rebooted {
			if evidence, crashed := a.crashEvidence(cleanStop, k.Target); crashed {
				return a.rollback(ctx, *k.Target, state.CauseBootCrash, "previous boot crashed while it was being enabled", evidence, true)
			}
		}
		rpm, err := a.d.Store.RPMPath(k.Target)
		if err != nil {
			return err
		}
		return a.FinishApply(ctx, *k.Target, rpm)
	case state.PhaseSoaking:
		if k.Current == nil {
			return fmt.Errorf("%w: phase soaking without a current patch", state.ErrCorrupt)
		}
		if rebooted {
			if evidence, crashed := a.crashEvidence(cleanStop, k.Current); crashed {
				return a.rollback(ctx, *k.Current, state.CauseBootCrash, "previous boot crashed while it was soaking", evidence, true)
			}
		}
		if rebooted || !a.enabled(k.Current) {
			// The soak goes on where it was: SoakUntil is kept.
			return a.reapply(ctx, *k.Current)
		}
		return nil
	case state.PhaseGood:
		if rebooted || !a.enabled(k.Current) {
			p := *k.Current
			return a.reapply(ctx, p)
		}
		return nil
	case state.PhaseRollingBack:
		return a.finishRollback(ctx)
	}
	return fmt.Errorf("unknown phase %q in state", k.Phase)
}

// crashEvidence decides whether the previous boot ended badly while live
// was running: a crash record (kdump, pstore) written after its apply, or
// no clean stop. Each record is counted and logged with its source, its
// cause and whether its trace runs through live.
func (a *Agent) crashEvidence(cleanStop bool, live *state.PatchRecord) ([]string, bool) {
	var ev []string
	since := live.Applied
	if since.IsZero() {
		since = a.now().Add(-24 * time.Hour)
	}
	suspect := health.Suspect{Name: live.Name} // its module is gone with the boot: names only
	for _, sc := range a.d.Scanners {
		crashes, err := sc.CrashesSince(since)
		if err != nil {
			a.log().Warn(fmt.Sprintf("%s scan failed: %v", sc.Source(), err))
		}
		for _, c := range crashes {
			kind, header := "unknown", "no kernel report found in it"
			if w := c.Cause(); w != nil {
				kind, header = string(w.Kind), w.Header
			}
			attributed := c.Attributed(suspect)
			a.log().Warn(fmt.Sprintf("%s %s report from the previous boot (%s): %s", c.Source, kind, c.Path, header),
				zap.String("KLP_EVENT_KIND", kind), zap.String("KLP_EVENT_SOURCE", string(c.Source)),
				zap.Bool("KLP_ATTRIBUTED", attributed), zap.String("KLP_PATCH", live.Name), logging.MessageID(MsgHealthEvent))
			a.d.Recorder.HealthEvent(kind, c.Source, attributed, live.Name)
			ev = append(ev, c.EvidenceLines(30)...)
		}
	}
	if !cleanStop {
		ev = append(ev, "no clean stop recorded before the reboot")
	}
	return ev, len(ev) > 0
}

// enabled reports whether p is enabled in the kernel right now.
func (a *Agent) enabled(p *state.PatchRecord) bool {
	if p == nil {
		return false
	}
	lp, err := a.d.Installer.Controller.Sysfs.Get(p.Name)
	return err == nil && lp.Enabled
}

// golive records that p (nil: none) is live from t on, with what
// attribution needs to know of it (suspect).
func (a *Agent) golive(p *state.PatchRecord, t time.Time) {
	sp := span{from: t}
	if p != nil {
		c := *p
		sp.patch = &c
		sp.suspect = a.suspect(p)
	}
	a.live = append(a.live, sp)
	if n := len(a.live) - maxSpans; n > 0 {
		a.live = append(a.live[:0:0], a.live[n:]...)
	}
}

// suspect is what attribution knows of live patch p: its module, the
// functions it replaces as the kernel lists them, and where its code sits
// (from its module file and /sys/module/<name>/sections), for reports
// that name only a raw address.
func (a *Agent) suspect(p *state.PatchRecord) health.Suspect {
	s := health.Suspect{Name: p.Name}
	sysfs := a.d.Installer.Controller.Sysfs
	if lp, err := sysfs.Get(p.Name); err == nil {
		for _, o := range lp.Objects {
			for _, f := range o.Functions {
				name, _, _ := strings.Cut(f, ",") // "func,sympos"
				s.Functions = append(s.Functions, health.Function{Object: o.Name, Name: name})
			}
		}
	}
	rpm, err := a.d.Store.RPMPath(p)
	if err != nil {
		return s
	}
	info, err := klp.InspectRPM(rpm)
	if err != nil {
		return s
	}
	ko, err := limitfile.Read(filepath.Join(a.d.Installer.Root, info.ModulePath), klp.MaxModuleBytes)
	if err != nil {
		a.log().Debug("module text of " + p.ID() + " unknown: " + err.Error())
		return s
	}
	text, err := sysfs.ModuleText(p.Name, ko)
	if err != nil {
		a.log().Debug("module text of " + p.ID() + " unknown: " + err.Error())
		return s
	}
	for _, r := range text {
		s.Text = append(s.Text, health.Range{Start: r.Start, End: r.End})
	}
	return s
}

// Culprit is the patch ev, seen at t, is judged against: the one live at
// t, or the one that live patch replaced when ev runs through it and not
// through the live one. A patch the agent replaced and unloaded can still
// crash the kernel (a task or callback left in its code): the kernel then
// names only a raw address in its text, recorded when it went live, and
// "[last unloaded: name]".
func (a *Agent) Culprit(ev health.Event, t time.Time) (*state.PatchRecord, health.Suspect) {
	for i := len(a.live) - 1; i >= 0; i-- {
		sp := a.live[i]
		if sp.from.After(t) {
			continue
		}
		if i > 0 && !health.Attributed(ev, sp.suspect) {
			// Only its own code ties a report to the replaced patch: a
			// function it replaced runs unpatched now, which is the
			// live patch's doing (it dropped the fix), not its.
			prev := a.live[i-1]
			code := prev.suspect
			code.Functions = nil
			if prev.patch != nil && health.Attributed(ev, code) {
				return prev.patch, prev.suspect
			}
		}
		return sp.patch, sp.suspect
	}
	return nil, health.Suspect{}
}

func (a *Agent) reapply(ctx context.Context, p state.PatchRecord) error {
	start := a.now()
	if err := a.install(ctx, &p); err != nil {
		return fmt.Errorf("re-apply %s: %w", p.ID(), err)
	}
	a.log().Info(fmt.Sprintf("re-applied %s after boot in %s", p.ID(), a.now().Sub(start).Round(time.Millisecond)),
		append(patchFields(&p), logging.MessageID(MsgReapplied))...)
	a.record(history.Event{Kind: history.KindReapply, Duration: a.now().Sub(start)}, &p)
	return nil
}

// install puts p in the kernel from its local RPM copy.
func (a *Agent) install(ctx context.Context, p *state.PatchRecord) error {
	rpm, err := a.d.Store.RPMPath(p)
	if err != nil {
		return err
	}
	if _, err := os.Stat(rpm); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNoRPM, p.ID(), err)
	}
	res, err := a.d.Installer.Apply(ctx, rpm, a.want(p))
	if err != nil {
		return err
	}
	for _, r := range res.Result.Replaced {
		a.log().Info("unloaded replaced livepatch "+r, patchFields(p)...)
	}
	a.keepModule(p, res.Info)
	return nil
}

// want is what the installer needs for p: the pins, and the agent's
// current patch, which p must replace and a failure leaves in place.
func (a *Agent) want(p *state.PatchRecord) klp.Want {
	w := klp.Want{KernelRelease: a.d.Host.Kernel, Name: p.Name, Level: p.Level, SHA256: p.SHA256, Size: p.Size}
	if c := a.kernel().Current; c != nil && !c.Same(p) {
		w.Previous = &klp.Installed{Module: c.Name, Package: c.RPMName}
		if rpm, err := a.d.Store.RPMPath(c); err == nil {
			if _, err := os.Stat(rpm); err == nil {
				w.Previous.RPM = rpm
			}
		}
	}
	return w
}

// keepModule copies the module rpm installed for p into the state dir: a
// rollback to p loads it at once, before rpm's bookkeeping. The copy is
// made from the installed file read through the same checks as a load,
// and p records the sha256 the payload said, which that rollback checks.
// A copy already there is replaced: it may not be the verified bytes.
func (a *Agent) keepModule(p *state.PatchRecord, info *klp.RPMInfo) {
	dst, err := a.Layout().Module(p.SHA256)
	if err != nil || info == nil || info.ModuleSHA256 == "" {
		return
	}
	p.ModuleSHA256 = info.ModuleSHA256
	b, err := klp.ReadModule(klp.ModuleFile{Path: filepath.Join(a.d.Installer.Root, info.ModulePath), SHA256: info.ModuleSHA256})
	if err == nil {
		if err = os.MkdirAll(filepath.Dir(dst), 0o700); err == nil {
			err = atomicfile.WriteFile(dst, b, 0o600)
		}
	}
	if err != nil {
		a.log().Warn("keeping a copy of "+p.ID()+"'s module: "+err.Error(), patchFields(p)...)
	}
}

// Wanted is the selection for this host under m, as the daemon makes it:
// patches blocked here are never chosen.
func Wanted(k *state.Kernel, m *manifest.Manifest, host manifest.Host, now time.Time) manifest.Decision {
	d := manifest.Select(m, host, now, func(p *manifest.Patch) bool {
		return k.IsBlocked(p.Name, p.Level, p.SHA256)
	})
	if k.Pin != nil {
		pinned(&d, k.Pin.Level)
	}
	return d
}

// pinned re-chooses under a pin: the highest eligible level at or below it.
func pinned(d *manifest.Decision, pin int) {
	d.Wanted = nil
	for i := range d.Entries {
		e := &d.Entries[i]
		e.Chosen = false
		switch {
		case !e.Eligible:
		case e.Patch.Level > pin:
			e.Eligible = false
			e.Reason = fmt.Sprintf("above the pin at level %d (klp-agent pin)", pin)
		case d.Wanted == nil:
			d.Wanted, e.Chosen = e.Patch, true
			e.Reason = fmt.Sprintf("chosen: highest eligible level at or below the pin at %d", pin)
		default:
			e.Reason = fmt.Sprintf("superseded by level %d", d.Wanted.Level)
		}
	}
}

// Wanted is the selection for this host under the manifest m.
func (a *Agent) Wanted(m *manifest.Manifest) manifest.Decision {
	return Wanted(a.kernel(), m, a.d.Host, a.now())
}

// Plan is what a manifest asks of this host now: at most one change.
type Plan struct {
	// Revoked: the current patch is revoked and must be rolled back.
	Revoked *state.PatchRecord
	Reason  string
	// Apply: this level is wanted and higher than the current one.
	Apply *state.PatchRecord
	// Waits: a wanted level waits (held, outside the maintenance windows,
	// kill switch) for this reason, until Until (zero: an operator).
	Waits string
	Until time.Time
}

// Plan decides what v asks: a revoked current patch is rolled back; a
// higher eligible level is applied, one change at a time (never while a
// patch is still soaking). A manifest that stops listing the current
// patch does not remove it.
func (a *Agent) Plan(v *manifest.Verified) (Plan, error) {
	k := a.kernel()
	if c := k.Current; c != nil && (k.Phase == state.PhaseSoaking || k.Phase == state.PhaseGood) {
		for i := range v.Revoked {
			r := &v.Revoked[i]
			if r.Matches(&manifest.Patch{Name: c.Name, Level: c.Level, Kernel: a.d.Host.Kernel, SHA256: c.SHA256}) {
				reason := "revoked by manifest version " + fmt.Sprint(v.Version)
				if r.Reason != "" {
					reason += ": " + r.Reason
				}
				cur := *c
				return Plan{Revoked: &cur, Reason: reason}, nil
			}
		}
		if p, ok := a.channelRevokes(c); ok {
			return p, nil
		}
	}
	d := a.wantedNow(v.Manifest)
	if d.Wanted == nil || k.Phase == state.PhaseSoaking || k.Phase == state.PhaseRollingBack {
		return Plan{}, nil
	}
	if c := k.Current; c != nil && d.Wanted.Level <= c.Level {
		return Plan{}, nil
	}
	if why, until := a.Gate(); why != "" {
		return Plan{Waits: fmt.Sprintf("%s waits: %s", d.Wanted.ID(), why), Until: until}, nil
	}
	u, err := manifest.ResolveURL(v.URL, d.Wanted)
	if err != nil {
		return Plan{}, err
	}
	p := state.PatchRecord{Name: d.Wanted.Name, Level: d.Wanted.Level, SHA256: d.Wanted.SHA256, Size: d.Wanted.Size, URL: u}
	return Plan{Apply: &p}, nil
}

// Converge carries out what v asks (see Plan), start to end.
func (a *Agent) Converge(ctx context.Context, v *manifest.Verified) error {
	plan, err := a.Plan(v)
	switch {
	case err != nil:
		return err
	case plan.Revoked != nil:
		return a.rollback(ctx, *plan.Revoked, state.CauseRevoked, plan.Reason, nil, true)
	case plan.Apply == nil:
		return nil
	}
	p := *plan.Apply
	rpm, cached, err := a.BeginApply(p)
	if err != nil {
		return err
	}
	if !cached {
		if rpm, err = a.Download(ctx, p); err != nil {
			return a.AbandonApply(fmt.Errorf("download %s: %w", p.ID(), err))
		}
	}
	return a.FinishApply(ctx, p, rpm)
}

// BeginApply records the intent to apply p and says where its RPM goes
// and whether a verified copy is already there.
func (a *Agent) BeginApply(p state.PatchRecord) (rpm string, cached bool, err error) {
	if err := p.Validate(); err != nil {
		return "", false, err
	}
	k := a.kernel()
	k.Target = &p
	if err := a.setPhase(state.PhaseDownloading); err != nil {
		return "", false, err
	}
	a.crashpoint("apply:intent")
	rpm, cached = a.cached(&p)
	return rpm, cached, nil
}

// cached returns p's verified local copy, if there is one.
func (a *Agent) cached(p *state.PatchRecord) (string, bool) {
	dst, err := a.d.Store.RPMPath(p)
	if err != nil {
		return "", false
	}
	sum, size, err := klp.FileSHA256(dst)
	return dst, err == nil && sum == p.SHA256 && size == p.Size
}

// Download fetches p's RPM into the state dir, checking size and sha256
// while streaming. The copy is kept: it is what a reboot re-applies and a
// rollback steps back to. It changes no state, so the Loop runs it beside
// its other work and cancels it through ctx.
func (a *Agent) Download(ctx context.Context, p state.PatchRecord) (string, error) {
	return a.d.download(ctx, p)
}

// download is Download with the dependencies it was given: the Loop binds
// them before the download starts, since a dropped download may outlive
// them (see Loop).
func (d Deps) download(ctx context.Context, p state.PatchRecord) (string, error) {
	dst, err := d.Store.RPMPath(&p)
	if err != nil {
		return "", err
	}
	if p.URL == "" {
		return "", fmt.Errorf("%w: no URL for %s", ErrNoRPM, p.ID())
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", err
	}
	tmp := dst + ".part"
	f, err := createPart(tmp)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	var w io.Writer = f
	if d.Crashpoint != nil {
		w = &firstWrite{w: f, then: func() { d.Crashpoint("apply:downloading") }}
	}
	n, err := d.Downloader.Download(ctx, p.URL, io.MultiWriter(w, h), min(p.Size, maxRPMBytes))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != p.Size || got != p.SHA256 {
		os.Remove(tmp)
		return "", fmt.Errorf("%w: %s: got %d bytes sha256 %s, manifest pins %d bytes %s", klp.ErrDigest, p.URL, n, got, p.Size, p.SHA256)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", err
	}
	return dst, atomicfile.SyncDir(filepath.Dir(dst))
}

// firstWrite calls then after the first bytes of a download are on disk
// (a crashpoint in the middle of it).
type firstWrite struct {
	w    *os.File
	then func()
	done bool
}

func (fw *firstWrite) Write(b []byte) (int, error) {
	n, err := fw.w.Write(b)
	if !fw.done && n > 0 {
		fw.done = true
		fw.w.Sync()
		fw.then()
	}
	return n, err
}

// createPart creates a download's temporary file afresh: whatever is at
// path (a crashed download's leftover, or a planted symlink) is unlinked,
// never followed, and O_EXCL|O_NOFOLLOW refuses anything put back between
// the two steps.
func createPart(path string) (*os.File, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, state.NoFollow(path, err))
	}
	return f, nil
}

// FinishApply installs and enables p from its verified copy rpm and starts
// its soak. A level the kernel refuses for a reason that will not change
// (its own log says which) is blocked; anything else is retried later.
func (a *Agent) FinishApply(ctx context.Context, p state.PatchRecord, rpm string) error {
	k := a.kernel()
	log := a.log().With(patchFields(&p)...)
	start := a.now()
	a.crashpoint("apply:downloaded")
	var names *klp.NameCheck
	// The header alone: Apply reads the payload, once.
	if name, err := klp.PackageName(rpm); err == nil {
		p.RPMName = name
		// rpm -q of the name runs while the phase is written.
		names = a.d.Installer.StartNameCheck(ctx, name)
		defer names.Stop()
	}
	k.Target = &p
	if err := a.setPhase(state.PhaseInstalling); err != nil {
		return err
	}
	a.crashpoint("apply:installing")
	var loading time.Time
	w := a.want(&p)
	w.NameCheck = names
	w.BeforeLoad = func() error {
		// From here a crash may be the module's doing.
		loading = a.now()
		if err := a.setPhase(state.PhaseEnabling); err != nil {
			return err
		}
		a.crashpoint("apply:enabling")
		return nil
	}
	res, err := a.d.Installer.Apply(ctx, rpm, w)
	if err != nil {
		var refused *klp.RefusedError
		switch {
		case errors.As(err, &refused) && refused.Deterministic():
			a.block(p, state.CauseKernelRefused, refused.Error(), refused.Kernel)
		case errors.Is(err, klp.ErrStalled):
			// A stall is not a regression (a task sat in a patched
			// function): the kernel is as before, and the next poll retries.
			log.Error("livepatch transition stalled; reversed, will retry at the next poll: "+err.Error(), logging.MessageID(MsgStalled))
			a.record(history.Event{Kind: history.KindStall, Reason: err.Error(), Duration: a.now().Sub(start)}, &p)
		}
		a.d.Recorder.Applied(false, 0)
		return a.AbandonApply(fmt.Errorf("apply %s: %w", p.ID(), err))
	}
	a.keepModule(&p, res.Info)
	p.Applied = a.now()
	k.Current, k.Target = &p, nil
	k.SoakUntil = p.Applied.Add(a.d.Soak)
	if err := a.setPhase(state.PhaseSoaking); err != nil {
		return err
	}
	a.golive(&p, loading)
	a.crashpoint("apply:soaking")
	a.d.Recorder.Applied(true, a.now().Sub(start))
	t := res.Timing
	log.Info(fmt.Sprintf("applied %s; soaking until %s", p.ID(), k.SoakUntil.UTC().Format(time.RFC3339)),
		logging.MessageID(MsgApplied), zap.Duration("VERIFY", t.Verify), zap.Duration("INSTALL", t.Install),
		zap.Duration("LOAD", t.Load), zap.Duration("TRANSITION", t.Transition), zap.Strings("REPLACED", res.Result.Replaced))
	a.record(history.Event{Kind: history.KindApply, Duration: a.now().Sub(start)}, &p)
	return nil
}

// AbandonApply records that an apply did not happen: the kernel still runs
// the current patch (a failed enable reverses itself), so the phase goes
// back to what Current says. It returns cause (nil: only the record).
func (a *Agent) AbandonApply(cause error) error {
	k := a.kernel()
	k.Target = nil
	ph := state.PhaseNone
	if c := k.Current; c != nil {
		ph = state.PhaseSoaking
		if !c.Good.IsZero() {
			ph = state.PhaseGood
		}
	}
	if err := a.setPhase(ph); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// Tick ends a soak whose time has come: the patch becomes good.
func (a *Agent) Tick() error {
	k := a.kernel()
	if a.d.KillSwitch != "" {
		return nil // not in the kernel this boot: its soak does not run
	}
	if k.Phase != state.PhaseSoaking || k.Current == nil || a.now().Before(k.SoakUntil) {
		return nil
	}
	k.Current.Good = a.now()
	k.MarkGood(*k.Current)
	if err := a.setPhase(state.PhaseGood); err != nil {
		return err
	}
	a.log().Info(fmt.Sprintf("%s passed its soak; now the good level", k.Current.ID()),
		append(patchFields(k.Current), logging.MessageID(MsgGood))...)
	a.record(history.Event{Kind: history.KindGood, Duration: k.Current.Good.Sub(k.Current.Applied)}, k.Current)
	return nil
}

// Rollback steps back from the current patch: to the previous good level
// if its RPM is at hand (atomic replace keeps the kernel patched), else to
// no patch. With block, the current patch is never applied here again.
func (a *Agent) Rollback(ctx context.Context, cause state.Cause, reason string, evidence []string, block bool) error {
	k := a.kernel()
	if k.Current == nil {
		return fmt.Errorf("rollback: %w", ErrNoPatch)
	}
	return a.rollback(ctx, *k.Current, cause, reason, evidence, block)
}

// Block records p as blocked on this host without touching the kernel:
// for a patch that is no longer live when the evidence against it is
// judged (an apply replaced it meanwhile).
func (a *Agent) Block(p state.PatchRecord, cause state.Cause, reason string, evidence []string) error {
	a.block(p, cause, reason, evidence)
	return a.save()
}

func (a *Agent) block(p state.PatchRecord, cause state.Cause, reason string, evidence []string) {
	a.kernel().Block(p, cause, reason, evidence, a.now())
	a.log().Warn(fmt.Sprintf("blocked %s on this host: %s", p.ID(), reason),
		append(patchFields(&p), logging.MessageID(MsgBlocked), zap.String("KLP_CAUSE", string(cause)), zap.Strings("EVIDENCE", evidence))...)
	a.record(history.Event{Kind: history.KindBlock, Cause: string(cause), Reason: reason, Evidence: evidence}, &p)
}

func (a *Agent) rollback(ctx context.Context, from state.PatchRecord, cause state.Cause, reason string, evidence []string, block bool) error {
	k := a.kernel()
	if block {
		// Block first: whatever happens next, this patch is never re-applied.
		a.block(from, cause, reason, evidence)
	}
	k.From, k.Target, k.Cause, k.Reason = &from, k.PreviousGood(from.Level), cause, reason
	if err := a.setPhase(state.PhaseRollingBack); err != nil {
		return err
	}
	a.crashpoint("rollback:intent")
	return a.finishRollback(ctx)
}

// finishRollback completes a recorded rollback (also after a restart): it
// steps back to the newest good level below the bad one that the kernel
// takes — its module loaded at once from the agent's copy, the bad patch
// replaced atomically, rpm's bookkeeping after — else to no patch.
func (a *Agent) finishRollback(ctx context.Context) error {
	k := a.kernel()
	from := k.From
	log := a.log().With(patchFields(from)...)
	start := a.now()
	var to *state.PatchRecord
	stepBack := a.stepBack
	if a.d.KillSwitch != "" {
		// Nothing of ours is in the kernel in this boot and nothing may go
		// in: only the record and rpm's bookkeeping step back; the next
		// boot without the switch re-applies the level stepped back to.
		stepBack = a.stepBackRecord
	}
	for _, c := range a.stepBackTargets(from, k.Target) {
		err := stepBack(ctx, from, &c)
		var refused *klp.RefusedError
		switch {
		case err == nil:
			to = &c
		case errors.Is(err, ErrNoRPM):
			log.Warn("good level " + c.ID() + " not at hand: " + err.Error())
			continue
		case errors.As(err, &refused) && refused.Deterministic():
			// The log's KLP_PATCH is the patch rolled back from; this one is
			// the level refused.
			log.Warn("the kernel refuses good level "+c.ID()+" now; trying an older one: "+err.Error(),
				zap.String("KLP_REFUSED_PATCH", c.Name), zap.Int("KLP_REFUSED_LEVEL", c.Level))
			continue
		default:
			return fmt.Errorf("roll back %s to %s: %w", from.ID(), c.ID(), err)
		}
		break
	}
	if to == nil {
		if a.d.KillSwitch != "" {
			log.Info("kill switch: " + from.ID() + " is not in the kernel; its record is rolled back")
		} else if err := a.d.Installer.Controller.Disable(ctx, from.Name); err != nil && !errors.Is(err, klp.ErrNotFound) {
			// ErrNotFound: neither patch nor module is left (a rollback
			// resumed after its disable); anything else is an answer.
			return fmt.Errorf("roll back %s: %w", from.ID(), err)
		}
		if from.RPMName != "" {
			if err := a.d.Installer.RPM.Erase(ctx, from.RPMName); err != nil && !errors.Is(err, klp.ErrNotInstalled) {
				log.Warn("rolled back to no patch, but erasing " + from.RPMName + ": " + err.Error())
			}
		}
	}
	a.crashpoint("rollback:stepped-back")
	k.Current, k.Target, k.From = to, nil, nil
	ph := state.PhaseNone
	if to != nil {
		ph = state.PhaseGood
	}
	cause, reason := k.Cause, k.Reason
	k.Cause, k.Reason = "", ""
	if err := a.setPhase(ph); err != nil {
		return err
	}
	if a.d.KillSwitch == "" {
		a.golive(to, start)
	}
	a.crashpoint("rollback:done")
	dest := "no patch"
	if to != nil {
		dest = to.ID()
	}
	a.d.Recorder.RolledBack(cause)
	log.Warn(fmt.Sprintf("rolled back %s to %s in %s: %s", from.ID(), dest, a.now().Sub(start).Round(time.Millisecond), reason),
		logging.MessageID(MsgRolledBack), zap.String("KLP_CAUSE", string(cause)), zap.String("KLP_ROLLBACK_REASON", reason))
	a.record(history.Event{Kind: history.KindRollback, Cause: string(cause), Reason: reason, To: dest, Duration: a.now().Sub(start)}, from)
	return nil
}

// stepBackTargets are the good levels below from, newest first: the
// recorded target, then older ones (a klp_state version the newer patch
// raised makes the kernel refuse the level just below it).
func (a *Agent) stepBackTargets(from, target *state.PatchRecord) []state.PatchRecord {
	k := a.kernel()
	var out []state.PatchRecord
	if target != nil {
		out = append(out, *target)
	}
	for i := len(k.Good) - 1; i >= 0; i-- {
		g := k.Good[i]
		if g.Level < from.Level && (target == nil || !g.Same(target)) && !k.IsBlocked(g.Name, g.Level, g.SHA256) {
			out = append(out, g)
		}
	}
	return out
}

// stepBack replaces from with to in the kernel: the module first, from the
// agent's copy (the bad patch is out within its transition), then rpm's
// database. Without a copy it is a plain install from the RPM.
func (a *Agent) stepBack(ctx context.Context, from, to *state.PatchRecord) error {
	ko, err := a.Layout().Module(to.SHA256)
	if err != nil {
		return err
	}
	if _, err := os.Lstat(ko); err != nil || to.ModuleSHA256 == "" {
		// No copy, or none whose hash was recorded (kept by an older
		// version): the plain install verifies the RPM and its module.
		return a.install(ctx, to)
	}
	rpm, err := a.d.Store.RPMPath(to)
	if err != nil {
		return err
	}
	if _, err := os.Stat(rpm); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNoRPM, to.ID(), err)
	}
	res, err := a.d.Installer.Controller.Enable(ctx, klp.ModuleFile{Path: ko, SHA256: to.ModuleSHA256}, to.Name, klp.EnableOptions{Replaces: from.Name})
	if errors.Is(err, klp.ErrModuleTampered) || errors.Is(err, klp.ErrModuleUnsafe) {
		// Not loaded. The verified RPM is still at hand: install from it,
		// which checks the module again and keeps a fresh copy.
		a.log().Error("kept copy of "+to.ID()+"'s module refused, not loaded: "+err.Error()+"; installing "+to.ID()+" from its verified RPM instead",
			append(patchFields(to), logging.MessageID(MsgModuleRefused))...)
		return a.install(ctx, to)
	}
	if err != nil {
		return err
	}
	a.crashpoint("rollback:loaded")
	for _, r := range res.Replaced {
		a.log().Info("unloaded replaced livepatch "+r, patchFields(to)...)
	}
	// Bookkeeping: rpm -q names what the kernel runs again.
	if err := a.d.Installer.RPM.Install(ctx, rpm); err != nil {
		a.log().Warn("stepped back to "+to.ID()+", but rpm: "+err.Error(), patchFields(to)...)
		return nil
	}
	if from.RPMName != "" && from.RPMName != to.RPMName && to.RPMName != "" {
		if err := a.d.Installer.RPM.Erase(ctx, from.RPMName); err != nil && !errors.Is(err, klp.ErrNotInstalled) {
			a.log().Warn("stepped back to "+to.ID()+", but erasing "+from.RPMName+": "+err.Error(), patchFields(to)...)
		}
	}
	return nil
}

// stepBackRecord is stepBack under the kill switch: rpm's database names
// to again, the kernel is not touched.
func (a *Agent) stepBackRecord(ctx context.Context, from, to *state.PatchRecord) error {
	rpm, err := a.d.Store.RPMPath(to)
	if err != nil {
		return err
	}
	if _, err := os.Stat(rpm); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNoRPM, to.ID(), err)
	}
	if err := a.d.Installer.RPM.Install(ctx, rpm); err != nil {
		a.log().Warn("stepped back to "+to.ID()+" in the record, but rpm: "+err.Error(), patchFields(to)...)
		return nil
	}
	if from.RPMName != "" && from.RPMName != to.RPMName && to.RPMName != "" {
		if err := a.d.Installer.RPM.Erase(ctx, from.RPMName); err != nil && !errors.Is(err, klp.ErrNotInstalled) {
			a.log().Warn("stepped back to "+to.ID()+" in the record, but erasing "+from.RPMName+": "+err.Error(), patchFields(to)...)
		}
	}
	return nil
}

// Stop records a clean stop, so the next start after a reboot does not
// take the reboot for a crash.
func (a *Agent) Stop() error {
	if a.st == nil {
		return nil
	}
	a.st.CleanStop = true
	return a.save()
}

// BootID reads the kernel's boot id under root.
func BootID(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "proc/sys/kernel/random/boot_id"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
