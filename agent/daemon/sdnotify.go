package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent"
)

// sdNotifier tells systemd about readiness, status and stopping, and
// keeps its watchdog fed; every call is a no-op outside systemd.
type sdNotifier struct{}

func (sdNotifier) Ready() error {
	_, err := daemon.SdNotify(false, daemon.SdNotifyReady)
	return err
}

func (sdNotifier) Status(s string) error {
	_, err := daemon.SdNotify(false, "STATUS="+s)
	return err
}

func (sdNotifier) Stopping() error {
	_, err := daemon.SdNotify(false, daemon.SdNotifyStopping)
	return err
}

func (sdNotifier) Reloading() error {
	_, err := daemon.SdNotify(false, daemon.SdNotifyReloading)
	return err
}

// stuckAfter is how long one step of the daemon's work (a poll, an apply
// with its transition, a rollback) may run before the watchdog pings stop.
// Each step has its own deadlines well inside this; past it something
// hangs (rpm on a lock, a read that never returns), and systemd's restart
// resumes the step from the state file.
const stuckAfter = 10 * time.Minute

// watchdog pings systemd every half WatchdogSec until ctx ends, from its
// own goroutine, while hb shows the daemon idle or busy with one step for
// less than limit: a long apply is not a hang, a step stuck past the limit
// is, and then the pings stop so that systemd restarts the agent.
func watchdog(ctx context.Context, hb *agent.Heartbeat, limit time.Duration, log *zap.Logger) {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return
	}
	t := time.NewTicker(d / 2)
	defer t.Stop()
	told := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			busy := hb.Busy(time.Now())
			if busy < limit {
				told = false
				daemon.SdNotify(false, daemon.SdNotifyWatchdog)
				continue
			}
			if !told {
				told = true
				log.Error(fmt.Sprintf("one step has run for %s (limit %s): watchdog pings stopped, systemd will restart the agent",
					busy.Round(time.Second), limit))
			}
		}
	}
}
