package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/state"
)

// checkHost is a configured host (manifest.url, one key, its own state
// dir and snapshot path) whose state records poll (nil: never polled).
func checkHost(t *testing.T, poll *state.Poll, withKey bool) (cfg, stateDir, snap string) {
	t.Helper()
	dir := t.TempDir()
	root, keys := t.TempDir(), filepath.Join(dir, "keys")
	stateDir, snap = filepath.Join(dir, "state"), filepath.Join(dir, "run", "status.json")
	writeHostRoot(t, root, testKernel, "0123456789abcdef0123456789abcdef")
	if err := os.MkdirAll(keys, 0o755); err != nil {
		t.Fatal(err)
	}
	if withKey {
		run(t, t0, "manifest", "keygen", "--out", filepath.Join(keys, "release"))
	}
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := (&state.Store{Dir: stateDir}).Save(&state.State{Kernels: map[string]*state.Kernel{}, LastPoll: poll}); err != nil {
		t.Fatal(err)
	}
	cfg = filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte("manifest:\n  url: https://patches.example/m.json\ntrust:\n  keys_dir: "+keys+
		"\npaths:\n  root: "+root+"\n  state_dir: "+stateDir+"\n  status_file: "+snap+"\n"), 0o644)
	return cfg, stateDir, snap
}

// lockState holds the state lock as a running daemon does, for the test.
func lockState(t *testing.T, stateDir string) {
	t.Helper()
	s := &state.Store{Dir: stateDir}
	if err := s.Lock(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Unlock() })
}

// status --check says what keeps the agent from its job, each with its own
// code: each case below used to exit 0, "up to date".
func TestStatusCheckSeesTheAgent(t *testing.T) {
	ok := &state.Poll{At: t0.Add(-time.Minute), OK: true, ManifestVersion: 3}
	for _, tt := range []struct {
		name   string
		poll   *state.Poll
		key    bool
		daemon string // "lock": the state lock held; "stopped": a snapshot of a clean stop; "": neither
		code   int
		want   string
	}{
		{"daemon running, polled", ok, true, "lock", agent.CheckUpToDate, "up to date"},
		{"daemon stopped", ok, true, "stopped", agent.CheckDaemonDown, "daemon not running: it stopped at 2026-11-25T11:00:00Z"},
		{"no daemon, no snapshot", ok, true, "", agent.CheckDaemonDown, "daemon not running: no process holds the state lock"},
		{"never polled", nil, true, "lock", agent.CheckNotPolling, "not polling: the daemon has not polled the manifest yet"},
		{"last good poll too old", &state.Poll{At: t0.Add(-time.Minute), Error: "connection refused", LastOK: t0.Add(-2 * time.Hour)}, true, "lock",
			agent.CheckNotPolling, "not polling: the last good poll was at 2026-11-25T10:00:00Z"},
		{"configuration run refuses (url, no keys)", ok, false, "lock", agent.CheckConfigRefused,
			"configuration refused: klp-agent run would not start: too few trusted keys for trust.threshold"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, stateDir, snap := checkHost(t, tt.poll, tt.key)
			switch tt.daemon {
			case "lock":
				lockState(t, stateDir)
			case "stopped":
				os.MkdirAll(filepath.Dir(snap), 0o755)
				b, _ := json.Marshal(agent.Status{Daemon: &agent.DaemonInfo{PID: os.Getpid(), Since: t0.Add(-2 * time.Hour),
					Written: t0.Add(-time.Hour), Stopped: t0.Add(-time.Hour)}})
				os.WriteFile(snap, b, 0o644)
			}
			out, code := runCode(t, t0, "status", "--config", cfg, "--check")
			if code != tt.code || !strings.HasPrefix(out, tt.want) {
				t.Fatalf("exit %d, want %d (%s):\n%s", code, tt.code, tt.want, out)
			}
			if tt.daemon == "lock" {
				if text := run(t, t0, "status", "--config", cfg); !strings.Contains(text, "daemon:     running, pid "+strconv.Itoa(os.Getpid())+" (it holds the state lock") {
					t.Errorf("status does not name the lock holder:\n%s", text)
				}
			}
			// --json carries the same code and reason.
			var s struct {
				Check *struct {
					Code   *int   `json:"code"`
					Reason string `json:"reason"`
				} `json:"check"`
			}
			js := run(t, t0, "status", "--config", cfg, "--json")
			if err := json.Unmarshal([]byte(js), &s); err != nil || s.Check == nil || s.Check.Code == nil || *s.Check.Code != tt.code ||
				s.Check.Reason != strings.TrimSpace(out) {
				t.Fatalf("--json check %+v, want %d %q (%v)\n%s", s.Check, tt.code, out, err, js)
			}
		})
	}
}

// status --json's lists are [] when empty, never null.
func TestStatusJSONListsNeverNull(t *testing.T) {
	cfg, _, _ := checkHost(t, nil, true)
	js := run(t, t0, "status", "--config", cfg, "--json")
	for _, l := range []string{"good", "blocked", "livepatches", "events", "maintenance_windows"} {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(js), &m); err != nil {
			t.Fatal(err)
		}
		ctl := map[string]json.RawMessage{}
		json.Unmarshal(m["controls"], &ctl)
		v, ok := m[l]
		if !ok {
			v = ctl[l]
		}
		if string(v) != "[]" {
			t.Errorf("%s: %s, want []", l, v)
		}
	}
}

// Each check code is documented where operators read it: status --help
// (and so the man page) and the README.
func TestCheckCodesDocumented(t *testing.T) {
	help := run(t, t0, "status", "--help")
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for code, name := range map[int]string{agent.CheckUpToDate: "up to date", agent.CheckPending: "pending", agent.CheckDegraded: "degraded",
		agent.CheckNotConfigured: "not configured", agent.CheckDaemonDown: "daemon not running", agent.CheckNotPolling: "not polling",
		agent.CheckConfigRefused: "configuration refused"} {
		if w := fmt.Sprintf("%d %s", code, name); !strings.Contains(help, w) {
			t.Errorf("status --help lacks %q", w)
		}
		if w := fmt.Sprintf("| %d | %s", code, name); !strings.Contains(string(readme), w) {
			t.Errorf("README lacks %q", w)
		}
	}
}
