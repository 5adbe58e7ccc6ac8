package health

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// KindCommand is the operator health command failing. It is not
// crash-class: the policy decides what it is worth (policy.go).
const KindCommand = kindCommand

// ErrUnhealthy is the operator command saying the service is not well:
// a non-zero exit, a timeout, or a command that could not start.
var ErrUnhealthy = errors.New("health command failed")

// Command is the operator's own health check, as Meta counts application
// alerts: argv run directly (never through a shell), with a timeout.
type Command struct {
	Argv     []string
	Timeout  time.Duration // 0 = 30 s
	Every    time.Duration // 0 = 1 min
	Failures int           // consecutive failures that make one event; 0 = 3
}

// MaxCommandOutput bounds what is kept of a check's output: the end,
// where a failing check says why.
const MaxCommandOutput = 4 << 10

// CheckError is one failed check. It wraps ErrUnhealthy, and
// context.DeadlineExceeded when the check timed out.
type CheckError struct {
	Argv0    string
	ExitCode int // -1: killed, timed out or not started
	TimedOut bool
	Output   string // the last MaxCommandOutput bytes of stdout and stderr
	Err      error  // from os/exec, or the timeout
}

func (e *CheckError) Error() string { return "health command " + e.Argv0 + ": " + e.reason() }

// reason is the error without the command's name: its cause and the end
// of its output, on one line.
func (e *CheckError) reason() string {
	tail := strings.TrimSpace(e.Output)
	if tail == "" {
		return e.Err.Error()
	}
	if len(tail) > 300 {
		tail = "..." + tail[len(tail)-300:]
	}
	return e.Err.Error() + ": " + oneLine(strings.ReplaceAll(tail, "\n", " | "), 400)
}

// Unwrap lets errors.Is see ErrUnhealthy and the cause.
func (e *CheckError) Unwrap() []error { return []error{ErrUnhealthy, e.Err} }

// tailBuffer keeps the last MaxCommandOutput bytes written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= MaxCommandOutput {
		t.b = append(t.b[:0], p[len(p)-MaxCommandOutput:]...)
		return n, nil
	}
	if over := len(t.b) + len(p) - MaxCommandOutput; over > 0 {
		t.b = t.b[:copy(t.b, t.b[over:])]
	}
	t.b = append(t.b, p...)
	return n, nil
}

func (c Command) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return 30 * time.Second
}

// Check runs the command once: nil on exit 0, else a *CheckError
// (wrapping ErrUnhealthy). When ctx ends first, the error wraps ctx's and
// not ErrUnhealthy: the agent stopping says nothing about the service.
func (c Command) Check(ctx context.Context) error {
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		return errors.New("health command: empty argv")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("health command %s: %w", c.Argv[0], err)
	}
	to := c.timeout()
	cctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	cmd := exec.CommandContext(cctx, c.Argv[0], c.Argv[1:]...)
	// Its own process group, so a timeout kills what it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A grandchild that left the group and holds the output open does not
	// hold the check past this.
	cmd.WaitDelay = time.Second
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if cmd.Process != nil {
		// What it left running in its group goes too: the check runs every
		// minute and would pile them up. The kernel keeps a group's id
		// while any member lives, so this reaches only them (or, with none
		// left, nothing: the id is free again only after pids wrap).
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	exited0 := cmd.ProcessState != nil && cmd.ProcessState.Success()
	if err == nil || (errors.Is(err, exec.ErrWaitDelay) && exited0 && cctx.Err() == nil) {
		return nil // the exit status is the verdict, even if a child kept the output open
	}
	if ctx.Err() != nil {
		return fmt.Errorf("health command %s: %w", c.Argv[0], ctx.Err())
	}
	ce := &CheckError{Argv0: c.Argv[0], ExitCode: -1, Output: string(out.b), Err: err}
	if cmd.ProcessState != nil {
		ce.ExitCode = cmd.ProcessState.ExitCode()
	}
	if errors.Is(cctx.Err(), context.DeadlineExceeded) {
		ce.TimedOut, ce.ExitCode = true, -1
		ce.Err = fmt.Errorf("timed out after %s: %w", to, context.DeadlineExceeded)
	}
	return ce
}

// Run checks every Every until ctx ends and sends one event when Failures
// checks in a row have failed; after a success the count starts again.
// The first check is one period in, so a service starting with the agent
// has that long to come up.
func (c Command) Run(ctx context.Context, out chan<- Event) error {
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		return errors.New("health command: empty argv")
	}
	every, need := c.Every, c.Failures
	if every <= 0 {
		every = time.Minute
	}
	if need <= 0 {
		need = 3
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	failed := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		err := c.Check(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			failed = 0
			continue
		}
		if failed++; failed != need {
			continue // not yet, or already told
		}
		select {
		case out <- commandEvent(c.Argv[0], failed, err):
		case <-ctx.Done():
			return nil
		}
	}
}

func commandEvent(argv0 string, failed int, err error) Event {
	ev := Event{Kind: KindCommand, Source: SourceCommand, At: time.Now()}
	reason := err.Error()
	var ce *CheckError
	if errors.As(err, &ce) {
		reason = ce.reason()
		if o := strings.TrimRight(ce.Output, "\n"); o != "" {
			for _, l := range strings.Split(o, "\n") {
				ev.Lines = append(ev.Lines, oneLine(l, 1024))
			}
		}
	}
	ev.Header = fmt.Sprintf("health command %s failed %d times in a row: %s", argv0, failed, reason)
	return ev
}
