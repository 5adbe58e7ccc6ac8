package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/klp-agent/klp-agent/agent/guard"
)

// `klp-agent guard` exits 78 (EX_CONFIG: its unit does not restart) when it
// is not configured or holds a key it must not: a release or root key.
func TestGuardConfigExitCodes(t *testing.T) {
	dir := t.TempDir()
	k := func(n string) string { return filepath.Join(dir, n) }
	for _, n := range []string{"root1", "release1", "revoke1"} {
		run(t, t0, "manifest", "keygen", "--out", k(n))
	}
	run(t, t0, "manifest", "root", "init", "--out", k("root.1.json"), "--root-key", k("root1.pub"),
		"--manifest-key", k("release1.pub"), "--revoke-key", k("revoke1.pub"))
	run(t, t0, "manifest", "root", "sign", "--envelope", k("root.1.json"), "--key", k("root1.key"))
	if err := os.WriteFile(k("token"), []byte(strings.Repeat("t", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := func(key string) string {
		p := filepath.Join(t.TempDir(), "guard.yaml")
		y := fmt.Sprintf("listen: 127.0.0.1:0\ntoken_file: %s\nprometheus:\n  url: http://127.0.0.1:1\nroot: %s\nkey: %s\nfile: %s\n",
			k("token"), k("root.1.json"), key, k("revocations.json"))
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	shipped, err := filepath.Abs("../../packaging/guard.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("check-config of a good one", func(t *testing.T) {
		out, code := runCode(t, t0, "guard", "--check-config", "--config", conf(k("revoke1.key")))
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		for _, w := range []string{"listen: 127.0.0.1:0", "alert_name: KLPPatchCrashBudgetExceeded", "validity: 7d", "key: " + k("revoke1.key")} {
			if !strings.Contains(out, w) {
				t.Errorf("check-config does not show %q:\n%s", w, out)
			}
		}
	})
	for _, tc := range []struct {
		name, config string
		want         []string
	}{
		{"shipped guard.yaml", shipped, []string{"prometheus.url is required", "root is required", "token_file or tls.client_ca"}},
		{"no file", filepath.Join(dir, "none.yaml"), []string{"none.yaml"}},
		{"release key", conf(k("release1.key")), []string{"release (manifest role) key", "revoke role key"}},
		{"root key", conf(k("root1.key")), []string{"root key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runCode(t, t0, "guard", "--config", tc.config)
			if code != ExitConfig {
				t.Fatalf("exit %d, want %d:\n%s", code, ExitConfig, out)
			}
			// --check-config refuses it the same way.
			if cout, ccode := runCode(t, t0, "guard", "--check-config", "--config", tc.config); ccode != ExitConfig || cout != out {
				t.Errorf("check-config: exit %d, %q; run: %q", ccode, cout, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not say %q:\n%s", w, out)
				}
			}
		})
	}
}

// The guard's unit runs the command on the shipped configuration's path,
// does not restart on exit 78 (not configured, a key it must not hold),
// and holds no capability.
func TestGuardUnit(t *testing.T) {
	b, err := os.ReadFile("../../packaging/klp-agent-guard.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, want := range []string{
		"\nExecStart=/usr/bin/klp-agent guard --config " + guard.DefaultConfigPath + "\n",
		"\nRestartPreventExitStatus=" + strconv.Itoa(ExitConfig) + "\n",
		"\nCapabilityBoundingSet=\n",
		"\nNoNewPrivileges=yes\n",
		"\nProtectSystem=full\n",
	} {
		if !strings.Contains(unit, want) {
			t.Errorf("packaging/klp-agent-guard.service lacks %q", strings.TrimSpace(want))
		}
	}
	spec, err := os.ReadFile("../../packaging/klp-agent.spec")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"packaging/klp-agent-guard.service", "%{_unitdir}/klp-agent-guard.service", "packaging/guard.yaml"} {
		if !strings.Contains(string(spec), want) {
			t.Errorf("the spec does not install %s", want)
		}
	}
}
