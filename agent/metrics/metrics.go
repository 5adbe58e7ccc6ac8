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
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/atomicfile"
)

// Rollback reasons: a closed set, so label cardinality stays fixed.
var rollbackReasons = map[string]bool{"health": true, "revoked": true, "operator": true, "boot-crash": true, "failed-apply": true}

// crashKinds count as crashes for the fleet's per-patch crash budget.
var crashKinds = map[string]bool{"oops": true, "bug": true, "kernel-bug": true, "panic": true, "hard-lockup": true, "kdump": true}

// Metrics is the agent's metric set. Safe for concurrent use.
type Metrics struct {
	reg           *prometheus.Registry
	patchInfo     *prometheus.GaugeVec
	applies       *prometheus.CounterVec
	rollbacks     *prometheus.CounterVec
	healthEvents  *prometheus.CounterVec
	crashes       *prometheus.CounterVec
	blocked       prometheus.Gauge
	manifestVer   prometheus.Gauge
	lastPoll      *prometheus.GaugeVec
	lastOK        prometheus.Gauge
	applyDuration prometheus.Histogram

	mu sync.Mutex // serialises textfile writes
}

// New registers every metric; version and goVersion label build_info.
func New(version, goVersion string) *Metrics {
	if goVersion == "" {
		goVersion = runtime.Version()
	}
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.patchInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_patch_info",
		Help: "The livepatch this host runs for its kernel (1); patch \"\" when none."}, []string{"kernel", "patch", "level", "state"})
	m.applies = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "klp_agent_applies_total",
		Help: "Livepatch applies by result (ok, failed)."}, []string{"result"})
	m.rollbacks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "klp_agent_rollbacks_total",
		Help: "Rollbacks by reason (health, revoked, operator, boot-crash, failed-apply, other)."}, []string{"reason"})
	m.healthEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "klp_agent_health_events_total",
		Help: "Crash signals seen, by kind, source and whether they ran through the current patch."}, []string{"kind", "source", "attributed"})
	m.crashes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "klp_agent_crashes_total",
		Help: "Crash-class reports and kdump dumps seen while a patch was applied, by that patch."}, []string{"patch"})
	m.blocked = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_blocked_patches", Help: "Patches blocked on this host for its kernel."})
	m.manifestVer = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_manifest_version", Help: "Version of the last accepted manifest."})
	m.lastPoll = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_last_poll_timestamp_seconds",
		Help: "Time of the last manifest poll, by result (ok, not-modified, error)."}, []string{"result"})
	m.lastOK = prometheus.NewGauge(prometheus.GaugeOpts{Name: "klp_agent_last_successful_poll_timestamp_seconds",
		Help: "Time of the last poll that delivered a verified manifest (fresh or unchanged)."})
	m.applyDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "klp_agent_apply_duration_seconds",
		Help:    "Time from download start to transition done, for successful applies.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120}})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "klp_agent_build_info", Help: "The agent's version (1)."}, []string{"version", "goversion"})
	build.WithLabelValues(version, goVersion).Set(1)
	for _, c := range []prometheus.Collector{m.patchInfo, m.applies, m.rollbacks, m.healthEvents, m.crashes, m.blocked,
		m.manifestVer, m.lastPoll, m.lastOK, m.applyDuration, build} {
		f(c)
	}
	// Series that alert rules rate() over exist from the start, at 0.
	for _, r := range []string{"ok", "failed"} {
		m.applies.WithLabelValues(r)
	}
	return m
}

// Registry is for tests and the HTTP handler.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SetPatch records the current patch; the previous series is replaced.
func (m *Metrics) SetPatch(kernel, patch string, level int, state string) {
	m.patchInfo.Reset()
	m.patchInfo.WithLabelValues(kernel, patch, strconv.Itoa(level), state).Set(1)
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

// RolledBack counts one rollback; unknown reasons count as "other".
func (m *Metrics) RolledBack(reason string) {
	if !rollbackReasons[reason] {
		reason = "other"
	}
	m.rollbacks.WithLabelValues(reason).Inc()
}

// HealthEvent counts one event; a crash-class one seen while patch was
// applied also counts against that patch's crash budget.
func (m *Metrics) HealthEvent(kind, source string, attributed bool, patch string) {
	m.healthEvents.WithLabelValues(kind, source, strconv.FormatBool(attributed)).Inc()
	if patch != "" && crashKinds[kind] {
		m.crashes.WithLabelValues(patch).Inc()
	}
}

// Polled records a poll's result ("ok", "not-modified", "error").
func (m *Metrics) Polled(result string, at time.Time, manifestVersion uint64) {
	ts := float64(at.UnixNano()) / 1e9
	m.lastPoll.WithLabelValues(result).Set(ts)
	if result != "error" {
		m.lastOK.Set(ts)
		m.manifestVer.Set(float64(manifestVersion))
	}
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
		return err
	}
	if err := atomicfile.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("metrics textfile %s: %w", path, err)
	}
	return nil
}

// ErrNotLoopback refuses a listener other hosts could reach: the metrics
// say which kernel bug a host is exposed to.
var ErrNotLoopback = errors.New("metrics listener must be on loopback")

// Serve serves /metrics on addr until ctx ends and returns the bound
// address.
func (m *Metrics) Serve(ctx context.Context, addr string, log *zap.Logger) (net.Addr, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("%w: %q", ErrNotLoopback, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && log != nil {
			log.Error("metrics listener stopped: " + err.Error())
		}
	}()
	return ln.Addr(), nil
}
