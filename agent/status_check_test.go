package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/manifest"
)

func TestStatusCheckCodes(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	p1 := &state.PatchRecord{Name: "klp_a_1", Level: 1}
	w2 := &manifest.Patch{Name: "klp_a_2", Level: 2}
	ok := &state.Poll{At: now, OK: true}
	// A 15-minute interval with 20% jitter: stale after 3 × 18 min = 54 min.
	up := func(s Status) Status {
		s.At, s.PollIntervalSeconds, s.PollJitter = now, 900, 0.2
		if s.Daemon == nil {
			s.Daemon = &DaemonInfo{PID: 42, Running: true, Written: now.Add(-time.Minute)}
		}
		return s
	}
	tests := []struct {
		name string
		s    Status
		code int
		why  string
	}{
		{"not configured", up(Status{Phase: state.PhaseNone}), CheckNotConfigured, "not configured"},
		{"up to date, nothing wanted", up(Status{Configured: true, Phase: state.PhaseNone, LastPoll: ok}), CheckUpToDate, "up to date"},
		{"up to date", up(Status{Configured: true, Phase: state.PhaseGood, Applied: p1, Wanted: &manifest.Patch{Name: "klp_a_1", Level: 1}, LastPoll: ok}), CheckUpToDate, "up to date"},
		{"update pending", up(Status{Configured: true, Phase: state.PhaseGood, Applied: p1, Wanted: w2, LastPoll: ok}), CheckPending, "update pending"},
		{"soaking", up(Status{Configured: true, Phase: state.PhaseSoaking, Applied: p1, LastPoll: ok}), CheckPending, "in progress"},
		{"held", up(Status{Configured: true, Phase: state.PhaseGood, Applied: p1, LastPoll: ok, Controls: Controls{Hold: &state.Hold{}, Waiting: "held by root (uid 0) until resumed"}}), CheckPending, "held by root"},
		{"kill switch", up(Status{Configured: true, Phase: state.PhaseGood, Applied: p1, LastPoll: ok, Controls: Controls{KillSwitch: "x"}}), CheckPending, "kill switch"},
		{"poll failed", up(Status{Configured: true, Phase: state.PhaseGood, LastPoll: &state.Poll{At: now, Error: "refused", LastOK: now.Add(-time.Hour / 2)}}), CheckDegraded, "the last poll failed: refused"},
		{"problem", up(Status{Configured: true, Phase: state.PhaseGood, LastPoll: ok, Problems: []string{"x"}}), CheckDegraded, "degraded: x"},
		{"expired", up(Status{Configured: true, LastPoll: ok, Manifest: &ManifestInfo{Expired: true}}), CheckDegraded, "expired"},
		{"root expired", up(Status{Configured: true, LastPoll: ok, TrustedRoot: &RootInfo{Version: 4, Expired: true}}), CheckDegraded, "trusted root"},
		{"root in force", up(Status{Configured: true, Phase: state.PhaseNone, LastPoll: ok, TrustedRoot: &RootInfo{Version: 4}}), CheckUpToDate, "up to date"},
		{"rolling back", up(Status{Configured: true, Phase: state.PhaseRollingBack, LastPoll: ok}), CheckDegraded, "rollback"},
		{"blocked above", up(Status{Configured: true, Phase: state.PhaseGood, Applied: p1, LastPoll: ok,
			Blocked: []state.Blocked{{PatchRecord: state.PatchRecord{Name: "klp_a_2", Level: 2}}}}), CheckDegraded, "blocked"},
		{"blocked below is history", up(Status{Configured: true, Phase: state.PhaseGood, Applied: &state.PatchRecord{Name: "klp_a_3", Level: 3}, LastPoll: ok,
			Blocked: []state.Blocked{{PatchRecord: state.PatchRecord{Name: "klp_a_2", Level: 2}}}}), CheckUpToDate, "up to date"},

		// The agent itself: each of these used to pass for "up to date".
		{"daemon stopped", up(Status{Configured: true, LastPoll: ok, Daemon: &DaemonInfo{PID: 42, Stopped: now.Add(-time.Hour)}}), CheckDaemonDown, "daemon not running: it stopped at 2026-11-25T11:00:00Z"},
		{"daemon gone", up(Status{Configured: true, LastPoll: ok, Daemon: &DaemonInfo{PID: 42, Written: now}}), CheckDaemonDown, "pid 42 is gone"},
		{"no daemon known", Status{At: now, Configured: true, LastPoll: ok}, CheckDaemonDown, "no process holds the state lock"},
		{"daemon's snapshot stale", up(Status{Configured: true, LastPoll: ok, Daemon: &DaemonInfo{PID: 42, Running: true, Written: now.Add(-55 * time.Minute)}}), CheckDaemonDown, "daemon not responding"},
		{"daemon's snapshot fresh enough", up(Status{Configured: true, LastPoll: ok, Daemon: &DaemonInfo{PID: 42, Running: true, Written: now.Add(-53 * time.Minute)}}), CheckUpToDate, "up to date"},
		{"lock holder without snapshot", up(Status{Configured: true, LastPoll: ok, Daemon: &DaemonInfo{PID: 42, Running: true, LockHolder: 42}}), CheckUpToDate, "up to date"},
		{"never polled", up(Status{Configured: true, Phase: state.PhaseNone}), CheckNotPolling, "not polled the manifest yet"},
		{"no poll ever succeeded", up(Status{Configured: true, LastPoll: &state.Poll{At: now, Error: "refused"}}), CheckNotPolling, "no poll has succeeded yet; the last one failed: refused"},
		{"last good poll too old", up(Status{Configured: true, LastPoll: &state.Poll{At: now, Error: "refused", LastOK: now.Add(-2 * time.Hour)}}), CheckNotPolling, "the last good poll was at 2026-11-25T10:00:00Z"},
		{"last poll ok but long ago", up(Status{Configured: true, LastPoll: &state.Poll{At: now.Add(-2 * time.Hour), OK: true}}), CheckNotPolling, "over 54m0s ago"},
		{"configuration refused", up(Status{Configured: true, LastPoll: ok, ConfigRefused: "trust.threshold 1 but /k holds 0 key(s)"}), CheckConfigRefused, "klp-agent run would not start: trust.threshold 1"},
	}
	for _, tt := range tests {
		code, why := tt.s.Check()
		if code != tt.code || !strings.Contains(why, tt.why) {
			t.Errorf("%s: %d (%s), want %d (%s)", tt.name, code, why, tt.code, tt.why)
		}
	}
}
