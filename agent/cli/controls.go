package cli

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/daemon"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/manifest"
)

// errControlFailed makes a control's refusal or a failed poll exit 1
// after its message went to stdout.
var errControlFailed = errors.New("failed")

func cmdHold(env *Env, args []string) error {
	fs := newFlags(env, "hold", "hold [--until TIME] [--reason TEXT] [--config PATH]")
	path, reason, wait := controlFlags(fs, "requested with klp-agent hold")
	until := fs.String("until", "", "end the hold by itself at this RFC 3339 time or after this duration (2h, 7d)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	req := agent.ControlRequest{Op: agent.OpHold}
	if *until != "" {
		t, err := parseUntil(*until, env.Now())
		if err != nil {
			return err
		}
		if !t.After(env.Now()) {
			return fmt.Errorf("%w: --until %s is not in the future", errUsage, t.UTC().Format(time.RFC3339))
		}
		req.Until = t
	}
	return control(env, *path, *reason, *wait, req)
}

func cmdResume(env *Env, args []string) error {
	fs := newFlags(env, "resume", "resume [--reason TEXT] [--config PATH]")
	path, reason, wait := controlFlags(fs, "requested with klp-agent resume")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	return control(env, *path, *reason, *wait, agent.ControlRequest{Op: agent.OpResume})
}

func cmdPin(env *Env, args []string) error {
	fs := newFlags(env, "pin", "pin LEVEL | pin --clear  [--reason TEXT] [--config PATH]")
	path, reason, wait := controlFlags(fs, "requested with klp-agent pin")
	clearPin := fs.Bool("clear", false, "remove the pin")
	want := 1
	for _, a := range args {
		if a == "--clear" || a == "-clear" {
			want = 0
		}
	}
	if err := parse(fs, args, want); err != nil {
		return err
	}
	if *clearPin {
		return control(env, *path, *reason, *wait, agent.ControlRequest{Op: agent.OpUnpin})
	}
	level, err := strconv.Atoi(fs.Arg(0))
	if err != nil || level < 1 {
		return fmt.Errorf("%w: LEVEL %q must be a number >= 1", errUsage, fs.Arg(0))
	}
	return control(env, *path, *reason, *wait, agent.ControlRequest{Op: agent.OpPin, Level: level})
}

func cmdUnblock(env *Env, args []string) error {
	fs := newFlags(env, "unblock", "unblock NAME@LEVEL [--reason TEXT] [--config PATH]")
	path, reason, wait := controlFlags(fs, "requested with klp-agent unblock")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	name, level, err := agent.ParsePatchID(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return control(env, *path, *reason, *wait, agent.ControlRequest{Op: agent.OpUnblock, Name: name, Level: level})
}

func cmdPoll(env *Env, args []string) error {
	fs := newFlags(env, "poll", "poll [--config PATH] [--wait DURATION]")
	path, reason, wait := controlFlags(fs, "requested with klp-agent poll")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	return control(env, *path, *reason, *wait, agent.ControlRequest{Op: agent.OpPoll})
}

func controlFlags(fs interface {
	String(name, value, usage string) *string
	Duration(name string, value time.Duration, usage string) *time.Duration
}, why string) (path, reason *string, wait *time.Duration) {
	path = fs.String("config", config.DefaultPath, "main configuration file")
	reason = fs.String("reason", why, "why, for the journal and status")
	wait = fs.Duration("wait", 2*time.Minute, "how long to wait for a running daemon to answer")
	return path, reason, wait
}

// parseUntil takes an RFC 3339 time or a duration from now.
func parseUntil(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := manifest.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("%w: --until %q: an RFC 3339 time or a positive duration (2h, 7d)", errUsage, s)
	}
	return now.Add(d), nil
}

// operator names who runs the command, for the journal: the sudo user, if
// any, and the uid.
func operator() string {
	uid := os.Getuid()
	if su := os.Getenv("SUDO_USER"); su != "" {
		return fmt.Sprintf("%s via sudo (uid %d)", su, uid)
	}
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return fmt.Sprintf("%s (uid %d)", u.Username, uid)
	}
	return fmt.Sprintf("uid %d", uid)
}

// control takes a host control: directly on the state when no daemon runs
// (the daemon reads it at start), else through the daemon, waiting for its
// answer.
func control(env *Env, path, reason string, wait time.Duration, req agent.ControlRequest) error {
	h, err := daemon.LoadHost(path)
	if err != nil {
		return err
	}
	req.Operator = state.Operator{By: operator(), At: env.Now(), Reason: reason}
	req.ID = agent.NewControlID(env.Now())
	store := h.Store()
	if err := store.Lock(); err == nil {
		defer store.Unlock()
		return controlDirect(env, h, store, req)
	} else if !errors.Is(err, state.ErrLocked) {
		return err
	}
	l := store.Layout()
	if err := agent.WriteControl(l, req); err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		res, ok, err := agent.ReadControlResult(l, req.ID)
		if err != nil {
			return err
		}
		if ok {
			fmt.Fprintln(env.Stdout, res.Message)
			if !res.OK {
				return fmt.Errorf("%s %w", req.Op, errControlFailed)
			}
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	p, _ := l.ControlRequest(req.ID)
	return fmt.Errorf("the daemon did not answer within %s (the request stays queued in %s)", wait, p)
}

// controlDirect takes a control with no daemon running.
func controlDirect(env *Env, h *daemon.Host, store *state.Store, req agent.ControlRequest) error {
	log, err := h.Logger(env.Stderr)
	if err != nil {
		return err
	}
	a, err := h.Agent(log, store, nil)
	if err != nil {
		return err
	}
	var msg string
	if req.Op == agent.OpPoll {
		if a.Source() == nil {
			return errors.New("manifest.url is not set: nothing to poll")
		}
		// As the daemon would: the boot's re-apply first, then the poll.
		if err := a.Start(env.Ctx); err != nil {
			return err
		}
		defer a.Stop()
		msg, err = a.PollOnce(env.Ctx)
	} else {
		if err = a.LoadState(); err != nil {
			return err
		}
		msg, err = a.Control(req)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(env.Stdout, msg)
	return nil
}
