package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/manifest"
)

// Something that is not a socket where the control socket goes is left
// alone; the daemon runs on (health watching and rollbacks matter more)
// and says why no command can reach it. Request files an older version
// left are removed, with a warning.
func TestControlSocketPathTaken(t *testing.T) {
	root, stateDir, keys := hostRoot(t), t.TempDir(), t.TempDir()
	_, pub, _, _ := manifest.GenerateKey()
	os.WriteFile(filepath.Join(keys, "k.pub"), pub, 0o644)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeConfig(t, cfg, fmt.Sprintf("trust:\n  keys_dir: %s\nhealth:\n  kmsg: false\n  taint: false\n  kdump_dir: \"\"\npaths:\n  root: %s\n  state_dir: %s\n  status_file: %s\nlog:\n  format: console\n",
		keys, root, stateDir, filepath.Join(stateDir, "status.json")))
	l := state.Layout{Dir: stateDir}
	os.MkdirAll(l.ControlDir(), 0o700)
	os.WriteFile(l.ControlSocketPath(), []byte("not a socket"), 0o600)
	old := filepath.Join(stateDir, "rollback-request.json")
	os.WriteFile(old, []byte(`{"reason":"x"}`), 0o600)

	logs, stop := runDaemon(t, cfg)
	waitLog(t, logs, "control socket: unsafe control socket path: "+l.ControlSocketPath()+" exists and is not a socket: remove it; host controls (hold, rollback, reload, ...) cannot reach this daemon")
	waitLog(t, logs, "removed "+old+", a request left for an older klp-agent")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(l.ControlSocketPath()); err != nil || string(b) != "not a socket" {
		t.Fatalf("the file at the socket path: %q %v", b, err)
	}
	if _, err := os.Lstat(old); !os.IsNotExist(err) {
		t.Fatalf("old request kept: %v", err)
	}
}
