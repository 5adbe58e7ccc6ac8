package cli

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

func cmdCheckConfig(env *Env, args []string) error {
	fs := newFlags(env, "check-config", "check-config [--config PATH]")
	path := fs.String("config", config.DefaultPath, "main configuration file (drop-ins in config.d/ beside it)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	l, err := config.Load(*path)
	if err != nil {
		return err
	}
	var problems []string
	kr, err := manifest.LoadKeyring(l.Trust.KeysDir)
	switch {
	case err != nil:
		problems = append(problems, err.Error())
	case len(kr) < l.Trust.Threshold:
		problems = append(problems, fmt.Sprintf("trust.threshold %d but %s holds %d key(s)", l.Trust.Threshold, l.Trust.KeysDir, len(kr)))
	}
	if l.Manifest.URL == "" {
		problems = append(problems, "manifest.url is not set: the agent has nothing to poll")
	}
	if _, err := l.HostID(); err != nil {
		problems = append(problems, err.Error())
	}
	y, err := l.YAML()
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "# effective configuration from: %s\n%s", strings.Join(l.Files, ", "), y)
	fmt.Fprintf(env.Stdout, "# trusted keys (%d): %s\n", len(kr), strings.Join(kr.IDs(), ", "))
	if len(problems) > 0 {
		return fmt.Errorf("%w:\n  %s", config.ErrInvalid, strings.Join(problems, "\n  "))
	}
	return nil
}

// hostContext is what host-side commands share: config, trust, identity.
type hostContext struct {
	cfg   *config.Loaded
	trust manifest.Trust
	host  manifest.Host
}

func loadHost(path string) (*hostContext, error) {
	l, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	kr, err := manifest.LoadKeyring(l.Trust.KeysDir)
	if err != nil {
		return nil, err
	}
	id, err := l.HostID()
	if err != nil {
		return nil, err
	}
	krel, err := klp.KernelRelease(l.Paths.Root)
	if err != nil {
		return nil, err
	}
	return &hostContext{
		cfg:   l,
		trust: manifest.Trust{Keys: kr, Threshold: l.Trust.Threshold, MaxSize: int(l.Manifest.MaxSize)},
		host:  manifest.Host{ID: id, Tier: l.Host.Tier, Kernel: krel},
	}, nil
}

func (h *hostContext) versionStore() *manifest.FileVersionStore {
	return &manifest.FileVersionStore{Path: filepath.Join(h.cfg.Paths.StateDir, "manifest-version.json")}
}

// readOnlyStore checks against the host's record but never writes it:
// explain must not change what the daemon will accept.
type readOnlyStore struct{ manifest.VersionStore }

func (readOnlyStore) Record(uint64, string) error { return nil }

func cmdExplain(env *Env, args []string) error {
	fs := newFlags(env, "explain", "explain [--config PATH] [--manifest FILE] [--at TIME]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	file := fs.String("manifest", "", "signed envelope file to explain instead of fetching manifest.url")
	at := fs.String("at", "", "evaluate the rollout at this RFC 3339 time instead of now")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	now := env.Now()
	if *at != "" {
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return fmt.Errorf("%w: --at: %w", errUsage, err)
		}
		now = t
	}
	h, err := loadHost(*path)
	if err != nil {
		return err
	}
	var envelope []byte
	source := *file
	if *file != "" {
		envelope, err = readFileLimited(*file, int64(h.cfg.Manifest.MaxSize))
		if err != nil {
			return err
		}
	} else {
		if h.cfg.Manifest.URL == "" {
			return fmt.Errorf("manifest.url is not set; pass --manifest FILE")
		}
		// Retries and their reasons go to stderr, so a slow explain says why.
		log, err := logging.New(logging.Options{Level: h.cfg.Log.Level, Format: logging.FormatConsole, Stderr: env.Stderr})
		if err != nil {
			return err
		}
		f, err := manifest.NewFetcher(manifest.FetcherConfig{
			URL: h.cfg.Manifest.URL, CABundle: h.cfg.Manifest.CABundle, Timeout: h.cfg.Manifest.Timeout,
			Retries: h.cfg.Manifest.Retries, MaxSize: int64(h.cfg.Manifest.MaxSize),
			Logger: logging.RetryableLogger(log),
		})
		if err != nil {
			return err
		}
		res, err := f.Fetch(env.Ctx, manifest.Validators{})
		if err != nil {
			return err
		}
		envelope, source = res.Body, h.cfg.Manifest.URL
	}
	v, err := h.trust.Verify(envelope, now, readOnlyStore{h.versionStore()})
	if err != nil {
		return fmt.Errorf("manifest %s rejected: %w", source, err)
	}
	d := manifest.Select(v.Manifest, h.host, now, nil)
	writeDecision(env, source, v, d)
	return nil
}

func writeDecision(env *Env, source string, v *manifest.Verified, d manifest.Decision) {
	w := env.Stdout
	fmt.Fprintf(w, "host:     id %s, tier %q, kernel %s\n", d.Host.ID, d.Host.Tier, d.Host.Kernel)
	fmt.Fprintf(w, "manifest: %s version %d, expires %s, signed by %d key(s)\n", source, v.Version,
		v.Expires.UTC().Format(time.RFC3339), len(v.KeyIDs))
	if d.Wanted != nil {
		fmt.Fprintf(w, "wanted:   %s level %d (%s)\n", d.Wanted.Name, d.Wanted.Level, d.Wanted.URL)
	} else {
		fmt.Fprintf(w, "wanted:   no patch for %s\n", d.Host.Kernel)
	}
	fmt.Fprintf(w, "entries:  %d for this kernel, %d for other kernels\n\n", len(d.Entries), d.OtherKernels)
	if len(d.Entries) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LEVEL\tNAME\tCHOSEN\tREASON")
	for _, e := range d.Entries {
		mark := "-"
		if e.Chosen {
			mark = "yes"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", e.Patch.Level, e.Patch.Name, mark, e.Reason)
	}
	tw.Flush()
}

// cmdReload is the unit's ExecReload: it refuses a configuration the daemon
// would refuse (so `systemctl reload` fails loudly instead of the daemon
// quietly keeping the old one), then signals the daemon. It needs no kill(1),
// which a minimal root file system may lack.
func cmdReload(env *Env, args []string) error {
	fs := newFlags(env, "reload", "reload --pid PID [--config PATH]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	pid := fs.Int("pid", 0, "the daemon's process id ($MAINPID in the unit)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *pid <= 1 {
		return fmt.Errorf("%w: --pid of the running daemon is required", errUsage)
	}
	h, err := loadHost(*path)
	if err != nil {
		return fmt.Errorf("configuration refused, the daemon keeps its current one: %w", err)
	}
	if n := len(h.trust.Keys); n < h.trust.Threshold {
		return fmt.Errorf("configuration refused: trust.threshold %d but %s holds %d key(s)", h.trust.Threshold, h.cfg.Trust.KeysDir, n)
	}
	if err := syscall.Kill(*pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("signal daemon pid %d: %w", *pid, err)
	}
	fmt.Fprintf(env.Stdout, "configuration from %s valid; daemon %d reloading\n", strings.Join(h.cfg.Files, ", "), *pid)
	return nil
}
