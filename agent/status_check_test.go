package agent

import (
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
	tests := []struct {
		name string
		s    Status
		code int
	}{
		{"not configured", Status{Phase: state.PhaseNone}, CheckNotConfigured},
		{"up to date, nothing wanted", Status{Configured: true, Phase: state.PhaseNone, LastPoll: ok}, CheckUpToDate},
		{"up to date", Status{Configured: true, Phase: state.PhaseGood, Applied: p1, Wanted: &manifest.Patch{Name: "klp_a_1", Level: 1}, LastPoll: ok}, CheckUpToDate},
		{"update pending", Status{Configured: true, Phase: state.PhaseGood, Applied: p1, Wanted: w2, LastPoll: ok}, CheckPending},
		{"soaking", Status{Configured: true, Phase: state.PhaseSoaking, Applied: p1, LastPoll: ok}, CheckPending},
		{"held", Status{Configured: true, Phase: state.PhaseGood, Applied: p1, LastPoll: ok, Controls: Controls{Hold: &state.Hold{}}}, CheckPending},
		{"kill switch", Status{Configured: true, Phase: state.PhaseGood, Applied: p1, LastPoll: ok, Controls: Controls{KillSwitch: "x"}}, CheckPending},
		{"poll failed", Status{Configured: true, Phase: state.PhaseGood, LastPoll: &state.Poll{Error: "refused"}}, CheckDegraded},
		{"problem", Status{Configured: true, Phase: state.PhaseGood, LastPoll: ok, Problems: []string{"x"}}, CheckDegraded},
		{"expired", Status{Configured: true, LastPoll: ok, Manifest: &ManifestInfo{Expired: true}}, CheckDegraded},
		{"root expired", Status{Configured: true, LastPoll: ok, TrustedRoot: &RootInfo{Version: 4, Expired: true}}, CheckDegraded},
		{"root in force", Status{Configured: true, Phase: state.PhaseNone, LastPoll: ok, TrustedRoot: &RootInfo{Version: 4}}, CheckUpToDate},
		{"rolling back", Status{Configured: true, Phase: state.PhaseRollingBack, LastPoll: ok}, CheckDegraded},
		{"blocked above", Status{Configured: true, Phase: state.PhaseGood, Applied: p1, LastPoll: ok,
			Blocked: []state.Blocked{{PatchRecord: state.PatchRecord{Name: "klp_a_2", Level: 2}}}}, CheckDegraded},
		{"blocked below is history", Status{Configured: true, Phase: state.PhaseGood, Applied: &state.PatchRecord{Name: "klp_a_3", Level: 3}, LastPoll: ok,
			Blocked: []state.Blocked{{PatchRecord: state.PatchRecord{Name: "klp_a_2", Level: 2}}}}, CheckUpToDate},
	}
	for _, tt := range tests {
		if code, why := tt.s.Check(); code != tt.code {
			t.Errorf("%s: %d (%s), want %d", tt.name, code, why, tt.code)
		}
	}
}
