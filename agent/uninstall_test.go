package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/klp"
)

// installStubAgent installs a package named klp-agent in the host's rpm
// root (no scriptlets: rpm --root runs them chrooted, and the test root has
// no shell; packaging/check-scriptlets.sh runs the real %preun).
func (h *host) installStubAgent() {
	h.t.Helper()
	f := rpmtest.Build(h.t, h.t.TempDir(), rpmtest.Spec{Name: AgentPackage, Version: "0.1.0", NoProvides: true,
		Files: map[string][]byte{"/usr/share/klp-agent-stub/README": []byte("stub\n")}})
	if err := (&klp.RPM{Runner: klp.ExecRunner{}, Root: h.root, NoDeps: true}).Install(context.Background(), f); err != nil {
		h.t.Fatal(err)
	}
}

func (h *host) rpmHas(name string) bool {
	h.t.Helper()
	v, err := (&klp.RPM{Runner: klp.ExecRunner{}, Root: h.root}).Installed(context.Background(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	return v != ""
}

// After `rpm -e klp-agent` and a reboot nothing loads the livepatch
// packages, so rpm would list a fix the kernel does not run. The erase
// check (the package's %preun) refuses that erase, naming `klp-agent
// uninstall`, which takes the kernel back to no patch and erases the
// livepatch package with klp-agent in one rpm transaction: rpm, the kernel
// and the record then agree.
func TestUninstallKeepsRPMAndKernelAgreeing(t *testing.T) {
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	h.converge([]int{1, 2})
	h.installStubAgent()

	err := CheckErase(h.agent.Layout())
	if !errors.Is(err, ErrLeavesPatches) || !strings.Contains(err.Error(), "(klp-cmdline)") || !strings.Contains(err.Error(), "klp-agent uninstall") {
		t.Fatalf("check before uninstall: %v", err)
	}
	// `klp-agent uninstall` is in progress: the check lets its erase through.
	os.WriteFile(h.agent.Layout().Uninstalling(), []byte("{}"), 0o600)
	if err := CheckErase(h.agent.Layout()); err != nil {
		t.Fatalf("check during uninstall: %v", err)
	}
	os.Remove(h.agent.Layout().Uninstalling())

	pkgs, err := h.agent.Uninstall(context.Background(), "alice (uid 0)")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(pkgs, " "); got != "klp-cmdline klp-agent" {
		t.Fatalf("erased %q", got)
	}
	if h.rpmHas(AgentPackage) || h.rpmHas("klp-cmdline") {
		t.Fatal("packages left after uninstall")
	}
	h.expect(state.PhaseNone, 0)
	if loaded := h.kernel.Loaded(); len(loaded) != 0 {
		t.Fatalf("modules still loaded: %v", loaded)
	}
	if _, err := os.Stat(h.agent.Layout().Uninstalling()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("marker left: %v", err)
	}
	if err := CheckErase(h.agent.Layout()); err != nil {
		t.Fatalf("check after uninstall: %v", err)
	}
	if got := h.history(); got[len(got)-1] != "uninstall klp_cmdline_2@2" {
		t.Fatalf("history ends with %q", got[len(got)-1])
	}
	// A reboot changes nothing: no patch anywhere.
	h.reboot()
	h.expect(state.PhaseNone, 0)
}

// Without the agent's RPM (a binary installed by hand), uninstall still
// takes the kernel and rpm back to no patch; with no state at all, the
// erase check lets the erase through.
func TestUninstallWithoutAgentPackage(t *testing.T) {
	h := newHost(t, 1)
	h.converge([]int{1})
	pkgs, err := h.agent.Uninstall(context.Background(), "root")
	if err != nil || strings.Join(pkgs, " ") != "klp-cmdline" || h.rpmHas("klp-cmdline") {
		t.Fatalf("uninstall: %v %v", pkgs, err)
	}
	h.expect(state.PhaseNone, 0)
	if err := CheckErase(state.Layout{Dir: filepath.Join(t.TempDir(), "none")}); err != nil {
		t.Fatalf("no state: %v", err)
	}
}
