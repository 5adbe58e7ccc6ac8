package daemon

import (
	"errors"
	"fmt"
)

// ErrConfig marks a start-up error in the configuration or in what it
// names (trusted keys, host id, state directory): restarting the agent
// cannot fix it, so `klp-agent run` exits with EX_CONFIG (78), which the
// unit's RestartPreventExitStatus= keeps systemd from restarting.
var ErrConfig = errors.New("configuration error")

// ErrNotConfigured is the shipped configuration: no manifest.url and no
// trusted keys. It is an ErrConfig too.
var ErrNotConfigured = errors.New("not configured")

// configError keeps the underlying message (and errors.Is on it) and adds
// ErrConfig.
type configError struct{ err error }

func (e configError) Error() string   { return e.err.Error() }
func (e configError) Unwrap() []error { return []error{e.err, ErrConfig} }

// asConfigError marks err (if any) as an ErrConfig.
func asConfigError(err error) error {
	if err == nil {
		return nil
	}
	return configError{err}
}

// checkConfigured refuses the shipped, unconfigured state in one line that
// says what to set. A host with keys but no manifest.url still runs: it
// re-applies its recorded patch and does not poll.
func (h *Host) checkConfigured(configPath string) error {
	if h.Config.Manifest.URL != "" || len(h.Trust.Keys) > 0 {
		return nil
	}
	return configError{fmt.Errorf("%w: set manifest.url in %s (or a drop-in) and put the publisher's *.pub keys in %s; `klp-agent check-config` shows what is missing",
		ErrNotConfigured, configPath, h.Config.Trust.KeysDir)}
}
