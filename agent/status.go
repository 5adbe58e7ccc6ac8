package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/agent/window"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/internal/sanitize"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

// StatusSchema is the version of the status JSON (status --json and the
// daemon's snapshot): it goes up when a field is removed or changes its
// meaning, not when one is added. docs/status-json.md lists the fields.
const StatusSchema = 1

// Status is what `klp-agent status --json` prints (docs/status-json.md;
// agent/cli's golden test pins it).
type Status struct {
	Schema int `json:"schema"`
	// At is when this status was collected (by status, or by the daemon
	// for its snapshot); Check judges ages against it.
	At           time.Time          `json:"at"`
	Kernel       string             `json:"kernel"`
	Phase        state.Phase        `json:"phase"`
	Applied      *state.PatchRecord `json:"applied,omitempty"`
	Wanted       *manifest.Patch    `json:"wanted,omitempty"`
	WantedReason string             `json:"wanted_reason,omitempty"`
	SoakUntil    *time.Time         `json:"soak_until,omitempty"`
	SoakLeft     string             `json:"soak_left,omitempty"`
	// SoakLeftSeconds is SoakLeft in seconds (present while soaking).
	SoakLeftSeconds *int64              `json:"soak_left_seconds,omitempty"`
	Good            []state.PatchRecord `json:"good"`
	Blocked         []state.Blocked     `json:"blocked"`
	LastPoll        *state.Poll         `json:"last_poll,omitempty"`
	Livepatches     []LivepatchRow      `json:"livepatches"`
	Events          []state.Event       `json:"events"` // recent health events, newest last
	Problems        []string            `json:"problems,omitempty"`

	// AppliedEntry is the cached manifest's entry for the applied patch:
	// what it fixes (description, CVEs, advisory, annotations).
	AppliedEntry *manifest.Patch `json:"applied_entry,omitempty"`
	Manifest     *ManifestInfo   `json:"manifest,omitempty"`
	// TrustedRoot is the root of trust this host follows (nil with
	// keys_dir): the one the daemon persisted, or the provisioned one.
	TrustedRoot *RootInfo `json:"trusted_root,omitempty"`
	Controls    Controls  `json:"controls"`
	// Configured is false without manifest.url: nothing to poll.
	Configured bool `json:"configured"`
	// Daemon is the running daemon, from its status snapshot and the
	// state lock (nil: none known).
	Daemon *DaemonInfo `json:"daemon,omitempty"`
	// PollIntervalSeconds and PollJitter are manifest.poll_interval and
	// poll_jitter: Check judges the last good poll and the snapshot's age
	// against them.
	PollIntervalSeconds int64   `json:"poll_interval_seconds"`
	PollJitter          float64 `json:"poll_jitter"`
	// ConfigRefused is why `klp-agent run` refuses the configuration on
	// disk ("" when it accepts it).
	ConfigRefused string `json:"config_refused,omitempty"`
	// Answer is status --check's code and reason (Finish sets it).
	Answer *CheckResult `json:"check,omitempty"`
}

// CheckResult is status --check's answer.
type CheckResult struct {
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// ManifestInfo is the manifest in force (the cached one).
type ManifestInfo struct {
	Version     uint64            `json:"version"`
	Expires     time.Time         `json:"expires"`
	Expired     bool              `json:"expired"`
	Accepted    time.Time         `json:"accepted,omitzero"` // when this host first accepted this version
	Age         string            `json:"age,omitempty"`     // since then
	AgeSeconds  *int64            `json:"age_seconds,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// RootInfo is the trusted root's version and expiry.
type RootInfo struct {
	Version uint64    `json:"version"`
	Expires time.Time `json:"expires"`
	Expired bool      `json:"expired"`
}

// Controls are the operator's host controls and the kill switch in force.
type Controls struct {
	Hold    *state.Hold `json:"hold,omitempty"` // only while in force
	Pin     *state.Pin  `json:"pin,omitempty"`
	Windows string      `json:"windows"` // "any time" without apply.windows
	// MaintenanceWindows are apply.windows as configured ([]: any time).
	MaintenanceWindows []window.Spec `json:"maintenance_windows"`
	WindowOpen         bool          `json:"window_open"`
	NextWindow         time.Time     `json:"next_window,omitzero"`
	KillSwitch         string        `json:"kill_switch,omitempty"` // why, from the kernel command line
	KillSwitchOn       bool          `json:"kill_switch_on"`
	// Waiting says why a new level would not be applied now ("" when it
	// would).
	Waiting string `json:"waiting,omitempty"`
}

// DaemonInfo is what the daemon says of itself in its status snapshot.
type DaemonInfo struct {
	PID     int       `json:"pid"`
	Since   time.Time `json:"since"`
	Version string    `json:"version"`
	Written time.Time `json:"written"`
	Stopped time.Time `json:"stopped,omitzero"` // the daemon stopped cleanly then
	// Running: the daemon writing the snapshot says true until it stops;
	// a reader says whether it still runs (the state lock's holder where
	// it can see the lock, else the pid alive and no clean stop).
	Running bool `json:"running"`
	// LockHolder is the pid holding the state lock, when the reader could
	// see the lock (root).
	LockHolder int `json:"lock_holder,omitempty"`
}

// LivepatchRow is one livepatch in the kernel and whether the agent owns it.
type LivepatchRow struct {
	klp.Livepatch
	Owner string `json:"owner"` // "klp-agent" or "foreign"
}

// StatusInput is what status reads: nothing is written, nothing locked.
type StatusInput struct {
	Store *state.Store
	Sysfs *klp.Sysfs
	// Source reads the cached manifest (its version store read-only); nil:
	// no wanted patch is shown.
	Source *manifest.Source
	// Revocations is the revocations.json in force (the fast channel's
	// record, unexpired); nil: none.
	Revocations *manifest.Revocations
	Host        manifest.Host
	Now         time.Time
	// Root is the host's filesystem root (config paths.root), where an
	// enabled kpatch.service is looked for.
	Root string
	// Windows and KillSwitch are as the daemon has them.
	Windows    window.Set
	KillSwitch string
	// PollInterval and PollJitter are manifest.poll_interval and
	// poll_jitter.
	PollInterval time.Duration
	PollJitter   float64
}

// CollectStatus reads the recorded state, the kernel's livepatches and the
// cached manifest, and selects as the daemon does.
func CollectStatus(in StatusInput) (*Status, error) {
	s := &Status{Schema: StatusSchema, At: in.Now, Kernel: in.Host.Kernel, Good: []state.PatchRecord{}, Blocked: []state.Blocked{},
		Livepatches: []LivepatchRow{}, Events: []state.Event{},
		PollIntervalSeconds: int64(in.PollInterval / time.Second), PollJitter: in.PollJitter}
	// Reading needs no lock: the file is replaced atomically.
	st, err := in.Store.Load()
	if err != nil {
		return nil, err
	}
	k := st.Kernel(s.Kernel)
	s.Phase, s.Applied, s.LastPoll = k.Phase, k.Current, st.LastPoll
	s.Events = append(s.Events, st.Events...)
	s.Good = append(s.Good, k.Good...)
	s.Blocked = append(s.Blocked, k.Blocked...)
	if k.Phase == state.PhaseSoaking {
		s.SoakUntil = &k.SoakUntil
		left := max(k.SoakUntil.Sub(in.Now), 0).Round(time.Second)
		s.SoakLeft, s.SoakLeftSeconds = left.String(), seconds(left)
	}
	lps, err := in.Sysfs.List()
	if err != nil && !errors.Is(err, klp.ErrNoLivepatch) {
		s.Problems = append(s.Problems, err.Error())
	}
	for _, p := range lps {
		owner := "foreign"
		if k.Current != nil && p.Name == k.Current.Name {
			owner = "klp-agent"
		}
		s.Livepatches = append(s.Livepatches, LivepatchRow{Livepatch: p, Owner: owner})
	}
	if k.Current != nil && k.Phase != state.PhaseRollingBack && in.KillSwitch == "" {
		if p, err := in.Sysfs.Get(k.Current.Name); err != nil || !p.Enabled {
			s.Problems = append(s.Problems, fmt.Sprintf("recorded patch %s is not enabled in the kernel", k.Current.ID()))
		}
	}
	if in.Source != nil {
		switch err := in.Source.LoadCache(); {
		case err != nil:
			s.Problems = append(s.Problems, err.Error())
		case in.Source.Current() != nil:
			v := in.Source.Current()
			d := WantedWith(k, v.Manifest, in.Revocations, in.Host, in.Now)
			s.Wanted = d.Wanted
			for _, e := range d.Entries {
				if e.Chosen {
					s.WantedReason = e.Reason
				}
				if k.Current != nil && e.Patch.Name == k.Current.Name && e.Patch.Level == k.Current.Level && e.Patch.SHA256 == k.Current.SHA256 {
					s.AppliedEntry = e.Patch
				}
			}
			s.Manifest = &ManifestInfo{Version: v.Version, Expires: v.Expires, Expired: v.Expired(in.Now), Annotations: v.Annotations}
			if p := st.LastPoll; p != nil && p.ManifestVersion == v.Version && !p.ManifestSince.IsZero() {
				s.Manifest.Accepted = p.ManifestSince
				age := max(in.Now.Sub(p.ManifestSince), 0).Round(time.Second)
				s.Manifest.Age, s.Manifest.AgeSeconds = age.String(), seconds(age)
			}
		}
		if rt := in.Source.Trust.Root; rt != nil {
			r := rt.Current()
			s.TrustedRoot = &RootInfo{Version: r.Version, Expires: r.Expires, Expired: r.CheckExpiry(in.Now) != nil}
		}
		s.Configured = true
	}
	s.Controls = Controls{Pin: k.Pin, Windows: in.Windows.String(), MaintenanceWindows: []window.Spec{},
		WindowOpen: in.Windows.Open(in.Now), KillSwitch: in.KillSwitch, KillSwitchOn: in.KillSwitch != ""}
	for _, w := range in.Windows {
		s.Controls.MaintenanceWindows = append(s.Controls.MaintenanceWindows, w.Spec)
	}
	if st.Hold.Active(in.Now) {
		s.Controls.Hold = st.Hold
	}
	if !s.Controls.WindowOpen {
		s.Controls.NextWindow = in.Windows.NextOpen(in.Now)
	}
	gate := New(Deps{Now: func() time.Time { return in.Now }, Store: in.Store, Host: in.Host, Windows: in.Windows, KillSwitch: in.KillSwitch})
	gate.st = st
	s.Controls.Waiting, _ = gate.Gate()
	if w := KpatchServiceWarning(in.Root, in.Host.Kernel); w != "" {
		s.Problems = append(s.Problems, w)
	}
	if f := MetricsListenFailure(in.Store.Layout()); f != "" {
		s.Problems = append(s.Problems, f)
	}
	s.redactURLs()
	return s, nil
}

// RecordMetricsListen keeps the outcome of listening on metrics.listen
// for status: a failure (err) is written to the state dir, success or no
// listener clears it. The daemon's start decides; status only reads.
func RecordMetricsListen(l state.Layout, addr string, err error) error {
	path := l.MetricsListenFailure()
	if err == nil {
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return fmt.Errorf("clear metrics listener failure: %w", rerr)
		}
		return nil
	}
	msg := fmt.Sprintf("metrics listener on %s failed: %v (the daemon serves no metrics there; something else may)\n", addr, err)
	return atomicfile.WriteFile(path, []byte(msg), 0o600)
}

// MetricsListenFailure is the recorded listener failure ("" when none).
func MetricsListenFailure(l state.Layout) string {
	b, err := limitfile.Read(l.MetricsListenFailure(), 64<<10)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// KpatchServiceWarning names an enabled kpatch.service that would load
// modules at boot behind the agent's back ("" when there is none): it
// loads every module in /var/lib/kpatch/<krel>/ before the agent starts,
// blocked patches included.
func KpatchServiceWarning(root, krel string) string {
	s := klp.CheckKpatchService(root, krel)
	if !s.Conflicts() {
		return ""
	}
	return fmt.Sprintf("kpatch.service is enabled and loads %d module(s) at boot before klp-agent, blocked ones too (%s): run `systemctl disable kpatch.service`", len(s.Modules), strings.Join(s.Modules, ", "))
}

// seconds is d in whole seconds, for the JSON beside its prose.
func seconds(d time.Duration) *int64 {
	n := int64(d / time.Second)
	return &n
}

// Check codes, for `klp-agent status --check` (documented in its help text
// and the README). 0-3 keep their first meanings; 4-6 were added so that
// a stopped daemon, a host that never polled and a configuration run
// refuses no longer pass for "up to date".
const (
	CheckUpToDate      = 0 // the wanted level is applied and good, nothing waits
	CheckPending       = 1 // an update is pending, soaking, held, pinned below, outside a window, or the kill switch is on
	CheckDegraded      = 2 // a problem, a failed last poll, an expired manifest, a rollback in flight, or a block above the applied level
	CheckNotConfigured = 3 // no manifest.url, or nothing to read (no configuration or state, no status snapshot)
	CheckDaemonDown    = 4 // the daemon does not run, or its snapshot is older than StaleAfter
	CheckNotPolling    = 5 // no poll has succeeded yet, or the last good one is older than StaleAfter
	CheckConfigRefused = 6 // the configuration is one `klp-agent run` refuses (it would exit 78)
)

// StalePolls is how many poll intervals (with the most jitter) may pass
// without a good poll, or without the daemon refreshing its snapshot
// (it does after every poll), before status --check says so.
const StalePolls = 3

// StaleAfter is StalePolls poll intervals with the most jitter (0: the
// interval is not known, nothing is judged stale).
func (s *Status) StaleAfter() time.Duration {
	iv := time.Duration(s.PollIntervalSeconds) * time.Second
	return time.Duration(float64(StalePolls) * float64(iv) * (1 + s.PollJitter)).Round(time.Second)
}

// Finish stamps the status with its check code and reason, for --json and
// the snapshot. It is the status's output boundary: every string in it,
// much of it from outside (a mirror's reason phrase in the last poll's
// error, manifest strings, kernel evidence, netconsole senders), passes
// sanitize.Text first, so status, status --check and status.json never
// carry a terminal escape.
func (s *Status) Finish() {
	sanitize.Strings(s)
	code, why := s.Check()
	s.Answer = &CheckResult{Code: code, Reason: why}
}

// Check is the status as one code and the reason for it, judged at s.At.
func (s *Status) Check() (int, string) {
	if code, why := s.checkAgent(); code != CheckUpToDate {
		return code, why
	}
	return s.checkPatch()
}

// checkAgent is whether the agent can do its job at all: a configuration
// run accepts, a daemon that runs, polls that succeed.
func (s *Status) checkAgent() (int, string) {
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	stale := s.StaleAfter()
	switch d := s.Daemon; {
	case s.ConfigRefused != "":
		return CheckConfigRefused, "configuration refused: klp-agent run would not start: " + s.ConfigRefused
	case !s.Configured:
		return CheckNotConfigured, "not configured: manifest.url is not set"
	case d == nil:
		return CheckDaemonDown, "daemon not running: no process holds the state lock and there is no status snapshot"
	case !d.Running && !d.Stopped.IsZero():
		return CheckDaemonDown, "daemon not running: it stopped at " + ts(d.Stopped)
	case !d.Running:
		return CheckDaemonDown, fmt.Sprintf("daemon not running: pid %d is gone (its snapshot is from %s)", d.PID, ts(d.Written))
	case stale > 0 && !d.Written.IsZero() && s.At.Sub(d.Written) > stale:
		return CheckDaemonDown, fmt.Sprintf("daemon not responding: pid %d last wrote its status snapshot at %s, over %s ago (%d poll intervals)",
			d.PID, ts(d.Written), stale, StalePolls)
	}
	switch good := s.LastPoll.LastGood(); {
	case good.IsZero() && s.LastPoll == nil:
		return CheckNotPolling, "not polling: the daemon has not polled the manifest yet"
	case good.IsZero():
		return CheckNotPolling, "not polling: no poll has succeeded yet; the last one failed: " + s.LastPoll.Error
	case stale > 0 && s.At.Sub(good) > stale:
		why := fmt.Sprintf("not polling: the last good poll was at %s, over %s ago (%d poll intervals)", ts(good), stale, StalePolls)
		if !s.LastPoll.OK {
			why += "; the last one failed: " + s.LastPoll.Error
		}
		return CheckNotPolling, why
	}
	return CheckUpToDate, ""
}

// checkPatch is where the patch stands: codes 0-2.
func (s *Status) checkPatch() (int, string) {
	cur := 0
	if s.Applied != nil {
		cur = s.Applied.Level
	}
	switch {
	case len(s.Problems) > 0:
		return CheckDegraded, "degraded: " + s.Problems[0]
	case s.TrustedRoot != nil && s.TrustedRoot.Expired:
		return CheckDegraded, fmt.Sprintf("degraded: the trusted root version %d expired %s: no manifest is accepted until root.%d.json is published",
			s.TrustedRoot.Version, s.TrustedRoot.Expires.UTC().Format(time.RFC3339), s.TrustedRoot.Version+1)
	case s.LastPoll != nil && !s.LastPoll.OK:
		return CheckDegraded, "degraded: the last poll failed: " + s.LastPoll.Error
	case s.Manifest != nil && s.Manifest.Expired:
		return CheckDegraded, "degraded: the manifest in force expired " + s.Manifest.Expires.UTC().Format(time.RFC3339)
	case s.Phase == state.PhaseRollingBack:
		return CheckDegraded, "degraded: a rollback is in flight"
	}
	for _, b := range s.Blocked {
		if b.Level > cur {
			return CheckDegraded, fmt.Sprintf("degraded: %s is blocked on this host (%s)", b.ID(), b.Reason)
		}
	}
	switch {
	case s.Controls.KillSwitch != "":
		return CheckPending, "kill switch: " + s.Controls.KillSwitch
	case s.Wanted != nil && s.Wanted.Level > cur:
		why := fmt.Sprintf("update pending: %s wanted, level %d applied", s.Wanted.ID(), cur)
		if s.Controls.Waiting != "" {
			why += "; " + s.Controls.Waiting
		}
		return CheckPending, why
	case s.Phase != state.PhaseGood && s.Phase != state.PhaseNone && s.Phase != "":
		return CheckPending, "in progress: " + string(s.Phase)
	case s.Controls.Hold != nil:
		return CheckPending, s.Controls.Waiting // "held by ..."
	}
	return CheckUpToDate, "up to date"
}
