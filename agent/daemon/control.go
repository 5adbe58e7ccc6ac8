package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/control"
	"github.com/klp-agent/klp-agent/agent/state"
)

// ErrBusy is the state lock held by a process that does not answer on
// the control socket (another klp-agent command acting on the state, or
// a daemon still starting): nothing was asked or done.
var ErrBusy = errors.New("the state is locked by another klp-agent process and no daemon answers on the control socket")

// ErrNoDaemonRuns is a request only a running daemon can take (reload)
// with none running.
var ErrNoDaemonRuns = errors.New("no daemon runs (nothing holds the state lock): nothing to reload, nothing signalled")

// retryEvery is how often Control looks again for the lock or the socket.
const retryEvery = 100 * time.Millisecond

// Control takes req on this host and returns the verdict: the running
// daemon's, asked through its control socket, or, when no daemon runs
// (the state lock is free), its own, acting on the state directly while
// holding the lock, as the daemon would. wait bounds how long it waits
// for the lock or the socket and then for the daemon's answer; stderr gets
// the log of a step taken directly. An error is no verdict:
// control.ErrNoAnswer (asked, not answered: it may still be taken),
// ErrBusy, ErrNoDaemonRuns, or a failure before anything was asked.
func (h *Host) Control(ctx context.Context, req agent.ControlRequest, wait time.Duration, stderr io.Writer) (agent.ControlResult, error) {
	deadline := time.Now().Add(wait)
	l := h.Layout()
	for {
		store := h.Store()
		err := store.Lock()
		if err == nil {
			defer store.Unlock()
			if req.Op == agent.OpReload {
				return agent.ControlResult{}, ErrNoDaemonRuns
			}
			return h.direct(ctx, store, req, stderr), nil
		}
		if !errors.Is(err, state.ErrLocked) {
			return agent.ControlResult{}, err
		}
		res, err := control.Ask(ctx, l.ControlDir(), state.ControlSocket, req, time.Until(deadline))
		if !errors.Is(err, control.ErrNoDaemon) {
			return res, err
		}
		if !time.Now().Add(retryEvery).Before(deadline) {
			return res, fmt.Errorf("%w (%s): nothing was done", ErrBusy, l.ControlSocketPath())
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(retryEvery):
		}
	}
}

// direct takes req with no daemon running, holding the state lock.
func (h *Host) direct(ctx context.Context, store *state.Store, req agent.ControlRequest, stderr io.Writer) agent.ControlResult {
	log, err := h.Logger(stderr)
	if err != nil {
		return agent.Verdict("", err)
	}
	a, err := h.Agent(log, store, nil)
	if err != nil {
		return agent.Verdict("", err)
	}
	switch req.Op {
	case agent.OpPoll, agent.OpRollback:
		if req.Op == agent.OpPoll && a.Source() == nil {
			return agent.Verdict("", errors.New("manifest.url is not set: nothing to poll"))
		}
		// As the daemon would: the boot's re-apply (or a rollback a
		// killed daemon recorded) first.
		if err := a.Start(ctx); err != nil {
			return agent.Verdict("", err)
		}
		defer a.Stop()
		if req.Op == agent.OpPoll {
			return agent.Verdict(a.PollOnce(ctx))
		}
		return agent.Verdict(a.OperatorRollback(ctx, req))
	default:
		if err := a.LoadState(); err != nil {
			return agent.Verdict("", err)
		}
		return agent.Verdict(a.Control(req))
	}
}

// reloadCall is a reload asked through the control socket, taken by Run
// as it takes a SIGHUP.
type reloadCall struct {
	reply chan agent.ControlResult // room for the one answer
}

// serveControl answers the control socket until ctx ends: a reload goes
// to Run (which supervises it), the rest to the loop. A socket that cannot
// be set up does not stop the agent (health watching and rollbacks matter
// more), but is loud: the CLI then says no daemon answers.
func serveControl(ctx context.Context, h *Host, loop *agent.Loop, reloads chan<- reloadCall, log *zap.Logger) (done <-chan struct{}) {
	l := h.Layout()
	for _, p := range l.OldRequests() {
		log.Warn("removed " + p + ", a request left for an older klp-agent: requests go through " + l.ControlSocketPath() + " now; ask again")
		os.Remove(p)
	}
	ch := make(chan struct{})
	srv, err := control.Listen(l.ControlDir(), state.ControlSocket)
	if err != nil {
		log.Error("control socket: " + err.Error() + "; host controls (hold, rollback, reload, ...) cannot reach this daemon")
		close(ch)
		return ch
	}
	pid := os.Getpid()
	go func() {
		defer close(ch)
		srv.Serve(ctx, func(ctx context.Context, req agent.ControlRequest) (agent.ControlResult, error) {
			if req.PID != 0 && req.PID != pid {
				return agent.ControlResult{PID: pid, Message: fmt.Sprintf("refused: pid %d is not the klp-agent daemon (the daemon holding %s is pid %d); nothing was signalled",
					req.PID, l.LockFile(), pid)}, nil
			}
			if req.Op != agent.OpReload {
				return loop.Ask(ctx, req)
			}
			c := reloadCall{reply: make(chan agent.ControlResult, 1)}
			select {
			case reloads <- c:
			case <-ctx.Done():
				return agent.ControlResult{}, ctx.Err()
			}
			select {
			case res := <-c.reply:
				res.PID = pid
				return res, nil
			case <-ctx.Done():
				return agent.ControlResult{}, ctx.Err()
			}
		})
	}()
	return ch
}
