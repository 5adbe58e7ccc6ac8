// Package metrics exports the agent's Prometheus metrics: to a
// node_exporter textfile (written atomically) and/or a loopback listener.
// Names and labels are an interface: the fleet's alert rules
// (packaging/prometheus/klp-agent.rules.yml) depend on them.
package metrics

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
)

// rollbackReasons are the causes, and "other" for one this version does
// not know: a closed set, so label cardinality stays fixed.
var rollbackReasons = func() []string {
	var r []string
	for _, c := range state.Causes() {
		r = append(r, string(c))
	}
	return append(r, "other")
}()

// crashKinds are the report kinds that count as crashes for the fleet's
// per-patch crash budget; a crash record found after a reboot (kdump,
// pstore) is one whatever it holds.
var crashKinds = map[string]bool{"oops": true, "bug": true, "kernel-bug": true, "panic": true, "hard-lockup": true}

// sourceLabel is source as a label value: one of health.Sources(), or
// "other" (a closed set, so label cardinality stays fixed).
func sourceLabel(s health.Source) string {
	if slices.Contains(health.Sources(), s) {
		return string(s)
	}
	return "other"
}

// Poll results: anything else is recorded as "error" (closed set, and an
// unknown outcome must not pass for a successful poll).
var pollResults = map[string]bool{"ok": true, "not-modified": true, "error": true}

// Metrics is the agent's metric set. Safe for concurrent use.
type Metrics struct {
	reg           *prometheus.Registry
	patchInfo     *patchInfo
	applies       *prometheus.CounterVec
	rollbacks     *prometheus.CounterVec
	healthEvents  *prometheus.CounterVec
	crashes       *prometheus.CounterVec
	blocked       prometheus.Gauge
	manifestVer   prometheus.Gauge
	manifestExp   prometheus.Gauge
	manifestSince prometheus.Gauge
	manifestAge   prometheus.Gauge
	rootVer       *prometheus.GaugeVec // no labels: absent until a root of trust is known
	rootExp       *prometheus.GaugeVec
	revVer        *prometheus.GaugeVec // no labels: absent until a revocations.json is in force
	lastPoll      *prometheus.GaugeVec
	lastOK        prometheus.Gauge
	applyDuration prometheus.Histogram
	listenFailed  prometheus.Gauge
	held          prometheus.Gauge
	pinLevel      prometheus.Gauge
	killSwitch    prometheus.Gauge
	appliedLevel  prometheus.Gauge
	// No labels: absent until the daemon first judges its status, so a
	// scrape before then never reads code 0 ("up to date").
	wantedLevel *prometheus.GaugeVec
	checkCode   *prometheus.GaugeVec
	exported    *prometheus.GaugeVec

	mu sync.Mutex // serialises textfile writes
}

// New registers every metric; version and goVersion label build_info.
func New(version, goVersion string) *Metrics {
	if goVersion == "" {
		goVersion = runtime.Version()
	}
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.patchInfo = &patchInfo{desc: prometheus.NewDesc("klp_agent_patch_info",
		"The livepatch this host runs for its kernel (1); patch \"\" when none.", []string{"kernel", "patch", "level", "state"}, nil)}
	m.applies = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "klp_agent_applies_total",
		Help: "Livepatch applies by result (ok, failed)."}, []string{"result"})
	m.rollbacks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "klp_agent_rollbacks_total",
		Help: "Rollbacks by cause (" + strings.Join(rollbackReasons, ", ") + ")."}, []string{"reason"})
	m.healthEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "klp_agent_health_events_total",
		Help: "Crash signals seen, by kind, source and whether they ran through the current patch."}, []string{"kind", "source", "attributed"})
	m.crashes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "klp_agent_crashes_total",
		Help: "Crash-class reports and crash records (kdump, pstore) seen while a patch was applied, by that patch and the report's source; the crash budget counts the host kernel's own sources (kmsg, taint, kdump, pstore), not netconsole."}, []string{"patch", "source"})
	m.blocked = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_blocked_patches", Help: "Patches blocked on this host for its kernel."})
	m.manifestVer = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_manifest_version", Help: "Version of the last accepted manifest."})
	m.manifestExp = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_manifest_expiry_timestamp_seconds",
		Help: "Expiry of the manifest in force."})
	m.manifestSince = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_manifest_accepted_timestamp_seconds",
		Help: "When this host first accepted the version of the manifest in force (kept across restarts): time() minus it is how long the manifest has not changed."})
	m.manifestAge = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_manifest_age_seconds",
		Help: "Age of the manifest in force at the last poll: seconds since this host first accepted its version (not since its optional signed_at)."})
	m.rootVer = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_trusted_root_version",
		Help: "Version of the root of trust this host follows (trust.root); absent with keys_dir."}, nil)
	m.rootExp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_trusted_root_expiry_timestamp_seconds",
		Help: "Expiry of the trusted root: from then on no manifest is accepted until a newer root (root.<N+1>.json) is published; absent with keys_dir."}, nil)
	m.revVer = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_revocations_version",
		Help: "Version of the revocations.json in force (the fast revocation channel); absent while none is."}, nil)
	m.lastPoll = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_last_poll_timestamp_seconds",
		Help: "Time of the last manifest poll, by result (ok, not-modified, error)."}, []string{"result"})
	m.lastOK = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_last_successful_poll_timestamp_seconds",
		Help: "Time of the last poll that delivered a verified manifest (fresh or unchanged)."})
	m.applyDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "klp_agent_apply_duration_seconds",
		Help:    "Time from download start to transition done, for successful applies.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120}})
	m.listenFailed = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_metrics_listen_failed",
		Help: "1 when metrics.listen is set but could not be listened on (port taken, socket path refused): someone else may be serving this host's metrics."})
	m.held = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_held",
		Help: "1 while an operator's klp-agent hold keeps new levels off this host."})
	m.pinLevel = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_pin_level",
		Help: "The highest level klp-agent pin allows for the running kernel; 0 when not pinned."})
	m.killSwitch = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_kill_switch",
		Help: "1 when the kernel was booted with klp_agent.enable=0: the agent applies nothing in this boot."})
	m.appliedLevel = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_applied_level",
		Help: "The level applied for the running kernel; 0 when none."})
	m.wantedLevel = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_wanted_level",
		Help: "The level the manifest in force selects for the running kernel (status: wanted); 0 when none. Above klp_agent_applied_level: an update is pending."}, nil)
	m.checkCode = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_check_code",
		Help: "klp-agent status --check's exit code as the running daemon sees it: 0 up to date, 1 pending, 2 degraded, 3 not configured, 5 not polling (see klp-agent status --help)."}, nil)
	m.exported = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_status_timestamp_seconds",
		Help: "When the daemon last refreshed these metrics and its status snapshot (after every poll and change): long ago means a stopped or stuck agent."}, nil)
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_build_info", Help: "The agent's version (1)."}, []string{"version", "goversion"})
	build.WithLabelValues(version, goVersion).Set(1)
	for _, c := range []prometheus.Collector{m.patchInfo, m.applies, m.rollbacks, m.healthEvents, m.crashes, m.blocked,
		m.manifestVer, m.manifestExp, m.manifestSince, m.manifestAge, m.rootVer, m.rootExp, m.revVer, m.lastPoll, m.lastOK, m.applyDuration, m.listenFailed,
		m.held, m.pinLevel, m.killSwitch, m.appliedLevel, m.wantedLevel, m.checkCode, m.exported, build} {
		f(c)
	}
	// Series that alert rules increase() over exist from the start, at 0:
	// a counter that first appears at 1 shows no increase to Prometheus.
	for _, r := range []string{"ok", "failed"} {
		m.applies.WithLabelValues(r)
	}
	for _, r := range rollbackReasons {
		m.rollbacks.WithLabelValues(r)
	}
	return m
}

// patchInfo is klp_agent_patch_info as one series swapped under a lock, so
// a scrape sees the old patch or the new one, never neither or both
// (GaugeVec's Reset-then-Set leaves a window with no series).
type patchInfo struct {
	desc   *prometheus.Desc
	mu     sync.Mutex
	labels []string // kernel, patch, level, state; nil before SetPatch
}

func (p *patchInfo) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }

func (p *patchInfo) Collect(ch chan<- prometheus.Metric) {
	p.mu.Lock()
	l := p.labels
	p.mu.Unlock()
	if l != nil {
		ch <- prometheus.MustNewConstMetric(p.desc, prometheus.GaugeValue, 1, l...)
	}
}

// clean makes a label value valid UTF-8: client_golang panics on anything
// else, and kernel and patch names come from outside the agent.
func clean(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// Registry is for tests and the HTTP handler.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SetPatch records the current patch (patch "" and level 0 when none);
// the previous series is replaced. A patch's crash counter is created at 0
// here, so its first crash is an increase the fleet's crash budget sees.
func (m *Metrics) SetPatch(kernel, patch string, level int, state string) {
	labels := []string{clean(kernel), clean(patch), strconv.Itoa(level), clean(state)}
	m.patchInfo.mu.Lock()
	m.patchInfo.labels = labels
	m.patchInfo.mu.Unlock()
	m.appliedLevel.Set(float64(level))
	if patch != "" {
		for _, s := range health.Sources() {
			if s.Local() || s == health.SourceNetconsole { // the sources of crash reports
				m.crashes.WithLabelValues(clean(patch), string(s))
			}
		}
	}
}

// Applied counts one apply and, when it worked, its duration.
func (m *Metrics) Applied(ok bool, d time.Duration) {
	if !ok {
		m.applies.WithLabelValues("failed").Inc()
		return
	}
	m.applies.WithLabelValues("ok").Inc()
	m.applyDuration.Observe(d.Seconds())
}

// RolledBack counts one rollback by its cause; unknown ones count as "other".
func (m *Metrics) RolledBack(cause state.Cause) {
	reason := string(cause)
	if !slices.Contains(rollbackReasons, reason) {
		reason = "other"
	}
	m.rollbacks.WithLabelValues(reason).Inc()
}

// HealthEvent counts one event; a crash-class one (or any crash record
// found after a reboot) seen while crashPatch was applied also counts as
// that patch's crash, under its source: the fleet's rules keep what only
// netconsole reported out of the budget.
func (m *Metrics) HealthEvent(kind string, source health.Source, attributed bool, crashPatch string) {
	src := sourceLabel(source)
	m.healthEvents.WithLabelValues(clean(kind), src, strconv.FormatBool(attributed)).Inc()
	if crashPatch != "" && (crashKinds[kind] || source.AfterReboot()) {
		m.crashes.WithLabelValues(clean(crashPatch), src).Inc()
	}
}

// Polled records a poll's result ("ok", "not-modified", "error"). Only a
// poll that ended with a verified manifest moves the last-success time,
// and version 0 (none known) leaves the last accepted version alone.
func (m *Metrics) Polled(result string, at time.Time, manifestVersion uint64) {
	if !pollResults[result] {
		result = "error"
	}
	ts := float64(at.UnixNano()) / 1e9
	m.lastPoll.WithLabelValues(result).Set(ts)
	if result != "error" {
		m.lastOK.Set(ts)
		if manifestVersion > 0 {
			m.manifestVer.Set(float64(manifestVersion))
		}
	}
}

// ManifestInForce records the manifest in force after the poll at at: its
// expiry, when this host first accepted its version, and so its age.
func (m *Metrics) ManifestInForce(version uint64, expires, since, at time.Time) {
	if version == 0 {
		return
	}
	m.manifestExp.Set(float64(expires.Unix()))
	m.manifestSince.Set(float64(since.UnixNano()) / 1e9)
	m.manifestAge.Set(max(at.Sub(since).Seconds(), 0))
}

// TrustedRoot records the root of trust in force after a poll.
func (m *Metrics) TrustedRoot(version uint64, expires time.Time) {
	m.rootVer.WithLabelValues().Set(float64(version))
	m.rootExp.WithLabelValues().Set(float64(expires.Unix()))
}

// RevocationsInForce records the revocations.json in force after a
// channel poll (version 0: none, the metric goes away).
func (m *Metrics) RevocationsInForce(version uint64) {
	if version == 0 {
		m.revVer.Reset()
		return
	}
	m.revVer.WithLabelValues().Set(float64(version))
}

// SetListenFailed records whether the configured listener failed.
func (m *Metrics) SetListenFailed(failed bool) {
	v := 0.0
	if failed {
		v = 1
	}
	m.listenFailed.Set(v)
}

// SetControls records the host controls in force: a hold, the pin (0:
// none) and the kill switch.
func (m *Metrics) SetControls(held bool, pin int, killSwitch bool) {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	m.held.Set(b(held))
	m.pinLevel.Set(float64(pin))
	m.killSwitch.Set(b(killSwitch))
}

// SetCheck records status --check's code as the daemon sees it, the
// wanted level (0: none), and at as the time of this refresh.
func (m *Metrics) SetCheck(code, wanted int, at time.Time) {
	m.checkCode.WithLabelValues().Set(float64(code))
	m.wantedLevel.WithLabelValues().Set(float64(wanted))
	m.exported.WithLabelValues().Set(float64(at.UnixNano()) / 1e9)
}

// SetBlocked records how many patches are blocked.
func (m *Metrics) SetBlocked(n int) { m.blocked.Set(float64(n)) }

// Text renders every metric in the Prometheus text format.
func (m *Metrics) Text() ([]byte, error) {
	mfs, err := m.reg.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather metrics: %w", err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, fmt.Errorf("encode metrics: %w", err)
		}
	}
	return buf.Bytes(), nil
}

// WriteTextfile replaces path atomically, so node_exporter's textfile
// collector never reads half a file.
func (m *Metrics) WriteTextfile(path string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, err := m.Text()
	if err != nil {
		return fmt.Errorf("metrics textfile %s: %w", path, err)
	}
	// atomicfile's errors already name the path.
	if err := atomicfile.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("metrics textfile: %w", err)
	}
	return nil
}

// ErrNotLoopback refuses a listener other hosts could reach: the metrics
// say which kernel bug a host is exposed to.
var ErrNotLoopback = errors.New("metrics listener must be on loopback (127.0.0.0/8, ::1 or localhost)")

// loopback reports whether host names only this machine.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ErrNotSocket refuses to replace something other than a stale socket at
// the unix socket's path.
var ErrNotSocket = errors.New("metrics socket path holds something other than a socket")

// UnixPrefix marks addr as a unix socket path (unix:/run/klp-agent/metrics.sock).
const UnixPrefix = "unix:"

// Serve serves /metrics on addr until ctx ends and returns the bound
// address. addr is a loopback host:port, or unix:PATH for a socket created
// with mode (owned by the agent's user: root).
func (m *Metrics) Serve(ctx context.Context, addr string, mode os.FileMode, log *zap.Logger) (net.Addr, error) {
	if log == nil {
		log = zap.NewNop()
	}
	ln, err := listen(addr, mode)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	// Timeouts: a stuck client must not pin goroutines in the agent.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute, ErrorLog: zap.NewStdLog(log)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx) //nolint:errcheck // best effort: the agent is stopping
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped: " + err.Error())
		}
	}()
	return ln.Addr(), nil
}

func listen(addr string, mode os.FileMode) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, UnixPrefix); ok {
		return listenUnix(path, mode)
	}
	return listenTCP(addr)
}

// listenTCP binds a loopback address. A port already taken is an error,
// never shared: whoever holds it would be serving this host's metrics.
func listenTCP(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %q: %w", addr, err)
	}
	if !loopback(host) {
		return nil, fmt.Errorf("%w: %q", ErrNotLoopback, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	// "localhost" is whatever /etc/hosts says: check what was bound.
	if ta, ok := ln.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("%w: %q bound %s", ErrNotLoopback, addr, ln.Addr())
	}
	return ln, nil
}

// listenUnix creates the socket at path (its directory 0755 if missing),
// replacing only a stale socket, and sets its mode: who may connect is the
// socket's owner (root) and group, not any local user as with TCP.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("metrics listen unix:%s: the path must be absolute", path)
	}
	if err := mkdirReadable(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("metrics socket %s: %w", path, err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	// The mode is set at bind, never by name afterwards (bindUnix).
	return bindUnix(path, mode)
}

// mkdirReadable creates dir 0755 if it is missing: the socket's group must
// be able to reach the socket, and the unit's UMask=0077 would make it 0700.
// An existing directory is left as its owner made it.
func mkdirReadable(dir string) error {
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.Chmod(dir, 0o755)
}

// kind names a file type for messages.
func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m.IsDir():
		return "a directory"
	case m.IsRegular():
		return "a regular file"
	}
	return "not a socket (" + m.Type().String() + ")"
}

// removeStaleSocket removes a socket left by an earlier run; anything else
// at path (a file, a symlink) is refused, not removed.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("metrics socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%w: %s is %s (remove it, or choose another path)", ErrNotSocket, path, kind(fi.Mode()))
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("metrics socket %s: remove stale: %w", path, err)
	}
	return nil
}
