package state

import (
	"fmt"
	"os"
	"path/filepath"
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

// Revocations is the revocation channel's record: the newest
// revocations.json document accepted (its anti-rollback floor, and its
// entries, in force across restarts).
func (l Layout) Revocations() string { return filepath.Join(l.Dir, "revocations-record.json") }

// TrustedRoot is the newest root of trust this host followed the chain
// to (with trust.root configured), byte for byte as published.
func (l Layout) TrustedRoot() string { return filepath.Join(l.Dir, "root.json") }

// TrustedRootOrigin records which configured trust.root the chain in
// TrustedRoot started from (manifest.RootOriginPath of TrustedRoot, which
// the manifest package derives itself: it imports nothing of agent/).
func (l Layout) TrustedRootOrigin() string { return filepath.Join(l.Dir, "root.origin.json") }

// MetricsListenFailure holds why the daemon could not listen on
// metrics.listen (absent when it could, or nothing is configured), for
// status.
func (l Layout) MetricsListenFailure() string { return filepath.Join(l.Dir, "metrics-listen-failed") }

// ControlDir holds the control socket: a directory of its own, 0700, so
// only root reaches the socket whatever the state directory's own mode.
func (l Layout) ControlDir() string { return filepath.Join(l.Dir, "control") }

// History is the event history (agent/history): JSON lines, appended; at
// its size limit it is renamed to HistoryOld, replacing that.
func (l Layout) History() string { return filepath.Join(l.Dir, "history.jsonl") }

// HistoryOld is the rotated, older half of the history.
func (l Layout) HistoryOld() string { return filepath.Join(l.Dir, "history.jsonl.1") }

// Uninstalling marks a `klp-agent uninstall` in progress: the package's
// %preun (`klp-agent uninstall --check`) lets the erase it runs through.
func (l Layout) Uninstalling() string { return filepath.Join(l.Dir, "uninstalling.json") }

// ControlSocket is the socket's name in ControlDir: the one channel the
// CLI asks the running daemon through (agent/control).
const ControlSocket = "klp-agent.sock"

// ControlSocketPath is ControlSocket's full path, for messages.
func (l Layout) ControlSocketPath() string { return filepath.Join(l.ControlDir(), ControlSocket) }

// OldRequests are the request and answer files older versions handed
// their daemon through the state dir (rollback-request.json,
// control-<id>.request.json, control-<id>.result.json): none is read any
// more, and the daemon removes them at start.
func (l Layout) OldRequests() []string {
	var out []string
	if _, err := os.Lstat(filepath.Join(l.Dir, "rollback-request.json")); err == nil {
		out = append(out, filepath.Join(l.Dir, "rollback-request.json"))
	}
	for _, pat := range []string{"control-*.request.json", "control-*.result.json"} {
		m, _ := filepath.Glob(filepath.Join(l.Dir, pat))
		out = append(out, m...)
	}
	return out
}
