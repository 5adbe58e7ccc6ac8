// Package daemon is the agent's composition root: it turns a configuration
// into the parts the agent acts through (the one HTTP client, the manifest
// source, the klp installer, the health monitor, metrics, the journal),
// runs the loop under systemd (notify, watchdog, signals) and supervises
// reloads. Commands that look at or act on the host without the daemon
// (status, rollback, explain) build their parts here too.
package daemon

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

// Version is the agent's version, for the user agent and build_info; set
// by the CLI from its build-time version.
var Version = "dev"

// Host is one configuration read and resolved: the settings, the trusted
// keys and who this host is for selection.
type Host struct {
	Config *config.Loaded
	Trust  manifest.Trust
	Host   manifest.Host
}

// LoadHost reads the configuration at path (and its drop-ins), the trusted
// keys, the host id and the running kernel release. Errors in the first
// three are ErrConfig.
func LoadHost(path string) (*Host, error) {
	l, err := config.Load(path)
	if err != nil {
		return nil, asConfigError(err)
	}
	trust, err := loadTrust(l)
	if err != nil {
		return nil, asConfigError(err)
	}
	id, err := l.HostID()
	if err != nil {
		return nil, asConfigError(err)
	}
	krel, err := klp.KernelRelease(l.Paths.Root)
	if err != nil {
		return nil, err
	}
	return &Host{
		Config: l,
		Trust:  trust,
		Host:   manifest.Host{ID: id, Tier: l.Host.Tier, Kernel: krel},
	}, nil
}

// ErrThreshold is a keyring with fewer keys than the threshold needs.
var ErrThreshold = errors.New("too few trusted keys for trust.threshold")

// loadTrust is the root of trust (trust.root: keys_dir and threshold are
// not used) or, without one, the keys dir.
func loadTrust(l *config.Loaded) (manifest.Trust, error) {
	t := manifest.Trust{MaxSize: int(l.Manifest.MaxSize), MaxExpiry: l.Manifest.MaxExpiry}
	if l.Trust.Root != "" {
		if err := checkFile("trust.root", l.Trust.Root, publicFile); err != nil {
			return t, err
		}
		b, err := limitfile.Read(l.Trust.Root, manifest.RootMaxSize)
		if err != nil {
			return t, fmt.Errorf("trust.root: %w", err)
		}
		t.Root, err = manifest.LoadRootTrust(b, state.Layout{Dir: l.Paths.StateDir}.TrustedRoot())
		if err != nil {
			return t, fmt.Errorf("trust.root %s: %w", l.Trust.Root, err)
		}
		return t, nil
	}
	if err := checkKeysDir(l.Trust.KeysDir); err != nil {
		return t, err
	}
	kr, err := manifest.LoadKeyring(l.Trust.KeysDir)
	if err != nil {
		return t, err
	}
	t.Keys, t.Threshold = kr, l.Trust.Threshold
	return t, nil
}

// CheckTrust refuses a keyring that can never meet the threshold (an
// ErrConfig; a root of trust was checked when it was loaded).
func (h *Host) CheckTrust() error {
	if h.Trust.Root != nil {
		return nil
	}
	if n := len(h.Trust.Keys); n < h.Trust.Threshold {
		return configError{fmt.Errorf("%w: trust.threshold %d but %s holds %d key(s)", ErrThreshold, h.Trust.Threshold, h.Config.Trust.KeysDir, n)}
	}
	return nil
}

// StateDirOwner is the uid the state directory must belong to: root, as
// the agent runs as root and installs what it finds there. A variable so
// tests running as root can still see the refusal.
var StateDirOwner = 0

// ErrUntrustedStateDir is a state directory another user could change: it
// holds the RPMs the agent installs and the record of what is blocked.
var ErrUntrustedStateDir = errors.New("state directory is not trusted")

// CheckStateDir creates paths.state_dir (0700) if missing and refuses one
// that is a symlink, not a directory, not owned by StateDirOwner, or
// writable by group or others (an ErrConfig: the operator must fix it).
func (h *Host) CheckStateDir() error {
	return asConfigError(checkStateDir(h.Config.Paths.StateDir, StateDirOwner))
}

func checkStateDir(dir string, uid int) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	return inspectStateDir(dir, uid, false)
}

// inspectStateDir refuses an untrusted state directory without creating
// it; missingOK: one that does not exist yet passes (run creates it 0700).
func inspectStateDir(dir string, uid int, missingOK bool) error {
	fi, err := os.Lstat(dir)
	if missingOK && errors.Is(err, fs.ErrNotExist) {
		return checkAncestors(dir, uid)
	}
	if err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	if why := untrusted(fi, uid); why != "" {
		return fmt.Errorf("%w: paths.state_dir %s %s", ErrUntrustedStateDir, dir, why)
	}
	return checkAncestors(dir, uid)
}

// checkAncestors refuses a state directory under a directory another user
// could change (sshd's StrictModes rule): whoever can rename entries in an
// ancestor can swap the whole tree under the agent. Each existing ancestor,
// as written and as its symlinks resolve, must be owned by root or uid and
// not writable by group or others, unless it is sticky and root's (/tmp:
// others cannot rename what they do not own there).
func checkAncestors(dir string, uid int) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	paths := ancestors(filepath.Dir(abs))
	if real, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil && real != filepath.Dir(abs) {
		paths = append(paths, ancestors(real)...)
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // created 0755 by root
		}
		if err != nil {
			return fmt.Errorf("state dir %s: ancestor %s: %w", dir, p, err)
		}
		if why := untrustedAncestor(fi, uid); why != "" {
			return fmt.Errorf("%w: paths.state_dir %s is under %s, which %s", ErrUntrustedStateDir, dir, p, why)
		}
	}
	return nil
}

// ancestors is p and every directory above it, up to /.
func ancestors(p string) []string {
	var out []string
	for {
		out = append(out, p)
		up := filepath.Dir(p)
		if up == p {
			return out
		}
		p = up
	}
}

// untrustedAncestor says why fi is no safe ancestor ("" when it is).
func untrustedAncestor(fi fs.FileInfo, uid int) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return "is not a directory"
	case !ok:
		return "has no owner information"
	case st.Uid != 0 && int(st.Uid) != uid:
		return fmt.Sprintf("is owned by uid %d, not root (chown root)", st.Uid)
	case fi.Mode().Perm()&0o022 != 0 && (fi.Mode()&fs.ModeSticky == 0 || st.Uid != 0):
		return fmt.Sprintf("has mode %04o, writable by group or others and not sticky (chmod go-w)", fi.Mode().Perm())
	}
	return ""
}

// CheckStart is everything `klp-agent run` refuses at start with EX_CONFIG
// once the configuration is loaded (LoadHost), in the order run meets it,
// and without side effects (the state directory is not created):
// unconfigured, too few keys, an untrusted state directory, a logger, CA
// bundle, client certificate or manifest URL that cannot be set up. Run,
// check-config and status --check share it, so none of them passes what
// run refuses. Every error is an ErrConfig.
func (h *Host) CheckStart(configPath string) error {
	if err := h.checkConfigured(configPath); err != nil {
		return err
	}
	if err := h.CheckTrust(); err != nil {
		return err
	}
	if err := inspectStateDir(h.Config.Paths.StateDir, StateDirOwner, true); err != nil {
		return asConfigError(err)
	}
	if _, err := h.Logger(io.Discard); err != nil {
		return asConfigError(err)
	}
	client, err := h.Client(zap.NewNop())
	if err != nil {
		return asConfigError(err)
	}
	if _, err := h.Source(client, true); err != nil {
		return asConfigError(err)
	}
	return nil
}

// CheckStartAt is CheckStart for the configuration at path, LoadHost
// included (its errors are what run exits with too).
func CheckStartAt(path string) error {
	h, err := LoadHost(path)
	if err != nil {
		return err
	}
	return h.CheckStart(path)
}

// untrusted says why fi is no safe state directory ("" when it is).
func untrusted(fi fs.FileInfo, uid int) string {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return "is a symlink (point paths.state_dir at the real directory)"
	case !fi.IsDir():
		return "is not a directory"
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Sprintf("has mode %04o, writable by group or others (chmod go-w)", fi.Mode().Perm())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "has no owner information"
	}
	if int(st.Uid) != uid {
		return fmt.Sprintf("is owned by uid %d, not %d (chown %d)", st.Uid, uid, uid)
	}
	return ""
}

// Problems lists what keeps the configuration at path (loaded as l) from
// running a useful daemon, for check-config: first what run refuses
// (CheckStartAt, in run's own words), then what run accepts but should
// not be left so (an expired root of trust, no manifest.url).
func Problems(path string, l *config.Loaded) (manifest.Keyring, []string) {
	var problems []string
	var kr manifest.Keyring
	if l.Trust.Root != "" {
		if t, err := loadTrust(l); err == nil {
			r := t.Root.Current()
			kr = r.ManifestTrust(t).Keys
			if err := r.CheckExpiry(time.Now()); err != nil {
				problems = append(problems, err.Error())
			}
		}
	} else {
		kr, _ = manifest.LoadKeyring(l.Trust.KeysDir)
	}
	err := CheckStartAt(path)
	if err != nil {
		code := 1
		if errors.Is(err, ErrConfig) {
			code = 78
		}
		problems = append(problems, fmt.Sprintf("klp-agent run refuses to start (exit %d): %v", code, err))
	}
	if l.Manifest.URL == "" && !errors.Is(err, ErrNotConfigured) {
		problems = append(problems, "manifest.url is not set: the agent has nothing to poll")
	}
	return kr, problems
}

// Layout is the state directory's file names.
func (h *Host) Layout() state.Layout { return state.Layout{Dir: h.Config.Paths.StateDir} }

// Store is the state file store (not locked).
func (h *Host) Store() *state.Store { return &state.Store{Dir: h.Config.Paths.StateDir} }

// Logger builds the configured logger writing to stderr.
func (h *Host) Logger(stderr io.Writer) (*zap.Logger, error) {
	return logging.New(logging.Options{Level: h.Config.Log.Level, Format: h.Config.Log.Format, Stderr: stderr})
}

// Client is the one HTTP client, for manifests and RPMs.
func (h *Host) Client(log *zap.Logger) (*manifest.Client, error) {
	m := h.Config.Manifest
	if m.ClientKey != "" {
		if err := checkFile("manifest.client_key", m.ClientKey, secretFile); err != nil {
			return nil, err
		}
	}
	return manifest.NewClient(manifest.ClientConfig{CABundle: m.CABundle, ClientCert: m.ClientCert, ClientKey: m.ClientKey,
		Retries: m.Retries, IdleTimeout: m.IdleTimeout,
		UserAgent: "klp-agent/" + Version, Logger: logging.RetryableLogger(log)})
}

// Source is the manifest source over client; nil without manifest.url.
// A read-only one checks the anti-rollback record but never moves it.
func (h *Host) Source(client *manifest.Client, readOnly bool) (*manifest.Source, error) {
	m := h.Config.Manifest
	if m.URL == "" {
		return nil, nil
	}
	l := h.Layout()
	url, floor := m.URL, l.ManifestVersion()
	if m.ShardURL != "" {
		// Only this kernel's shard, with its own version floor.
		var err error
		if url, err = manifest.ShardURL(m.ShardURL, h.Host.Kernel); err != nil {
			return nil, fmt.Errorf("manifest.shard_url: %w", err)
		}
		if floor, err = manifest.ShardVersionFile(l.Dir, h.Host.Kernel); err != nil {
			return nil, err
		}
	}
	f, err := manifest.NewFetcher(manifest.FetcherConfig{URL: url, Timeout: m.Timeout, MaxSize: int64(m.MaxSize), Client: client})
	if err != nil {
		return nil, err
	}
	var vs manifest.VersionStore = &manifest.FileVersionStore{Path: floor}
	trust := h.Trust
	if readOnly {
		vs = manifest.ReadOnly(vs)
		if trust.Root != nil {
			trust.Root = trust.Root.ReadOnly()
		}
	}
	return &manifest.Source{Fetcher: f, Trust: trust, Store: vs, Kernel: h.Host.Kernel,
		Shard: m.ShardURL != "", RootURL: m.URL,
		Cache: manifest.CacheFiles{Envelope: l.ManifestEnvelope(), Validators: l.ManifestValidators()}}, nil
}

// Revocations is the fast revocation channel over client: nil without
// manifest.url or with manifest.revocations_interval 0. Its URL is
// manifest.revocations_url, else revocations.json beside the manifest;
// it trusts the root's revoke and manifest roles (or the keys dir).
func (h *Host) Revocations(client *manifest.Client) (*manifest.RevocationChannel, error) {
	m := h.Config.Manifest
	if m.URL == "" || m.RevocationsInterval <= 0 {
		return nil, nil
	}
	loc, err := manifest.Location(m.URL)
	if err != nil {
		return nil, fmt.Errorf("manifest.url: %w", err)
	}
	u, err := manifest.RevocationsURL(loc)
	if m.RevocationsURL != "" {
		u, err = manifest.Location(m.RevocationsURL)
	}
	if err != nil {
		return nil, fmt.Errorf("manifest.revocations_url: %w", err)
	}
	t := manifest.RevocationsTrust{Root: h.Trust.Root, Keys: h.Trust.Keys, Threshold: h.Trust.Threshold, MaxExpiry: m.MaxExpiry}
	return &manifest.RevocationChannel{URL: u, Client: client, Trust: t, Timeout: m.Timeout,
		Store: &manifest.RevocationsStore{Path: h.Layout().Revocations()}}, nil
}

// Kernel is what the agent drives: sysfs and procfs under a root, the
// module loader and the kernel's log.
type Kernel struct {
	FS      klp.FS
	Modules klp.Modules
	Log     klp.KernelLog
}

// simKernel, when set, is the kernel under paths.root instead of the
// running one. The product leaves it nil; the klp_simkernel build tag (the
// fleet test's simulated hosts, e2e/fleet_test.go) sets it.
var simKernel func(root string) (Kernel, error)

// kernel is the running kernel's interfaces under paths.root, or the
// simulated one of a klp_simkernel build.
func (h *Host) kernel() Kernel {
	root := h.Config.Paths.Root
	if simKernel != nil {
		k, err := simKernel(root)
		if err != nil {
			panic("simulated kernel: " + err.Error()) // a test build's set-up error
		}
		return k
	}
	return Kernel{FS: klp.OSFS{Root: root}, Modules: klp.KernelModules{}, Log: klp.KmsgLog{Path: filepath.Join(root, "dev/kmsg")}}
}

// Sysfs is the kernel's livepatch interface under paths.root.
func (h *Host) Sysfs() *klp.Sysfs { return &klp.Sysfs{FS: h.kernel().FS} }

// Installer is rpm, the module loader and sysfs as configured.
func (h *Host) Installer() *klp.Installer {
	c := h.Config
	k := h.kernel()
	return &klp.Installer{
		RPM: &klp.RPM{Runner: klp.ExecRunner{}, Root: c.Paths.Root, NoDeps: c.Apply.RPMNoDeps,
			Keyring: c.Apply.RPMKeyring, DBPath: c.Apply.RPMDBPath, Scripts: c.Apply.RPMScripts},
		Controller: &klp.Controller{Sysfs: &klp.Sysfs{FS: k.FS}, Modules: k.Modules, Log: k.Log,
			Opts: klp.Options{TransitionTimeout: c.Apply.TransitionTimeout, ForceOnStall: c.Apply.ForceOnStall},
			Hook: crashpoint},
		Root: c.Paths.Root, CheckSig: c.Apply.RequireSignature, Hook: crashpoint,
	}
}

// Scanners are the boot guard's crash records, one entry per configured
// kind (a new kind is one more line here).
func (h *Host) Scanners() []health.Scanner {
	c := h.Config
	var out []health.Scanner
	add := func(dir string, sc func(dir string) health.Scanner) {
		if dir != "" {
			out = append(out, sc(filepath.Join(c.Paths.Root, dir)))
		}
	}
	// The capture kernel is done before this host boots again: a
	// *-incomplete file left in its own /var/crash is a failed capture
	// (reported as partial), never one still being written.
	add(c.Health.KdumpDir, func(d string) health.Scanner { return health.KdumpScanner{Dir: d, Settle: time.Nanosecond} })
	add(c.Health.PstoreDir, func(d string) health.Scanner {
		return health.PstoreScanner{Dir: d, Booted: health.BootTime(time.Now())}
	})
	return out
}

// Settings are the agent's reloadable parts for this configuration.
func (h *Host) Settings(log *zap.Logger, client *manifest.Client) (agent.Settings, error) {
	src, err := h.Source(client, false)
	if err != nil {
		return agent.Settings{}, err
	}
	if src != nil {
		src.OnRootUpdate = func(u *manifest.RootUpdate) { logRootUpdate(log, u) }
		if rt := src.Trust.Root; rt != nil {
			// Before any walk: a re-provisioned trust.root replaces the
			// persisted chain (callers hold the state lock).
			restart, err := rt.Settle(src.Store)
			if err != nil {
				return agent.Settings{}, err
			}
			logRootRestart(log, restart)
		}
	}
	rev, err := h.Revocations(client)
	if err != nil {
		return agent.Settings{}, err
	}
	return agent.Settings{Source: src, Revocations: rev, Downloader: client, Host: h.Host, Installer: h.Installer(),
		Soak: h.Config.Apply.Soak, Scanners: h.Scanners(), Log: log, Windows: h.Config.Apply.MaintenanceWindows()}, nil
}

// Agent builds the agent on store (locked by the caller).
func (h *Host) Agent(log *zap.Logger, store *state.Store, rec agent.Recorder) (*agent.Agent, error) {
	client, err := h.Client(log)
	if err != nil {
		return nil, err
	}
	s, err := h.Settings(log, client)
	if err != nil {
		return nil, err
	}
	root := h.Config.Paths.Root
	return agent.New(agent.Deps{Log: log, Store: store, Source: s.Source, Revocations: s.Revocations, Downloader: s.Downloader, Host: s.Host,
		Installer: s.Installer, Soak: s.Soak, Scanners: s.Scanners, Recorder: rec, Windows: s.Windows, Crashpoint: crashpoint,
		KillSwitch: h.KillSwitch(log), BootID: func() (string, error) { return agent.BootID(root) }}), nil
}

// KillSwitch is why this boot must apply nothing ("" when it may): the
// kernel command line under paths.root. An unreadable command line is
// logged and does not stop the agent.
func (h *Host) KillSwitch(log *zap.Logger) string {
	why, err := agent.KillSwitch(h.Config.Paths.Root)
	if err != nil && log != nil {
		log.Warn(err.Error() + "; the kill switch cannot be read")
	}
	return why
}

// LoopConfig is the loop's pacing and policy.
func (h *Host) LoopConfig() agent.LoopConfig {
	m := h.Config.Manifest
	return agent.LoopConfig{Interval: m.PollInterval, Jitter: m.PollJitter, RevocationsInterval: m.RevocationsInterval, Policy: h.Config.Health.Policy,
		NetconsoleActs: h.Config.Health.Netconsole.Acts}
}

// MonitorOptions are the health sources of this configuration.
func (h *Host) MonitorOptions() health.MonitorOptions {
	c := h.Config.Health
	return health.MonitorOptions{Root: h.Config.Paths.Root, Release: h.Host.Kernel, Kmsg: c.Kmsg,
		Netconsole: c.Netconsole.Listen, NetconsoleAllow: c.Netconsole.AllowPrefixes(), NetconsoleRelease: c.Netconsole.RequireRelease,
		Taint: c.Taint, TaintInterval: c.TaintInterval,
		Command: health.Command{Argv: c.Command.Argv, Timeout: c.Command.Timeout, Every: c.Command.Interval, Failures: c.Command.Failures}}
}

// StatusInput is what `status` reads for this host at now.
func (h *Host) StatusInput(now time.Time) (agent.StatusInput, error) {
	in := agent.StatusInput{Store: h.Store(), Sysfs: h.Sysfs(), Host: h.Host, Now: now, Root: h.Config.Paths.Root,
		Windows: h.Config.Apply.MaintenanceWindows(), KillSwitch: h.KillSwitch(nil),
		PollInterval: h.Config.Manifest.PollInterval, PollJitter: h.Config.Manifest.PollJitter}
	client, err := manifest.NewClient(manifest.ClientConfig{})
	if err != nil {
		return in, err
	}
	in.Source, err = h.Source(client, true)
	if err != nil {
		return in, err
	}
	// The channel's record as the daemon keeps it (read, never written);
	// a damaged one is the daemon's to report (each channel poll says so).
	if rev, err := (&manifest.RevocationsStore{Path: h.Layout().Revocations()}).Last(); err == nil && rev != nil && !rev.Expired(now) {
		in.Revocations = rev
	}
	return in, nil
}
