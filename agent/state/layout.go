package state

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// Layout is the state directory's shape: every file the agent keeps there
// is named here and nowhere else, for the daemon, `status`, the manifest
// cache and the CLI alike.
type Layout struct{ Dir string }

// StateFile is the agent's memory (State).
func (l Layout) StateFile() string { return filepath.Join(l.Dir, "state.json") }

// LockFile is held (flock) by whoever acts on the state.
func (l Layout) LockFile() string { return filepath.Join(l.Dir, "lock") }

// RPMDir holds the verified RPM copies.
func (l Layout) RPMDir() string { return filepath.Join(l.Dir, "rpms") }

// RPM is the verified copy of the RPM with digest sha256, named by it
// (validated, so it is a safe path component).
func (l Layout) RPM(sha256 string) (string, error) {
	if !shaRE.MatchString(sha256) {
		return "", fmt.Errorf("%w: sha256 %q", ErrBadRecord, sha256)
	}
	return filepath.Join(l.RPMDir(), sha256+".rpm"), nil
}

// ModuleDir holds a copy of each applied level's module, loaded directly
// when a rollback must take the bad patch out at once.
func (l Layout) ModuleDir() string { return filepath.Join(l.Dir, "modules") }

// Module is the module copy of the RPM with digest sha256.
func (l Layout) Module(sha256 string) (string, error) {
	if !shaRE.MatchString(sha256) {
		return "", fmt.Errorf("%w: sha256 %q", ErrBadRecord, sha256)
	}
	return filepath.Join(l.ModuleDir(), sha256+".ko"), nil
}

// ManifestEnvelope is the last accepted manifest envelope, byte for byte.
func (l Layout) ManifestEnvelope() string { return filepath.Join(l.Dir, "manifest.dsse.json") }

// ManifestValidators are that envelope's ETag and Last-Modified.
func (l Layout) ManifestValidators() string { return filepath.Join(l.Dir, "manifest.validators.json") }

// ManifestVersion is the anti-rollback record: the highest manifest
// version accepted.
func (l Layout) ManifestVersion() string { return filepath.Join(l.Dir, "manifest-version.json") }

// TrustedRoot is the newest root of trust this host followed the chain
// to (with trust.root configured), byte for byte as published.
func (l Layout) TrustedRoot() string { return filepath.Join(l.Dir, "root.json") }

// MetricsListenFailure holds why the daemon could not listen on
// metrics.listen (absent when it could, or nothing is configured), for
// status.
func (l Layout) MetricsListenFailure() string { return filepath.Join(l.Dir, "metrics-listen-failed") }

// History is the event history (agent/history): JSON lines, appended; at
// its size limit it is renamed to HistoryOld, replacing that.
func (l Layout) History() string { return filepath.Join(l.Dir, "history.jsonl") }

// HistoryOld is the rotated, older half of the history.
func (l Layout) HistoryOld() string { return filepath.Join(l.Dir, "history.jsonl.1") }

// Uninstalling marks a `klp-agent uninstall` in progress: the package's
// %preun (`klp-agent uninstall --check`) lets the erase it runs through.
func (l Layout) Uninstalling() string { return filepath.Join(l.Dir, "uninstalling.json") }

// RollbackRequest is where an operator's rollback waits for the daemon.
func (l Layout) RollbackRequest() string { return filepath.Join(l.Dir, "rollback-request.json") }

// Host controls (hold, resume, pin, unblock, poll) wait for the daemon in
// control-<id>.request.json and get their answer in control-<id>.result.json.
const (
	controlPrefix        = "control-"
	ControlRequestSuffix = ".request.json"
	controlResultSuffix  = ".result.json"
)

// ControlRequest is where control request id waits for the daemon.
func (l Layout) ControlRequest(id string) (string, error) {
	if !controlIDRE.MatchString(id) {
		return "", fmt.Errorf("%w: control id %q", ErrBadRecord, id)
	}
	return filepath.Join(l.Dir, controlPrefix+id+ControlRequestSuffix), nil
}

// ControlResult is the daemon's answer to control request id.
func (l Layout) ControlResult(id string) (string, error) {
	if !controlIDRE.MatchString(id) {
		return "", fmt.Errorf("%w: control id %q", ErrBadRecord, id)
	}
	return filepath.Join(l.Dir, controlPrefix+id+controlResultSuffix), nil
}

// ControlRequestID is the id of a control request file name ("" when name
// is none).
func ControlRequestID(name string) string {
	id, ok := strings.CutPrefix(name, controlPrefix)
	if !ok {
		return ""
	}
	if id, ok = strings.CutSuffix(id, ControlRequestSuffix); !ok || !controlIDRE.MatchString(id) {
		return ""
	}
	return id
}

var controlIDRE = regexp.MustCompile(`^[0-9a-z-]{1,64}$`)
