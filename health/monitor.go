package health

import (
	"context"
	"net/netip"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// MonitorOptions says which crash-signal sources run and where they read.
type MonitorOptions struct {
	Root       string // prefix for /dev/kmsg and /proc ("/" on a host)
	Release    string // this host's kernel release: netconsole records naming another are dropped
	Kmsg       bool   // follow /dev/kmsg
	Netconsole string // UDP listen address; "" = off
	// NetconsoleAllow are the senders whose datagrams count (none: none).
	NetconsoleAllow []netip.Prefix
	// NetconsoleRelease drops extended records that name no release.
	NetconsoleRelease bool
	Taint             bool // watch /proc/sys/kernel/tainted
	TaintInterval     time.Duration
	Command           Command // the operator's health check; no Argv = none
}

// Monitor runs the sources of one MonitorOptions and merges their kernel
// reports and check failures into one channel, which stays the same across
// Reload. A source that cannot start (no /dev/kmsg in a container, a port
// in use) is logged and the monitor runs on without it.
type Monitor struct {
	log    *zap.Logger
	parent context.Context
	out    chan Event

	mu     sync.Mutex
	opts   MonitorOptions
	cancel context.CancelFunc
	wg     *sync.WaitGroup
}

// StartMonitor starts the sources; they stop when ctx ends or at Stop.
func StartMonitor(ctx context.Context, opts MonitorOptions, log *zap.Logger) *Monitor {
	if log == nil {
		log = zap.NewNop()
	}
	m := &Monitor{log: log, parent: ctx, out: make(chan Event, 64)}
	m.start(opts)
	return m
}

// Events delivers every report and check failure, each once.
func (m *Monitor) Events() <-chan Event { return m.out }

// Reload restarts the sources when opts differ from those running (a new
// netconsole port, say) and keeps them otherwise, so the kernel log keeps
// its place and an open report stays open. It reports whether it restarted.
func (m *Monitor) Reload(opts MonitorOptions) bool {
	m.mu.Lock()
	same := reflect.DeepEqual(opts, m.opts)
	m.mu.Unlock()
	if same {
		return false
	}
	m.Stop()
	m.start(opts)
	m.log.Info("health sources restarted for the new configuration")
	return true
}

// Stop ends the sources and waits for them (a netconsole port is free
// again when it returns).
func (m *Monitor) Stop() {
	m.mu.Lock()
	cancel, wg := m.cancel, m.wg
	m.mu.Unlock()
	cancel()
	wg.Wait()
}

// taintGrace is how long a new taint bit waits for the kernel log's own
// report of it: a report's end comes a few milliseconds after die() sets
// D, seconds under TCG's console; the taint source is the backstop.
const taintGrace = 3 * time.Second

func (m *Monitor) start(o MonitorOptions) {
	ctx, cancel := context.WithCancel(m.parent)
	wg := &sync.WaitGroup{}
	m.mu.Lock()
	m.opts, m.cancel, m.wg = o, cancel, wg
	m.mu.Unlock()
	log, out := m.log, m.out
	// The log's reports explain the taint bits they set (the same oops).
	known := &Explained{Within: o.TaintInterval + 10*time.Second}
	// records runs a record source into its own classifier.
	records := func(name string, run func(context.Context, chan<- Record) error) {
		recs := make(chan Record, 256)
		wg.Go(func() {
			if err := run(ctx, recs); err != nil {
				log.Error(name + " stopped: " + err.Error())
			}
			close(recs)
		})
		wg.Go(func() { classify(ctx, recs, out, known.Report) })
	}
	if o.Kmsg {
		if k, err := OpenKmsg(filepath.Join(o.Root, "dev/kmsg")); err != nil {
			log.Error("kernel log monitor disabled: " + err.Error())
		} else {
			records("kernel log monitor", k.Follow)
		}
	}
	if o.Netconsole != "" {
		nr := &NetconsoleReceiver{Addr: o.Netconsole, Release: o.Release, Allow: o.NetconsoleAllow, RequireRelease: o.NetconsoleRelease}
		if err := nr.Listen(); err != nil {
			log.Error("netconsole receiver disabled: " + err.Error())
		} else {
			records("netconsole receiver", nr.Run)
			log.Info("netconsole receiver on " + nr.LocalAddr().String())
		}
	}
	if o.Taint {
		wg.Go(func() {
			w := TaintWatcher{Path: filepath.Join(o.Root, "proc/sys/kernel/tainted"), Every: o.TaintInterval, Grace: taintGrace,
				Skip: func(ev Event) bool {
					if !known.Explains(ev) {
						return false
					}
					log.Info("already reported by the kernel log: "+ev.Header, zap.String("KLP_EVENT_SOURCE", string(SourceTaint)))
					return true
				}}
			if err := w.Run(ctx, out); err != nil {
				log.Error("taint watcher disabled: " + err.Error())
			}
		})
	}
	if len(o.Command.Argv) > 0 {
		wg.Go(func() { o.Command.Run(ctx, out) })
	}
}

// classify groups one source's records into reports (per netconsole
// sender), each told to seen before it is sent. It sleeps until a record
// comes, or until an open report has been quiet long enough to close: a
// quiet kernel costs no wake-ups.
func classify(ctx context.Context, recs <-chan Record, out chan<- Event, seen func(Event)) {
	var g Reports
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	emit := func(evs []Event) {
		for _, ev := range evs {
			if ev.KernelTime > 0 && ev.Source == SourceKmsg {
				// printk stamps with local_clock, which tracks
				// CLOCK_MONOTONIC closely (no suspend on a server) but
				// not exactly: a report read within a millisecond can
				// come out negative (-1.2 ms seen under TCG); that is 0.
				ev.Detect = max(SinceBoot()-ev.KernelTime, 0)
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

// SinceBoot is CLOCK_MONOTONIC, the clock kernel log timestamps follow.
func SinceBoot() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
