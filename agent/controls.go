package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/manifest"
)

// MsgControl is the journal's MESSAGE_ID for a host control taken (hold,
// resume, pin, unpin, unblock), with who asked and why.
const MsgControl = "948df1b30f8644c08cdaa67c1344d455"

// MsgKillSwitch is logged at start when klp_agent.enable=0 is on the
// kernel command line.
const MsgKillSwitch = "598ea436df064fe9b9996101f2c3794f"

// ControlOp is one thing the CLI asks of the daemon (or, with no daemon
// running, does itself).
type ControlOp string

// The host controls, and the requests that go the same way.
const (
	OpHold     ControlOp = "hold"
	OpResume   ControlOp = "resume"
	OpPin      ControlOp = "pin"
	OpUnpin    ControlOp = "unpin"
	OpUnblock  ControlOp = "unblock"
	OpPoll     ControlOp = "poll"
	OpRollback ControlOp = "rollback"
	OpReload   ControlOp = "reload"
)

// ErrControl is a control that cannot be taken (nothing to unblock, a bad
// level); the CLI exits 1 with it.
var ErrControl = errors.New("control refused")

// ErrNoPatch is a rollback with nothing applied to step back from.
var ErrNoPatch = errors.New("no patch applied")

// ControlRequest is what an operator asks: of the running daemon through
// its control socket (agent/control), or taken directly when none runs.
type ControlRequest struct {
	Op ControlOp `json:"op"`
	state.Operator
	Until time.Time `json:"until,omitzero"`  // hold
	Name  string    `json:"name,omitempty"`  // unblock
	Level int       `json:"level,omitempty"` // pin, unblock
	Block bool      `json:"block,omitempty"` // rollback
	// PID is the process the asker takes for the daemon (reload --pid):
	// the daemon refuses unless it is that process.
	PID int `json:"pid,omitempty"`
}

// ControlResult is the verdict on a request: OK only when what was asked
// happened; Message says what happened, or why not.
type ControlResult struct {
	OK      bool   `json:"ok"`
	Message string `json:"message"`
	// PID is the daemon that judged (0: the command itself, no daemon
	// running).
	PID int `json:"pid,omitempty"`
}

// Verdict is the result of a step that returned msg, err.
func Verdict(msg string, err error) ControlResult {
	if err != nil {
		return ControlResult{Message: err.Error()}
	}
	return ControlResult{OK: true, Message: msg}
}

// OperatorRollback is `klp-agent rollback`: step back from the current
// patch and say where to.
func (a *Agent) OperatorRollback(ctx context.Context, r ControlRequest) (string, error) {
	if err := a.Rollback(ctx, state.CauseOperator, "operator: "+r.Reason, nil, r.Block); err != nil {
		return "", err
	}
	k := a.kernel()
	now := string(k.Phase) + ", no patch"
	if k.Current != nil {
		now = string(k.Phase) + " " + k.Current.ID()
	}
	msg := "rolled back; now " + now
	if r.Block {
		msg += " (the patch rolled back from is blocked here)"
	}
	return msg, nil
}

// Control takes a host control other than poll: it changes the state,
// saves it and logs who, when and why.
func (a *Agent) Control(r ControlRequest) (string, error) {
	k := a.kernel()
	var msg string
	switch r.Op {
	case OpHold:
		a.st.Hold = &state.Hold{Operator: r.Operator, Until: r.Until}
		msg = "held: no new levels"
		if !r.Until.IsZero() {
			msg += " until " + r.Until.UTC().Format(time.RFC3339)
		}
		msg += "; health watching and rollbacks go on"
	case OpResume:
		if a.st.Hold == nil {
			return "not held", nil
		}
		a.st.Hold = nil
		msg = "resumed: new levels may be applied"
	case OpPin:
		if r.Level < 1 {
			return "", fmt.Errorf("%w: pin level %d (must be >= 1)", ErrControl, r.Level)
		}
		k.Pin = &state.Pin{Operator: r.Operator, Level: r.Level}
		msg = fmt.Sprintf("pinned kernel %s at level %d: nothing above it is applied", a.d.Host.Kernel, r.Level)
		if c := k.Current; c != nil && c.Level > r.Level {
			msg += fmt.Sprintf(" (level %d stays applied; `klp-agent rollback` steps back)", c.Level)
		}
	case OpUnpin:
		if k.Pin == nil {
			return "not pinned", nil
		}
		k.Pin = nil
		msg = "pin cleared"
	case OpUnblock:
		if !k.Unblock(r.Name, r.Level) {
			return "", fmt.Errorf("%w: %s@%d is not blocked for kernel %s", ErrControl, r.Name, r.Level, a.d.Host.Kernel)
		}
		msg = fmt.Sprintf("unblocked %s@%d: it may be applied again", r.Name, r.Level)
	default:
		return "", fmt.Errorf("%w: unknown control %q", ErrControl, r.Op)
	}
	if err := a.save(); err != nil {
		return "", err
	}
	fields := []zap.Field{logging.MessageID(MsgControl), zap.String("KLP_CONTROL", string(r.Op)), zap.String("KLP_OPERATOR", r.By),
		zap.String("KLP_CONTROL_REASON", r.Reason)}
	if r.Level > 0 {
		fields = append(fields, zap.Int("KLP_LEVEL", r.Level))
	}
	if r.Name != "" {
		fields = append(fields, zap.String("KLP_PATCH", r.Name))
	}
	why := ""
	if r.Reason != "" {
		why = ": " + r.Reason
	}
	a.log().Warn(fmt.Sprintf("%s; asked by %s%s", msg, r.By, why), fields...)
	a.recordControl(r)
	return msg, nil
}

// ParsePatchID splits NAME@LEVEL.
func ParsePatchID(s string) (string, int, error) {
	name, lv, ok := strings.Cut(s, "@")
	level, err := strconv.Atoi(lv)
	if !ok || err != nil || level < 1 || !manifest.ValidName(name) {
		return "", 0, fmt.Errorf("%w: %q is not NAME@LEVEL", ErrControl, s)
	}
	return name, level, nil
}

// Gate says why a new level may not be applied now ("" when it may) and,
// when that ends by itself, when: the kill switch, a hold, the pin is
// applied in selection, a closed maintenance window.
func (a *Agent) Gate() (string, time.Time) {
	now := a.now()
	switch {
	case a.d.KillSwitch != "":
		return "kill switch: " + a.d.KillSwitch, time.Time{}
	case a.st.Hold.Active(now):
		h := a.st.Hold
		why := "held by " + h.By + " until resumed"
		if !h.Until.IsZero() {
			why = "held by " + h.By + " until " + h.Until.UTC().Format(time.RFC3339)
		}
		if h.Reason != "" {
			why += ": " + h.Reason
		}
		return why, h.Until
	case !a.d.Windows.Open(now):
		next := a.d.Windows.NextOpen(now)
		return "outside the maintenance windows (" + a.d.Windows.String() + "), next opens " + next.UTC().Format(time.RFC3339), next
	}
	return "", time.Time{}
}

// PollOnce is `klp-agent poll` without a daemon: poll, record, converge.
func (a *Agent) PollOnce(ctx context.Context) (string, error) {
	src := a.d.Source
	if src == nil {
		return "", errors.New("manifest.url is not set: nothing to poll")
	}
	res, err := src.Poll(ctx)
	a.recordPoll(res, err)
	if err != nil {
		return "", fmt.Errorf("poll: %w", err)
	}
	if m := res.Manifest; m != nil && !m.Expired(a.now()) {
		if err := a.Converge(ctx, m); err != nil {
			return "", err
		}
	}
	return a.Outcome(), nil
}

// Outcome describes the state after a poll, for `klp-agent poll`.
func (a *Agent) Outcome() string {
	k := a.kernel()
	s := "manifest: none"
	if p := a.st.LastPoll; p != nil {
		s = fmt.Sprintf("manifest version %d", p.ManifestVersion)
		if !p.OK {
			s += ", poll failed: " + p.Error
		}
	}
	s += "; now " + string(k.Phase)
	if k.Current != nil {
		s += " " + k.Current.ID()
	}
	if why, _ := a.Gate(); why != "" {
		s += "; new levels wait: " + why
	}
	return s
}

// LoadState reads the state without touching the kernel, for a control
// taken while no daemon runs.
func (a *Agent) LoadState() error {
	st, err := a.d.Store.Load()
	if err != nil {
		return err
	}
	a.st = st
	return nil
}

// KillSwitch says why nothing is applied in this boot ("" when the agent may).
func (a *Agent) KillSwitch() string { return a.d.KillSwitch }
