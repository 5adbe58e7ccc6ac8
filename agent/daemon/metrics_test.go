package daemon

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/manifest"
)

// A local user who binds the metrics port first would serve the fleet's
// Prometheus fake series: the daemon still runs, but says so in the
// journal (naming the address), in the textfile and in status; once it
// can listen again, status is clear.
func TestMetricsPortTakenIsLoud(t *testing.T) {
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := squatter.Addr().String()
	root, stateDir, keys := hostRoot(t), t.TempDir(), t.TempDir()
	_, pub, _, _ := manifest.GenerateKey()
	os.WriteFile(filepath.Join(keys, "k.pub"), pub, 0o644)
	textfile := filepath.Join(t.TempDir(), "klp-agent.prom")
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeConfig(t, cfg, fmt.Sprintf("trust:\n  keys_dir: %s\nhealth:\n  kmsg: false\n  taint: false\n  kdump_dir: \"\"\n"+
		"paths:\n  root: %s\n  state_dir: %s\n  status_file: %s\nlog:\n  format: console\nmetrics:\n  listen: %s\n  textfile: %s\n",
		keys, root, stateDir, filepath.Join(stateDir, "status.json"), addr, textfile))

	logs, stop := runDaemon(t, cfg)
	waitLog(t, logs, "starting")
	if !strings.Contains(logs.String(), "ERROR") || !strings.Contains(logs.String(), "metrics listener on "+addr+" failed") {
		t.Fatalf("no error naming %s in the journal:\n%s", addr, logs)
	}
	waitFile(t, textfile, "klp_agent_metrics_listen_failed 1")
	if got := statusProblems(t, cfg); !strings.Contains(got, "metrics listener on "+addr+" failed") {
		t.Fatalf("status problems: %s", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	squatter.Close()
	logs, stop = runDaemon(t, cfg)
	waitLog(t, logs, "metrics on http://"+addr)
	waitFile(t, textfile, "klp_agent_metrics_listen_failed 0")
	if got := statusProblems(t, cfg); strings.Contains(got, "metrics listener") {
		t.Fatalf("status still reports the listener: %s", got)
	}
	stop()
}

func statusProblems(t *testing.T, cfg string) string {
	t.Helper()
	h, err := LoadHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	in, err := h.StatusInput(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s, err := agent.CollectStatus(in)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(s.Problems, "\n")
}

func waitFile(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in %s:\n%s", want, path, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
