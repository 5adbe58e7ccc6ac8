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
	controlsock "github.com/klp-agent/klp-agent/agent/control"
	"github.com/klp-agent/klp-agent/agent/daemon"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/sanitize"
	"github.com/klp-agent/klp-agent/manifest"
)

func cmdHold(env *Env, args []string) error {
	fs := newFlags(env, "hold", "hold [--until TIME] [--reason TEXT] [--config PATH] [--wait DURATION]")
	path, reason, wait := controlFlags(fs, "requested with klp-agent hold")
	until := fs.String("until", "", "end the hold by itself at this time: RFC 3339 (2027-01-01T06:00:00Z), a date alone (2027-01-01: 00:00 UTC that day), or a duration from now (2h, 7d)")
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
	fs := newFlags(env, "resume", "resume [--reason TEXT] [--config PATH] [--wait DURATION]")
	path, reason, wait := controlFlags(fs, "requested with klp-agent resume")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	return control(env, *path, *reason, *wait, agent.ControlRequest{Op: agent.OpResume})
}

func cmdPin(env *Env, args []string) error {
	fs := newFlags(env, "pin", "pin LEVEL | pin --clear  [--reason TEXT] [--config PATH] [--wait DURATION]")
	path, reason, wait := controlFlags(fs, "requested with klp-agent pin")
	clearPin := fs.Bool("clear", false, "remove the pin")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *clearPin {
		if fs.NArg() != 0 {
			return usageErr(fs, "pin --clear takes no LEVEL, got %q", fs.Args())
		}
		return control(env, *path, *reason, *wait, agent.ControlRequest{Op: agent.OpUnpin})
	}
	if fs.NArg() == 0 {
		return usageErr(fs, "LEVEL is missing: pin LEVEL, or pin --clear to remove the pin")
	}
	if fs.NArg() > 1 {
		return usageErr(fs, "unexpected arguments %q after LEVEL", fs.Args()[1:])
	}
	level, err := strconv.Atoi(fs.Arg(0))
	if err != nil || level < 1 {
		return usageErr(fs, "LEVEL %q must be a number >= 1", fs.Arg(0))
	}
	return control(env, *path, *reason, *wait, agent.ControlRequest{Op: agent.OpPin, Level: level})
}

func cmdUnblock(env *Env, args []string) error {
	fs := newFlags(env, "unblock", "unblock NAME@LEVEL [--reason TEXT] [--config PATH] [--wait DURATION]")
	path, reason, wait := controlFlags(fs, "requested with klp-agent unblock")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageErr(fs, "NAME@LEVEL is missing")
	}
	if fs.NArg() > 1 {
		return usageErr(fs, "unexpected arguments %q after NAME@LEVEL", fs.Args()[1:])
	}
	name, level, err := agent.ParsePatchID(fs.Arg(0))
	if err != nil {
		return usageErr(fs, "%q is not NAME@LEVEL", fs.Arg(0))
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

func cmdRollback(env *Env, args []string) error {
	fs := newFlags(env, "rollback", "rollback [--config PATH] [--block] [--reason TEXT] [--wait DURATION]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	block := fs.Bool("block", false, "never re-apply the current patch on this host")
	reason := fs.String("reason", "requested with klp-agent rollback", "why, for the journal and the block record")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for a running daemon to answer")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	return control(env, *path, *reason, *wait, agent.ControlRequest{Op: agent.OpRollback, Block: *block})
}

// cmdReload is the unit's ExecReload: it asks the running daemon to read
// its configuration again and reports the daemon's verdict (a refused
// configuration fails `systemctl reload` with the daemon's reason, the
// running one kept). It signals nothing.
func cmdReload(env *Env, args []string) error {
	fs := newFlags(env, "reload", "reload [--pid PID] [--config PATH] [--wait DURATION]")
	path := fs.String("config", config.DefaultPath, "main configuration file (it names the state directory, where the daemon's control socket is)")
	pid := fs.Int("pid", 0, "refuse unless the daemon is this process ($MAINPID in the unit)")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for the daemon's answer")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *pid < 0 || *pid == 1 {
		return usageErr(fs, "--pid %d is no daemon's", *pid)
	}
	h, err := daemon.LoadHost(*path)
	if err == nil {
		err = h.CheckTrust()
	}
	if err != nil {
		// Without it the state directory, and so the socket, is unknown.
		return fmt.Errorf("configuration refused, not sent to the daemon (it keeps its current one): %w", err)
	}
	return ask(env, h, *wait, agent.ControlRequest{Op: agent.OpReload, PID: *pid})
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

// untilDate is --until's date alone: midnight UTC that day, the same
// instant on every host of a fleet whatever its time zone.
const untilDate = "2006-01-02"

// parseUntil takes an RFC 3339 time, a date alone (00:00 UTC) or a
// duration from now.
func parseUntil(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation(untilDate, s, time.UTC); err == nil {
		return t, nil
	}
	d, err := manifest.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("%w: --until %q: an RFC 3339 time, a date (YYYY-MM-DD, 00:00 UTC) or a positive duration (2h, 7d)", errUsage, s)
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

// control takes a host control or a rollback, signed with who asked and
// why.
func control(env *Env, path, reason string, wait time.Duration, req agent.ControlRequest) error {
	h, err := daemon.LoadHost(path)
	if err != nil {
		return err
	}
	req.Operator = state.Operator{By: operator(), At: env.Now(), Reason: reason}
	return ask(env, h, wait, req)
}

// ask prints the verdict on req: the running daemon's, or the command's
// own when none runs. Exit 0 only when it was done, 1 when refused or
// failed (with why), ExitNoVerdict when asked but not answered.
func ask(env *Env, h *daemon.Host, wait time.Duration, req agent.ControlRequest) error {
	res, err := h.Control(env.Ctx, req, wait, env.Stderr)
	switch {
	case errors.Is(err, controlsock.ErrNoAnswer):
		return exitCodeError{ExitNoVerdict, fmt.Errorf("%w; whether it was done is unknown: see klp-agent status before asking again", err)}
	case err != nil:
		return err
	case !res.OK && res.PID != 0:
		return fmt.Errorf("the daemon (pid %d) answered: %s", res.PID, sanitize.Text(res.Message))
	case !res.OK:
		return errors.New(sanitize.Text(res.Message))
	}
	// The daemon's verdict may quote a mirror's reason phrase.
	fmt.Fprintln(env.Stdout, sanitize.Text(res.Message))
	return nil
}
