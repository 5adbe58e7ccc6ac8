package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// KindCommand is the operator health command failing.
const KindCommand = kindCommand

// ErrUnhealthy is the operator command saying the service is not well.
var ErrUnhealthy = errors.New("health command failed")

// Command is the operator's own health check, as Meta counts application
// alerts: argv run directly (never through a shell), with a timeout.
type Command struct {
	Argv     []string
	Timeout  time.Duration // 0 = 30 s
	Every    time.Duration // 0 = 1 min
	Failures int           // consecutive failures that make one event; 0 = 3
}

const maxCommandOutput = 4 << 10

// limitedBuffer keeps the first maxCommandOutput bytes.
type limitedBuffer struct{ bytes.Buffer }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := maxCommandOutput - l.Len(); room > 0 {
		l.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// Check runs the command once: nil on exit 0, else an error wrapping
// ErrUnhealthy with the exit status and the output's tail.
func (c Command) Check(ctx context.Context) error {
	if len(c.Argv) == 0 {
		return errors.New("health command: empty argv")
	}
	to := c.Timeout
	if to <= 0 {
		to = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Argv[0], c.Argv[1:]...)
	// Its own process group, so a timeout kills what it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	tail := strings.TrimSpace(out.String())
	if len(tail) > 300 {
		tail = "..." + tail[len(tail)-300:]
	}
	switch {
	case err == nil:
		return nil
	case ctx.Err() == context.DeadlineExceeded:
		return fmt.Errorf("%w: %s timed out after %s: %s", ErrUnhealthy, c.Argv[0], to, tail)
	default:
		return fmt.Errorf("%w: %s: %v: %s", ErrUnhealthy, c.Argv[0], err, tail)
	}
}

// Run checks every Every until ctx ends and sends one event each time
// Failures consecutive checks have failed; a success starts the count
// again.
func (c Command) Run(ctx context.Context, out chan<- Event) error {
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
		failed++
		if failed%need != 0 {
			continue
		}
		ev := Event{Kind: KindCommand, Source: "command", At: time.Now(),
			Header: fmt.Sprintf("health command failed %d times in a row: %v", failed, err)}
		select {
		case out <- ev:
		case <-ctx.Done():
			return nil
		}
	}
}
