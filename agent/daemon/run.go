package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/metrics"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/redact"
)

// Options are what the process hands the daemon.
type Options struct {
	ConfigPath string
	Stderr     io.Writer // console and JSON logs; nil = os.Stderr
}

// Run is `klp-agent run`: it takes the state lock, re-applies the recorded
// patch after a boot, and runs the loop and the health sources until
// SIGTERM or SIGINT (or ctx ends). SIGHUP re-reads the configuration: a
// valid one takes effect at once, an invalid one is refused and the
// running one kept. A configuration that cannot run (ErrNotConfigured
// among them) is an ErrConfig.
func Run(ctx context.Context, o Options) error {
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	h, err := LoadHost(o.ConfigPath)
	if err != nil {
		return err
	}
	if err := h.CheckStart(o.ConfigPath); err != nil {
		return err
	}
	if err := h.CheckStateDir(); err != nil { // creates it
		return err
	}
	log, err := h.Logger(o.Stderr)
	if err != nil {
		return asConfigError(err)
	}
	if h.Config.Manifest.URL == "" {
		log.Warn("manifest.url is not set: re-applying the recorded patch only, no polling")
	}
	m := metrics.New(Version, "")
	store := h.Store()
	a, err := h.Agent(log, store, m)
	if err != nil {
		// The HTTP client and the manifest source: the files the
		// configuration names (ca_bundle, client_cert) or its URL.
		return asConfigError(err)
	}
	if err := store.Lock(); err != nil {
		return err
	}
	defer store.Unlock()

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	notify := sdNotifier{}
	hb := &agent.Heartbeat{}
	go watchdog(ctx, hb, stuckAfter, log)
	// STOPPING=1 as soon as a stop signal arrives, while an apply in flight
	// may still be finishing.
	go func() {
		<-ctx.Done()
		notify.Stopping()
	}()
	mon := health.StartMonitor(ctx, h.MonitorOptions(), log)
	defer mon.Stop()
	// The listener is set up once; a reload changes what it shows, not
	// where (restart to move it).
	serveMetrics(ctx, h, m, log)
	exp := &exporter{m: m, a: a, snap: &Snapshot{Path: h.Config.Paths.StatusFile, PID: os.Getpid(), Since: time.Now(), Version: Version}}
	exp.set(h, log)
	defer exp.stopped()
	loop := &agent.Loop{Agent: a, Config: h.LoopConfig(), Notify: notify, Events: mon.Events(), Heartbeat: hb, Changed: exp.export}
	loop.Init()
	log.Info("klp-agent "+Version+" starting", zap.String("KERNEL_RELEASE", h.Host.Kernel),
		zap.String("HOST_TIER", h.Host.Tier), zap.String("MANIFEST_URL", redact.URL(h.Config.Manifest.URL)))
	if w := agent.KpatchServiceWarning(h.Config.Paths.Root, h.Host.Kernel); w != "" {
		log.Warn(w)
	}
	// Requests are accepted from here; the loop answers them once it
	// runs (a command asking during the boot re-apply waits for it).
	reloads := make(chan reloadCall)
	sctx, stopServing := context.WithCancel(ctx)
	served := serveControl(sctx, h, loop, reloads, log)
	defer func() { stopServing(); <-served }() // the socket is gone before the lock is released

	hb.Begin() // the boot re-apply is a step too
	if err := a.Start(ctx); err != nil {
		// Keep running: polling may fix what a boot re-apply could not.
		log.Error("start: " + err.Error())
	}
	hb.End()

	done := make(chan error, 1)
	go func() { done <- loop.Run(ctx) }()
	// takeReload is a SIGHUP's or `klp-agent reload`'s: the new
	// configuration whole, or the running one kept and why.
	takeReload := func() agent.ControlResult {
		notify.Reloading()
		defer notify.Ready()
		nh, nlog, err := reload(ctx, h, loop, mon, o)
		if err != nil {
			log.Error("reload refused, keeping the running configuration: " + err.Error())
			return agent.ControlResult{Message: "reload refused, the daemon keeps its running configuration: " + err.Error()}
		}
		h, log = nh, nlog
		exp.set(h, log)
		log.Info("configuration reloaded from " + o.ConfigPath)
		return agent.ControlResult{OK: true, Message: "configuration reloaded from " + strings.Join(h.Config.Files, ", ")}
	}
	for {
		select {
		case err := <-done:
			log.Info("klp-agent stopped")
			return err
		case <-hup:
			takeReload()
		case c := <-reloads:
			c.reply <- takeReload()
		}
	}
}

// serveMetrics listens on metrics.listen, if set. A failure does not stop
// the agent (patching and rollback matter more than its metrics) but is
// loud, since whoever holds the port serves this host's metrics instead:
// an error in the journal, klp_agent_metrics_listen_failed 1 in the
// textfile, and a problem in status (through the state dir).
func serveMetrics(ctx context.Context, h *Host, m *metrics.Metrics, log *zap.Logger) {
	addr := h.Config.Metrics.Listen
	var err error
	if addr != "" {
		var la net.Addr
		if la, err = m.Serve(ctx, addr, h.Config.Metrics.Mode(), log); err == nil {
			log.Info("metrics on " + metricsURL(addr, la))
		}
	}
	m.SetListenFailed(err != nil)
	if err != nil {
		log.Error("metrics listener on "+addr+" failed, serving no metrics there: "+err.Error(), zap.String("METRICS_LISTEN", addr))
	}
	if rerr := agent.RecordMetricsListen(h.Layout(), addr, err); rerr != nil {
		log.Error(rerr.Error())
	}
}

// metricsURL says where the metrics are for the log.
func metricsURL(addr string, la net.Addr) string {
	if strings.HasPrefix(addr, metrics.UnixPrefix) {
		return addr + " (http://localhost/metrics over the socket)"
	}
	return "http://" + la.String() + "/metrics"
}

// reload reads the configuration again and hands the running loop, the
// health sources and the exporters what changed. Nothing is touched
// unless the whole new configuration is valid.
func reload(ctx context.Context, old *Host, loop *agent.Loop, mon *health.Monitor, o Options) (*Host, *zap.Logger, error) {
	h, err := LoadHost(o.ConfigPath)
	if err != nil {
		return nil, nil, err
	}
	if err := h.CheckTrust(); err != nil {
		return nil, nil, err
	}
	if h.Config.Paths != old.Config.Paths {
		return nil, nil, fmt.Errorf("paths.root and paths.state_dir change only with a restart (systemctl restart klp-agent)")
	}
	log, err := h.Logger(o.Stderr)
	if err != nil {
		return nil, nil, err
	}
	client, err := h.Client(log)
	if err != nil {
		return nil, nil, err
	}
	s, err := h.Settings(log, client)
	if err != nil {
		return nil, nil, err
	}
	if err := loop.Reload(ctx, h.LoopConfig(), &s); err != nil {
		return nil, nil, err
	}
	mon.Reload(h.MonitorOptions())
	if h.Config.Metrics.Listen != old.Config.Metrics.Listen {
		log.Warn("metrics.listen changes only with a restart; still serving on " + old.Config.Metrics.Listen)
	}
	return h, log, nil
}

// exporter keeps the metrics in step with the state; the loop calls it,
// a reload retargets it.
type exporter struct {
	m    *metrics.Metrics
	a    *agent.Agent
	snap *Snapshot // the status snapshot; nil: none
	cfg  atomic.Pointer[exportTo]
}

type exportTo struct {
	textfile string
	log      *zap.Logger
	h        *Host
}

func (e *exporter) set(h *Host, log *zap.Logger) {
	e.cfg.Store(&exportTo{h.Config.Metrics.Textfile, log, h})
}

// collect is the status as the daemon sees it now (nil: it could not be
// read, which is logged).
func (e *exporter) collect(to *exportTo, now time.Time) *agent.Status {
	if to == nil || to.h == nil {
		return nil
	}
	in, err := to.h.StatusInput(now)
	var st *agent.Status
	if err == nil {
		st, err = agent.CollectStatus(in)
	}
	if err != nil {
		to.log.Error("status snapshot: " + err.Error())
		return nil
	}
	return st
}

// writeSnapshot refreshes the status snapshot with st (stopped: the
// daemon stops).
func (e *exporter) writeSnapshot(to *exportTo, st *agent.Status, stopped time.Time) {
	if e.snap == nil || st == nil {
		return
	}
	if err := e.snap.Write(st, stopped); err != nil {
		to.log.Error(err.Error())
	}
}

// stopped records the clean stop in the snapshot.
func (e *exporter) stopped() {
	to := e.cfg.Load()
	now := time.Now()
	e.writeSnapshot(to, e.collect(to, now), now)
}

// export refreshes what the state says (patch info, blocks, the wanted
// level and the check code) and writes the textfile, if configured, and
// the status snapshot.
func (e *exporter) export() {
	m, a, to := e.m, e.a, e.cfg.Load()
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
		pin := 0
		if k.Pin != nil {
			pin = k.Pin.Level
		}
		m.SetControls(st.Hold.Active(time.Now()), pin, a.KillSwitch() != "")
	}
	now := time.Now()
	st := e.collect(to, now)
	if st != nil {
		// The check as this running daemon sees it (Snapshot.Write says
		// it runs).
		st.Daemon = &agent.DaemonInfo{PID: os.Getpid(), Written: now, Running: true}
		code, _ := st.Check()
		wanted := 0
		if st.Wanted != nil {
			wanted = st.Wanted.Level
		}
		m.SetCheck(code, wanted, now)
	}
	if to.textfile != "" {
		if err := m.WriteTextfile(to.textfile); err != nil {
			to.log.Error(err.Error())
		}
	}
	e.writeSnapshot(to, st, time.Time{})
}
