package agent

import (
	"github.com/klp-agent/klp-agent/agent/history"
	"github.com/klp-agent/klp-agent/agent/state"
)

// History is the host's event history in the state directory.
func (a *Agent) History() history.Log { return HistoryLog(a.Layout()) }

// HistoryLog is the history kept in the state directory l.
func HistoryLog(l state.Layout) history.Log {
	return history.Log{Path: l.History(), Old: l.HistoryOld(), Max: historyMax}
}

// historyMax is the history's rotation size (a variable for tests).
var historyMax int64 = history.MaxBytes

// record appends ev to the history, beside the journal entry for the same
// step. A failure is journaled and nothing more: the history must never
// stop or fail an apply or a rollback.
func (a *Agent) record(ev history.Event, p *state.PatchRecord) {
	ev.Time = a.now().UTC()
	ev.Kernel = a.d.Host.Kernel
	if p != nil {
		ev.Patch, ev.Level, ev.SHA256 = p.Name, p.Level, p.SHA256
	}
	if err := a.History().Append(ev); err != nil {
		a.log().Warn("history not recorded: " + err.Error())
	}
}

// recordControl records an operator's control that changed the state.
func (a *Agent) recordControl(r ControlRequest) {
	kinds := map[ControlOp]history.Kind{OpHold: history.KindHold, OpResume: history.KindResume, OpPin: history.KindPin,
		OpUnpin: history.KindUnpin, OpUnblock: history.KindUnblock}
	kind, ok := kinds[r.Op]
	if !ok {
		return
	}
	a.record(history.Event{Kind: kind, Operator: r.By, Reason: r.Reason, Until: r.Until, Patch: r.Name, Level: r.Level}, nil)
}
