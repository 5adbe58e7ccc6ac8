package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klp-agent/klp-agent/agent/state"
)

// `uninstall --check`, the package's %preun: exit 1 naming the command
// while the state records a livepatch package, 0 without one, and 0 with
// a warning when the state cannot be read (an unknown must not make the
// package impossible to erase).
func TestUninstallCheck(t *testing.T) {
	stateDir := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte("paths:\n  state_dir: "+stateDir+"\n"), 0o644)
	if out, code := runCode(t, t0, "uninstall", "--check", "--config", cfg); code != 0 {
		t.Fatalf("no state: exit %d\n%s", code, out)
	}
	st := &state.State{Kernels: map[string]*state.Kernel{testKernel: {Phase: state.PhaseGood,
		Current: &state.PatchRecord{Name: "klp_cmdline_1", Level: 1, SHA256: strings.Repeat("a", 64), Size: 1, RPMName: "klp-cmdline"}}}}
	if err := (&state.Store{Dir: stateDir}).Save(st); err != nil {
		t.Fatal(err)
	}
	out, code := runCode(t, t0, "uninstall", "--check", "--config", cfg)
	if code != 1 || !strings.Contains(out, "(klp-cmdline)") || !strings.Contains(out, "Run `klp-agent uninstall` instead") {
		t.Fatalf("recorded package: exit %d\n%s", code, out)
	}
	os.WriteFile(filepath.Join(stateDir, "state.json"), []byte("{damaged"), 0o600)
	if out, code := runCode(t, t0, "uninstall", "--check", "--config", cfg); code != 0 || !strings.Contains(out, "cannot tell") {
		t.Fatalf("damaged state: exit %d\n%s", code, out)
	}
}
