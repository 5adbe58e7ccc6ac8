package cli

import (
	"errors"
	"fmt"

	"github.com/klp-agent/klp-agent/agent/daemon"
)

// ExitConfig is sysexits.h's EX_CONFIG: `klp-agent run` exits with it when
// the configuration cannot run (unconfigured, invalid, too few keys, an
// unloadable CA bundle or client certificate, an untrusted state
// directory). The unit lists it in RestartPreventExitStatus=, so an
// unconfigured host stays calm instead of restarting forever.
const ExitConfig = 78

// ExitNoVerdict is sysexits.h's EX_TEMPFAIL: a request was handed to the
// running daemon but no answer came (it stopped or was killed first, or
// --wait ran out). Unlike 1 it does not mean "not done": the daemon may
// have taken it, or may still; `klp-agent status` says which.
const ExitNoVerdict = 75

// answerCode is a command's answer as its exit status (status --check): the
// command printed the answer, Main prints nothing more.
type answerCode int

func (c answerCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// exitCodeError makes Main exit with code after printing err.
type exitCodeError struct {
	code int
	err  error
}

func (e exitCodeError) Error() string { return e.err.Error() }
func (e exitCodeError) Unwrap() error { return e.err }

// exitCode is the status Main exits with for a command's error that asks
// for one (0 when none does).
func exitCode(err error) int {
	var ec exitCodeError
	if errors.As(err, &ec) {
		return ec.code
	}
	return 0
}

// runExit maps the daemon's configuration errors to ExitConfig.
func runExit(err error) error {
	if errors.Is(err, daemon.ErrConfig) {
		return exitCodeError{ExitConfig, err}
	}
	return err
}
