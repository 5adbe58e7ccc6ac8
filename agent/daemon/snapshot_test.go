package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/manifest"
)

// The daemon writes a world-readable status snapshot with its pid and
// start, the kill switch and no credentials; a clean stop is recorded.
func TestStatusSnapshot(t *testing.T) {
	root, stateDir, keys := hostRoot(t), t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(root, "proc/cmdline"), []byte("root=/dev/vda klp_agent.enable=0\n"), 0o644)
	_, pub, _, _ := manifest.GenerateKey()
	os.WriteFile(filepath.Join(keys, "k.pub"), pub, 0o644)
	snap := filepath.Join(t.TempDir(), "run", "status.json")
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeConfig(t, cfg, fmt.Sprintf("manifest:\n  url: http://fleet:s3cret@127.0.0.1:1/manifest.json\n  retries: 0\n"+
		"trust:\n  keys_dir: %s\nhealth:\n  kmsg: false\n  taint: false\n  kdump_dir: \"\"\n"+
		"paths:\n  root: %s\n  state_dir: %s\n  status_file: %s\nlog:\n  format: console\n", keys, root, stateDir, snap))
	logs, stop := runDaemon(t, cfg)
	waitLog(t, logs, "manifest poll failed")
	waitLog(t, logs, "kill switch")
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := ReadSnapshot(snap)
		if err == nil && st.LastPoll != nil {
			if d := st.Daemon; d == nil || d.PID != os.Getpid() || !d.Running || d.Since.IsZero() {
				t.Fatalf("daemon in the snapshot: %+v", d)
			}
			if !st.Configured || !strings.Contains(st.Controls.KillSwitch, "klp_agent.enable=0") {
				t.Fatalf("snapshot: %+v", st)
			}
			// The file itself, as a monitoring system reads it, says the
			// daemon runs (it used to say "running": false), with the
			// schema and the daemon's own check.
			var raw struct {
				Schema *int `json:"schema"`
				Daemon struct {
					Running bool `json:"running"`
				} `json:"daemon"`
				Check *agent.CheckResult `json:"check"`
			}
			b, _ := os.ReadFile(snap)
			if err := json.Unmarshal(b, &raw); err != nil || !raw.Daemon.Running || raw.Schema == nil || *raw.Schema != agent.StatusSchema ||
				raw.Check == nil || raw.Check.Code != agent.CheckNotPolling {
				t.Fatalf("snapshot as written (%v): %+v\n%s", err, raw, b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot with a poll: %v\n%s", err, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	fi, err := os.Stat(snap)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("snapshot mode: %v %v", fi, err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(snap)
	if strings.Contains(string(b), "s3cret") {
		t.Fatalf("credentials in the snapshot:\n%s", b)
	}
	st, err := ReadSnapshot(snap)
	if err != nil || st.Daemon.Stopped.IsZero() || st.Daemon.Running {
		t.Fatalf("after stop: %+v %v", st.Daemon, err)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		`"error": "Get \"https://user:pw@mirror/m.json\": refused"`: `"error": "Get \"https://user:xxxxx@mirror/m.json\": refused"`,
		`http://mirror/m.json and ftp://a@b/c`:                      `http://mirror/m.json and ftp://xxxxx@b/c`,
		`no url, a@b`:                                               `no url, a@b`,
		`https://mirror:xxxxx@m/x`:                                  `https://mirror:xxxxx@m/x`,
	} {
		if got := string(Redact([]byte(in))); got != want {
			t.Errorf("%s: %s", in, got)
		}
	}
}
