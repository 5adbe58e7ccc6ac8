// Package agent is the daemon's state machine: it joins the manifest
// source, the klp installer and the host's health verdicts, and keeps its
// memory in agent/state so that every step survives kill -9 and reboots.
//
// Per kernel release a patch goes none → downloading → installing →
// enabling → soaking → good. A bad verdict or a revocation goes
// rolling-back → (previous good level | none) and blocks the patch on this
// host for good. Every step writes its intent before acting and every
// action is idempotent, so a restarted agent resumes where it stopped.
package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
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
)

// Deps is everything the agent acts through, injected so tests can use a
// simulated kernel, a test rpm root and a fake clock.
type Deps struct {
	Log       *zap.Logger
	Now       func() time.Time
	Store     *state.Store
	Source    *manifest.Source // nil: offline (boot re-apply only)
	Host      manifest.Host
	Installer *klp.Installer
	HTTP      *http.Client // RPM downloads
	Soak      time.Duration
	// BootID identifies the running boot (/proc/sys/kernel/random/boot_id).
	BootID func() (string, error)
	// CrashSince reports crash evidence (kdump dumps) newer than t, from the
	// previous boot; nil means no kdump scanning.
	CrashSince func(t time.Time) ([]string, error)
	// Crashpoint, if set, is called at every step boundary; the
	// crash-consistency tests kill the process there.
	Crashpoint func(step string)
	// Recorder hears about applies, rollbacks, polls and health events
	// (agent/metrics); nil = nobody.
	Recorder Recorder
}

// Recorder is what the agent reports for metrics.
type Recorder interface {
	Applied(ok bool, d time.Duration)
	RolledBack(reason string)
	Polled(result string, at time.Time, manifestVersion uint64)
	HealthEvent(kind, source string, attributed bool, patch string)
}

type nopRecorder struct{}

func (nopRecorder) Applied(bool, time.Duration)              {}
func (nopRecorder) RolledBack(string)                        {}
func (nopRecorder) Polled(string, time.Time, uint64)         {}
func (nopRecorder) HealthEvent(string, string, bool, string) {}

func (a *Agent) rec() Recorder {
	if a.d.Recorder == nil {
		return nopRecorder{}
	}
	return a.d.Recorder
}

// reasonClass maps a rollback reason to the metrics' closed set.
func reasonClass(reason string) string {
	switch {
	case strings.HasPrefix(reason, "operator"):
		return "operator"
	case strings.HasPrefix(reason, "revoked"):
		return "revoked"
	case strings.HasPrefix(reason, "previous boot crashed"):
		return "boot-crash"
	}
	return "health"
}

// Agent is one host's agent.
type Agent struct {
	d  Deps
	st *state.State
}

// ErrNoRPM means a rollback target's RPM is no longer at hand.
var ErrNoRPM = errors.New("rpm of the previous good level is not at hand")

// New makes an agent; Start loads its state.
func New(d Deps) *Agent {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	if d.HTTP == nil {
		d.HTTP = &http.Client{Timeout: 10 * time.Minute}
	}
	return &Agent{d: d}
}

func (a *Agent) kernel() *state.Kernel { return a.st.Kernel(a.d.Host.Kernel) }

func (a *Agent) crashpoint(step string) {
	if a.d.Crashpoint != nil {
		a.d.Crashpoint(step)
	}
}

// Host is who this agent selects patches for.
func (a *Agent) Host() manifest.Host { return a.d.Host }

// State returns the in-memory state (for status and tests).
func (a *Agent) State() *state.State { return a.st }

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
	boot := ""
	if a.d.BootID != nil {
		if boot, err = a.d.BootID(); err != nil {
			return fmt.Errorf("boot id: %w", err)
		}
	}
	rebooted := st.BootID != "" && boot != st.BootID
	cleanStop := st.CleanStop
	st.BootID, st.CleanStop = boot, false
	k := a.kernel()
	log := a.log()
	if err := a.save(); err != nil {
		return err
	}
	if a.d.Source != nil {
		if err := a.d.Source.LoadCache(); err != nil {
			log.Warn("cached manifest not usable", zap.Error(err))
		}
	}
	switch k.Phase {
	case state.PhaseNone, "":
		return nil
	case state.PhaseDownloading, state.PhaseInstalling:
		// Nothing was loaded yet: start that apply again.
		t := *k.Target
		log.Info("resuming an interrupted apply", patchFields(&t)...)
		return a.apply(ctx, t)
	case state.PhaseEnabling:
		// The patch may have been live when the agent or the host died.
		if k.Target == nil {
			return fmt.Errorf("%w: phase enabling without a target", state.ErrCorrupt)
		}
		if rebooted {
			if evidence, crashed := a.crashEvidence(cleanStop, k.Target); crashed {
				return a.rollback(ctx, *k.Target, "previous boot crashed while it was being enabled", evidence, true)
			}
		}
		return a.apply(ctx, *k.Target)
	case state.PhaseSoaking:
		if k.Current == nil {
			return fmt.Errorf("%w: phase soaking without a current patch", state.ErrCorrupt)
		}
		if rebooted {
			if evidence, crashed := a.crashEvidence(cleanStop, k.Current); crashed {
				return a.rollback(ctx, *k.Current, "previous boot crashed while it was soaking", evidence, true)
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
// was running: a kdump dump newer than its apply, or no clean stop.
func (a *Agent) crashEvidence(cleanStop bool, live *state.PatchRecord) ([]string, bool) {
	var ev []string
	if a.d.CrashSince != nil {
		since := live.Applied
		if since.IsZero() {
			since = a.d.Now().Add(-24 * time.Hour)
		}
		dumps, err := a.d.CrashSince(since)
		if err != nil {
			a.log().Warn("kdump scan failed", zap.Error(err))
		}
		for _, d := range dumps {
			if strings.HasPrefix(d, "kdump ") {
				a.rec().HealthEvent("kdump", "kdump", false, live.Name)
			}
		}
		ev = append(ev, dumps...)
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

func (a *Agent) reapply(ctx context.Context, p state.PatchRecord) error {
	start := a.d.Now()
	if err := a.install(ctx, &p); err != nil {
		return fmt.Errorf("re-apply %s: %w", p.ID(), err)
	}
	a.log().Info(fmt.Sprintf("re-applied %s after boot in %s", p.ID(), a.d.Now().Sub(start).Round(time.Millisecond)),
		append(patchFields(&p), logging.MessageID(MsgReapplied))...)
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
	res, err := a.d.Installer.Apply(ctx, rpm, klp.Want{KernelRelease: a.d.Host.Kernel, Name: p.Name, Level: p.Level, SHA256: p.SHA256, Size: p.Size})
	if err != nil {
		return err
	}
	for _, r := range res.Result.Replaced {
		a.log().Info("unloaded replaced livepatch "+r, patchFields(p)...)
	}
	return nil
}

// Wanted is the selection for this host under the manifest in force.
func (a *Agent) Wanted(m *manifest.Manifest) manifest.Decision {
	k := a.kernel()
	return manifest.Select(m, a.d.Host, a.d.Now(), func(p *manifest.Patch) bool {
		return k.IsBlocked(p.Name, p.Level, p.SHA256)
	})
}

func fromManifest(p *manifest.Patch) state.PatchRecord {
	return state.PatchRecord{Name: p.Name, Level: p.Level, SHA256: p.SHA256, Size: p.Size, URL: p.URL}
}

// Converge moves the kernel toward what the manifest wants for this host:
// a revoked current patch is rolled back; a higher eligible level is
// applied, one change at a time (never while a patch is still soaking).
// A manifest that stops listing the current patch does not remove it.
func (a *Agent) Converge(ctx context.Context, v *manifest.Verified, manifestURL string) error {
	k := a.kernel()
	if c := k.Current; c != nil && (k.Phase == state.PhaseSoaking || k.Phase == state.PhaseGood) {
		for i := range v.Revoked {
			r := &v.Revoked[i]
			if r.Matches(&manifest.Patch{Name: c.Name, Level: c.Level, Kernel: a.d.Host.Kernel, SHA256: c.SHA256}) {
				reason := "revoked by manifest version " + fmt.Sprint(v.Version)
				if r.Reason != "" {
					reason += ": " + r.Reason
				}
				return a.rollback(ctx, *c, reason, nil, true)
			}
		}
	}
	d := a.Wanted(v.Manifest)
	if d.Wanted == nil || k.Phase == state.PhaseSoaking || k.Phase == state.PhaseRollingBack {
		return nil
	}
	if c := k.Current; c != nil && d.Wanted.Level <= c.Level {
		return nil
	}
	p := fromManifest(d.Wanted)
	u, err := manifest.ResolveURL(manifestURL, d.Wanted)
	if err != nil {
		return err
	}
	p.URL = u
	return a.apply(ctx, p)
}

// apply takes p through download, install, enable into its soak.
func (a *Agent) apply(ctx context.Context, p state.PatchRecord) error {
	if err := p.Validate(); err != nil {
		return err
	}
	k := a.kernel()
	log := a.log().With(patchFields(&p)...)
	start := a.d.Now()
	k.Target = &p
	if err := a.setPhase(state.PhaseDownloading); err != nil {
		return err
	}
	a.crashpoint("apply:intent")
	rpm, err := a.download(ctx, &p)
	if err != nil {
		a.rec().Applied(false, 0)
		return a.abandon(fmt.Errorf("download %s: %w", p.ID(), err))
	}
	a.crashpoint("apply:downloaded")
	if info, err := klp.InspectRPM(rpm); err == nil {
		p.RPMName = info.Name
		k.Target = &p
	}
	if err := a.setPhase(state.PhaseEnabling); err != nil {
		return err
	}
	a.crashpoint("apply:enabling")
	res, err := a.d.Installer.Apply(ctx, rpm, klp.Want{KernelRelease: a.d.Host.Kernel, Name: p.Name, Level: p.Level, SHA256: p.SHA256, Size: p.Size})
	if err != nil {
		if errors.Is(err, klp.ErrStalled) {
			// A stall is not a regression (a task sat in a patched
			// function): the kernel is as before, and the next poll retries.
			log.Error("livepatch transition stalled; reversed, will retry at the next poll", zap.Error(err), logging.MessageID(MsgStalled))
		}
		a.rec().Applied(false, 0)
		return a.abandon(fmt.Errorf("apply %s: %w", p.ID(), err))
	}
	p.Applied = a.d.Now()
	k.Current, k.Target = &p, nil
	k.SoakUntil = p.Applied.Add(a.d.Soak)
	if err := a.setPhase(state.PhaseSoaking); err != nil {
		return err
	}
	a.crashpoint("apply:soaking")
	a.rec().Applied(true, a.d.Now().Sub(start))
	t := res.Timing
	log.Info(fmt.Sprintf("applied %s; soaking until %s", p.ID(), k.SoakUntil.UTC().Format(time.RFC3339)),
		logging.MessageID(MsgApplied), zap.Duration("VERIFY", t.Verify), zap.Duration("INSTALL", t.Install),
		zap.Duration("LOAD", t.Load), zap.Duration("TRANSITION", t.Transition), zap.Strings("REPLACED", res.Result.Replaced))
	return nil
}

// abandon records that an apply did not happen: the kernel still runs the
// current patch (a failed enable reverses itself), so the phase goes back
// to what Current says.
func (a *Agent) abandon(cause error) error {
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

// download fetches p's RPM into the state dir, checking size and sha256
// while streaming; a verified copy already there is reused. The copy is
// kept: it is what a reboot re-applies and a rollback steps back to.
func (a *Agent) download(ctx context.Context, p *state.PatchRecord) (string, error) {
	dst, err := a.d.Store.RPMPath(p)
	if err != nil {
		return "", err
	}
	if sum, size, err := klp.FileSHA256(dst); err == nil && sum == p.SHA256 && size == p.Size {
		return dst, nil
	}
	if p.URL == "" {
		return "", fmt.Errorf("%w: no URL for %s", ErrNoRPM, p.ID())
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL, nil)
	if err != nil {
		return "", err
	}
	resp, err := a.d.HTTP.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", p.URL, resp.Status)
	}
	tmp := dst + ".part"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, p.Size+1))
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

// Tick ends a soak whose time has come: the patch becomes good.
func (a *Agent) Tick() error {
	k := a.kernel()
	if k.Phase != state.PhaseSoaking || k.Current == nil || a.d.Now().Before(k.SoakUntil) {
		return nil
	}
	k.Current.Good = a.d.Now()
	k.MarkGood(*k.Current)
	if err := a.setPhase(state.PhaseGood); err != nil {
		return err
	}
	a.log().Info(fmt.Sprintf("%s passed its soak; now the good level", k.Current.ID()),
		append(patchFields(k.Current), logging.MessageID(MsgGood))...)
	return nil
}

// Rollback steps back from the current patch: to the previous good level
// if its RPM is at hand (atomic replace keeps the kernel patched), else to
// no patch. With block, the current patch is never applied here again.
func (a *Agent) Rollback(ctx context.Context, reason string, evidence []string, block bool) error {
	k := a.kernel()
	if k.Current == nil {
		return errors.New("rollback: no patch applied")
	}
	return a.rollback(ctx, *k.Current, reason, evidence, block)
}

func (a *Agent) rollback(ctx context.Context, from state.PatchRecord, reason string, evidence []string, block bool) error {
	k := a.kernel()
	if block {
		// Block first: whatever happens next, this patch is never re-applied.
		k.Block(from, reason, evidence, a.d.Now())
		a.log().Warn(fmt.Sprintf("blocked %s on this host: %s", from.ID(), reason),
			append(patchFields(&from), logging.MessageID(MsgBlocked), zap.Strings("EVIDENCE", evidence))...)
	}
	k.From, k.Target, k.Reason = &from, k.PreviousGood(from.Level), reason
	if err := a.setPhase(state.PhaseRollingBack); err != nil {
		return err
	}
	a.crashpoint("rollback:intent")
	return a.finishRollback(ctx)
}

// finishRollback completes a recorded rollback (also after a restart).
func (a *Agent) finishRollback(ctx context.Context) error {
	k := a.kernel()
	from, to := k.From, k.Target
	log := a.log().With(patchFields(from)...)
	start := a.d.Now()
	if to != nil {
		err := a.install(ctx, to)
		if errors.Is(err, ErrNoRPM) {
			log.Warn("previous good level not at hand; disabling instead", zap.Error(err))
			to = nil
		} else if err != nil {
			return fmt.Errorf("roll back %s to %s: %w", from.ID(), to.ID(), err)
		}
	}
	if to == nil {
		if err := a.d.Installer.Controller.Disable(ctx, from.Name); err != nil {
			return fmt.Errorf("roll back %s: %w", from.ID(), err)
		}
	}
	a.crashpoint("rollback:stepped-back")
	k.Current, k.Target, k.From = to, nil, nil
	ph := state.PhaseNone
	if to != nil {
		ph = state.PhaseGood
	}
	reason := k.Reason
	k.Reason = ""
	if err := a.setPhase(ph); err != nil {
		return err
	}
	a.crashpoint("rollback:done")
	dest := "no patch"
	if to != nil {
		dest = to.ID()
	}
	a.rec().RolledBack(reasonClass(reason))
	log.Warn(fmt.Sprintf("rolled back %s to %s in %s: %s", from.ID(), dest, a.d.Now().Sub(start).Round(time.Millisecond), reason),
		logging.MessageID(MsgRolledBack), zap.String("KLP_ROLLBACK_REASON", reason))
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
