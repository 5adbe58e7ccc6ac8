package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not say %q:\n%s", w, out)
				}
			}
		})
	}
}
