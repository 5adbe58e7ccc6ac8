package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/agent/metrics"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

// built is a daemon assembled from one configuration.
type built struct {
	cfg    *config.Loaded
	log    *zap.Logger
	daemon *agent.Daemon
}

// build assembles the agent from the configuration; the state lock is
// taken separately, once, by the caller.
func build(path string, store *state.Store, stderr *os.File, rec agent.Recorder) (*built, error) {
	h, err := loadHost(path)
	if err != nil {
		return nil, err
	}
	l, kr := h.cfg, h.trust.Keys
	log, err := logging.New(logging.Options{Level: l.Log.Level, Format: l.Log.Format, Stderr: stderr})
	if err != nil {
		return nil, err
	}
	if len(kr) < l.Trust.Threshold {
		return nil, fmt.Errorf("trust.threshold %d but %s holds %d key(s)", l.Trust.Threshold, l.Trust.KeysDir, len(kr))
	}
	store.Dir = l.Paths.StateDir
	var src *manifest.Source
	if l.Manifest.URL != "" {
		f, err := manifest.NewFetcher(manifest.FetcherConfig{
			URL: l.Manifest.URL, CABundle: l.Manifest.CABundle, Timeout: l.Manifest.Timeout,
			Retries: l.Manifest.Retries, MaxSize: int64(l.Manifest.MaxSize), UserAgent: "klp-agent/" + Version,
			Logger: logging.RetryableLogger(log),
		})
		if err != nil {
			return nil, err
		}
		src = &manifest.Source{
			Fetcher: f, Trust: h.trust,
			Store:    h.versionStore(),
			CacheDir: l.Paths.StateDir,
			Kernel:   h.host.Kernel,
		}
	} else {
		log.Warn("manifest.url is not set: re-applying the recorded patch only, no polling")
	}
	ctrl := &klp.Controller{
		Sysfs:   &klp.Sysfs{FS: klp.OSFS{Root: l.Paths.Root}},
		Modules: klp.KernelModules{},
		Opts:    klp.Options{TransitionTimeout: l.Apply.TransitionTimeout, ForceOnStall: l.Apply.ForceOnStall},
	}
	a := agent.New(agent.Deps{
		Log:    log,
		Store:  store,
		Source: src,
		Host:   h.host,
		Installer: &klp.Installer{
			RPM: &klp.RPM{Runner: klp.ExecRunner{}, Root: l.Paths.Root, NoDeps: l.Apply.RPMNoDeps,
				Keyring: l.Apply.RPMKeyring, DBPath: l.Apply.RPMDBPath},
			Controller: ctrl, Root: l.Paths.Root, CheckSig: l.Apply.RequireSignature,
		},
		Soak:       l.Apply.Soak,
		BootID:     func() (string, error) { return agent.BootID(l.Paths.Root) },
		CrashSince: crashSince(l),
		Recorder:   rec,
	})
	return &built{cfg: l, log: log, daemon: &agent.Daemon{
		Agent: a, Source: src, ManifestURL: l.Manifest.URL,
		Interval: l.Manifest.PollInterval, Jitter: l.Manifest.PollJitter,
	}}, nil
}

// crashSince reports kdump dumps written after t as block evidence: the
// dump's cause, then its trace.
func crashSince(l *config.Loaded) func(time.Time) ([]string, error) {
	if l.Health.KdumpDir == "" {
		return nil
	}
	// The capture kernel is done before this host boots again: a
	// *-incomplete file left in its own /var/crash is a failed capture
	// (reported as partial), never one still being written.
	sc := health.KdumpScanner{Dir: filepath.Join(l.Paths.Root, l.Health.KdumpDir), Settle: time.Nanosecond}
	return func(t time.Time) ([]string, error) {
		dumps, err := sc.Since(t)
		var ev []string
		for _, d := range dumps {
			ev = append(ev, d.Evidence())
			if c := d.Cause(); c != nil {
				ev = append(ev, c.Lines[:min(len(c.Lines), 30)]...)
			}
		}
		return ev, err
	}
}

// healthMonitor runs the crash-signal sources of one configuration. A
// source that cannot start (no /dev/kmsg in a container, a port in use)
// is logged and the agent runs on without it.
type healthMonitor struct {
	Events <-chan health.Event
	key    string // the settings the sources were started with
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// sourcesKey is what, in a configuration, the running sources depend on
// (the policy and kdump_dir are read afresh by the daemon).
func sourcesKey(cfg *config.Loaded, host string) string {
	h := cfg.Health
	b, _ := json.Marshal([]any{h.Kmsg, h.Netconsole, h.Taint, h.TaintInterval, h.Command, cfg.Paths.Root, host})
	return string(b)
}

// startHealth starts the configured sources and merges their events.
func startHealth(parent context.Context, cfg *config.Loaded, host string, log *zap.Logger) *healthMonitor {
	ctx, cancel := context.WithCancel(parent)
	m := &healthMonitor{key: sourcesKey(cfg, host), cancel: cancel}
	h := cfg.Health
	out := make(chan health.Event, 64)
	m.Events = out
	// The log's reports explain the taint bits they set (the same oops).
	known := &health.Explained{Within: h.TaintInterval + 10*time.Second}
	// records runs a record source into its own classifier.
	records := func(name string, run func(context.Context, chan<- health.Record) error) {
		recs := make(chan health.Record, 256)
		m.wg.Go(func() {
			if err := run(ctx, recs); err != nil {
				log.Error(name + " stopped: " + err.Error())
			}
			close(recs)
		})
		m.wg.Go(func() { classify(ctx, recs, out, known.Report) })
	}
	if h.Kmsg {
		if k, err := health.OpenKmsg(filepath.Join(cfg.Paths.Root, "dev/kmsg")); err != nil {
			log.Error("kernel log monitor disabled: " + err.Error())
		} else {
			records("kernel log monitor", k.Follow)
		}
	}
	if h.Netconsole != "" {
		nr := &health.NetconsoleReceiver{Addr: h.Netconsole, Release: host}
		if err := nr.Listen(); err != nil {
			log.Error("netconsole receiver disabled: " + err.Error())
		} else {
			records("netconsole receiver", nr.Run)
			log.Info("netconsole receiver on " + nr.LocalAddr().String())
		}
	}
	if h.Taint {
		m.wg.Go(func() {
			w := health.TaintWatcher{Path: filepath.Join(cfg.Paths.Root, "proc/sys/kernel/tainted"), Every: h.TaintInterval,
				Skip: func(ev health.Event) bool {
					if !known.Explains(ev) {
						return false
					}
					log.Info("already reported by the kernel log: "+ev.Header, zap.String("KLP_EVENT_SOURCE", "taint"))
					return true
				}}
			if err := w.Run(ctx, out); err != nil {
				log.Error("taint watcher disabled: " + err.Error())
			}
		})
	}
	if c := h.Command; len(c.Argv) > 0 {
		m.wg.Go(func() {
			health.Command{Argv: c.Argv, Timeout: c.Timeout, Every: c.Interval, Failures: c.Failures}.Run(ctx, out)
		})
	}
	return m
}

// stop ends the sources and waits for them (a netconsole port is free
// again when it returns).
func (m *healthMonitor) stop() {
	m.cancel()
	m.wg.Wait()
}

// reload returns the monitor for cfg: m itself when the sources'
// settings did not change (the kernel log keeps its place, an open report
// stays open), else m stopped and a new one started.
func (m *healthMonitor) reload(parent context.Context, cfg *config.Loaded, host string, log *zap.Logger) *healthMonitor {
	if sourcesKey(cfg, host) == m.key {
		return m
	}
	m.stop()
	log.Info("health sources restarted for the new configuration")
	return startHealth(parent, cfg, host, log)
}

// classify groups one source's records into reports (per netconsole
// sender), each told to seen before it is sent. It sleeps until a record
// comes, or until an open report has been quiet long enough to close: a
// quiet kernel costs no wake-ups.
func classify(ctx context.Context, recs <-chan health.Record, out chan<- health.Event, seen func(health.Event)) {
	var g health.Reports
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	emit := func(evs []health.Event) {
		for _, ev := range evs {
			if ev.KernelTime > 0 && ev.Source == "kmsg" {
				// printk stamps with local_clock, which tracks
				// CLOCK_MONOTONIC closely (no suspend on a server).
				ev.Detect = sinceBoot() - ev.KernelTime
			}
			seen(ev)
			select {
			case out <- ev:
			case <-ctx.Done():
			}
		}
	}
	for {
		if t, ok := g.Deadline(); ok {
			idle.Reset(time.Until(t))
		} else {
			idle.Stop()
		}
		select {
		case r, ok := <-recs:
			if !ok {
				emit(g.Flush(time.Now().Add(time.Hour))) // the source ended: what is open is all there is
				return
			}
			emit(g.Feed(r, time.Now()))
		case <-idle.C:
			emit(g.Flush(time.Now()))
		case <-ctx.Done():
			return
		}
	}
}

// exportMetrics returns the daemon's Changed hook: the patch info and
// block count from the state, then the textfile, if configured.
func exportMetrics(b *built, m *metrics.Metrics) func() {
	return func() {
		a := b.daemon.Agent
		if st := a.State(); st != nil {
			k := st.Kernel(a.Host().Kernel)
			name, level := "", 0
			if k.Current != nil {
				name, level = k.Current.Name, k.Current.Level
			}
			phase := string(k.Phase)
			if phase == "" {
				phase = string(state.PhaseNone)
			}
			m.SetPatch(a.Host().Kernel, name, level, phase)
			m.SetBlocked(len(k.Blocked))
		}
		if p := b.cfg.Metrics.Textfile; p != "" {
			if err := m.WriteTextfile(p); err != nil {
				b.log.Error(err.Error())
			}
		}
	}
}

// sinceBoot is CLOCK_MONOTONIC, the clock kernel log timestamps follow.
func sinceBoot() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func cmdRun(env *Env, args []string) error {
	fs := newFlags(env, "run", "run [--config PATH]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	store := &state.Store{}
	m := metrics.New(Version, "")
	b, err := build(*path, store, os.Stderr, m)
	if err != nil {
		return err
	}
	if err := store.Lock(); err != nil {
		return err
	}
	defer store.Unlock()
	ctx, stop := signal.NotifyContext(env.Ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	notify := sdNotifier{}
	hb := &agent.Heartbeat{}
	go watchdog(ctx, hb, stuckAfter, b.log)
	// STOPPING=1 as soon as a stop signal arrives, while an apply in flight
	// may still be finishing (a reload cancels only the daemon's context).
	go func() {
		<-ctx.Done()
		notify.Stopping()
	}()
	host := b.daemon.Agent.Host().Kernel
	mon := startHealth(ctx, b.cfg, host, b.log)
	defer func() { mon.stop() }()
	// The listener is set up once; a reload changes what it shows, not
	// where (restart to move it).
	if addr := b.cfg.Metrics.Listen; addr != "" {
		if a, err := m.Serve(ctx, addr, b.log); err != nil {
			b.log.Error("metrics listener disabled: " + err.Error())
		} else {
			b.log.Info("metrics on http://" + a.String() + "/metrics")
		}
	}
	for {
		b.daemon.Notify = notify
		b.daemon.Events = mon.Events
		b.daemon.Judge = &health.Judge{Policy: b.cfg.Health.Policy}
		b.daemon.Changed = exportMetrics(b, m)
		b.daemon.Heartbeat = hb
		b.log.Info("klp-agent "+Version+" starting", zap.String("KERNEL_RELEASE", b.daemon.Agent.Host().Kernel),
			zap.String("HOST_TIER", b.daemon.Agent.Host().Tier), zap.String("MANIFEST_URL", b.cfg.Manifest.URL))
		hb.Begin() // the boot re-apply is a step too
		if err := b.daemon.Agent.Start(ctx); err != nil {
			// Keep running: polling may fix what a boot re-apply could not.
			b.log.Error("start: " + err.Error())
		}
		hb.End()
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- b.daemon.Run(runCtx) }()
		select {
		case err := <-done:
			cancel()
			b.log.Info("klp-agent stopped")
			return err
		case <-hup:
			notify.Reloading()
			cancel()
			<-done
			nb, err := build(*path, store, os.Stderr, m)
			if err != nil {
				b.log.Error("reload refused, keeping the running configuration: " + err.Error())
				continue
			}
			b = nb
			mon = mon.reload(ctx, b.cfg, host, b.log)
			b.log.Info("configuration reloaded from " + *path)
		}
	}
}
