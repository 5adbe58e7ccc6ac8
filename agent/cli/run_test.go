package cli

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// shippedConfig is packaging/config.yaml as installed, with a drop-in
// pointing paths and keys into the test's directories; extra is one more
// drop-in (empty: none).
func shippedConfig(t *testing.T, extra string) (cfg, keys, stateDir string) {
	t.Helper()
	dir := t.TempDir()
	b, err := os.ReadFile("../../packaging/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg = filepath.Join(dir, "config.yaml")
	keys, stateDir = filepath.Join(dir, "keys"), filepath.Join(dir, "state")
	root := t.TempDir()
	writeHostRoot(t, root, testKernel, "0123456789abcdef0123456789abcdef")
	for p, body := range map[string]string{
		cfg: string(b),
		filepath.Join(dir, "config.d", "00-test.yaml"): "trust:\n  keys_dir: " + keys + "\npaths:\n  root: " + root + "\n  state_dir: " + stateDir + "\n",
	} {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(keys, 0o755); err != nil {
		t.Fatal(err)
	}
	if extra != "" {
		if err := os.WriteFile(filepath.Join(dir, "config.d", "50-extra.yaml"), []byte(extra), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return cfg, keys, stateDir
}

// `klp-agent run` exits 78 (EX_CONFIG, which the unit does not restart on)
// for the shipped configuration and for every other configuration error,
// with one line saying what is wrong; other failures stay 1. check-config
// fails on each with the same reason (daemon.CheckStart).
func TestRunConfigExitCodes(t *testing.T) {
	for _, tt := range []struct {
		name, extra string
		setup       func(t *testing.T, keys, stateDir string)
		code        int
		want        []string
	}{
		{"shipped configuration", "", nil, ExitConfig, []string{"not configured", "manifest.url", "keys"}},
		{"url but no keys", "manifest:\n  url: https://patches.example/m.json\n", nil, ExitConfig, []string{"trust.threshold 1", "0 key(s)"}},
		{"unknown key", "manifest:\n  pollinterval: 5m\n", nil, ExitConfig, []string{"50-extra.yaml", "pollinterval"}},
		{"invalid value", "log:\n  level: loud\n", nil, ExitConfig, []string{"log.level"}},
		{"untrusted state dir", "manifest:\n  url: https://patches.example/m.json\n", func(t *testing.T, keys, stateDir string) {
			run(t, t0, "manifest", "keygen", "--out", filepath.Join(keys, "release"))
			if err := os.Mkdir(stateDir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(stateDir, 0o777); err != nil {
				t.Fatal(err)
			}
		}, ExitConfig, []string{"state directory is not trusted", "writable by group or others"}},
		{"missing client certificate", "manifest:\n  url: https://patches.example/m.json\n  client_cert: /nonexistent/c.pem\n  client_key: /nonexistent/c.key\n",
			func(t *testing.T, keys, _ string) {
				run(t, t0, "manifest", "keygen", "--out", filepath.Join(keys, "release"))
			},
			ExitConfig, []string{"client certificate", "/nonexistent/c.pem"}},
		{"kernel release unreadable is no configuration error", "manifest:\n  url: https://patches.example/m.json\nhost:\n  id: h1\npaths:\n  root: /nonexistent-klp-root\n",
			nil, 1, []string{"osrelease"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, keys, stateDir := shippedConfig(t, tt.extra)
			if tt.setup != nil {
				tt.setup(t, keys, stateDir)
			}
			// check-config refuses what run refuses, in run's words (it
			// runs first: run may create the state directory).
			cout, ccode := runCode(t, t0, "check-config", "--config", cfg)
			if ccode == 0 {
				t.Errorf("check-config passes what run refuses:\n%s", cout)
			}
			for _, w := range tt.want {
				if !strings.Contains(cout, w) {
					t.Errorf("check-config does not say %q:\n%s", w, cout)
				}
			}
			out, code := runCode(t, t0, "run", "--config", cfg)
			if code != tt.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tt.code, out)
			}
			// The unconfigured host's message is one line (YAML errors may
			// list several lines of the file).
			if n := strings.Count(out, "\n"); tt.name == "shipped configuration" && n != 1 {
				t.Errorf("%d lines, want one:\n%s", n, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not say %q:\n%s", w, out)
				}
			}
		})
	}
}

// The unit does not restart on the configuration status run exits with,
// and reads the optional environment file the README documents.
func TestUnitKeepsUnconfiguredHostCalm(t *testing.T) {
	b, err := os.ReadFile("../../packaging/klp-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, want := range []string{
		"\nRestartPreventExitStatus=" + strconv.Itoa(ExitConfig) + "\n",
		"\nRestart=on-failure\n",
		"\nEnvironmentFile=-/etc/sysconfig/klp-agent\n",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("packaging/klp-agent.service lacks %q", strings.TrimSpace(want))
		}
	}
}

// The boot guard reads pstore's records where the kernel left them:
// systemd-pstore, which moves them away, waits for the agent's start.
func TestUnitReadsPstoreBeforeSystemdPstore(t *testing.T) {
	b, err := os.ReadFile("../../packaging/klp-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Before="); ok && slices.Contains(strings.Fields(v), "systemd-pstore.service") {
			return
		}
	}
	t.Error("packaging/klp-agent.service is not ordered Before=systemd-pstore.service")
}
