package cli

import (
	"context"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
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

// watchdog pings systemd every half WatchdogSec until ctx ends. The pings
// come from their own goroutine: a long apply (up to the transition
// timeout) must not look like a hung agent.
func watchdog(ctx context.Context) {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return
	}
	t := time.NewTicker(d / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
	}
}
