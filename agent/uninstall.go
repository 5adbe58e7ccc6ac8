package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/klp-agent/klp-agent/agent/history"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
)

// AgentPackage is the agent's own RPM name.
const AgentPackage = "klp-agent"

// ErrLeavesPatches is `rpm -e klp-agent` refused by its %preun (through
// `klp-agent uninstall --check`): erasing the agent alone would leave
// livepatch packages in rpm's database that nothing loads after the next
// reboot, so rpm, the kernel and a vulnerability scanner would disagree.
var ErrLeavesPatches = errors.New("erasing klp-agent alone would leave its livepatch packages installed")

// ManagedPackages are the livepatch packages the agent installed and
// still records as installed (the current or in-flight patch of each
// kernel release it kept), sorted. It reads the record only: the erase
// check runs inside rpm's transaction, where rpm cannot be asked.
func ManagedPackages(st *state.State) []string {
	var out []string
	for _, k := range st.Kernels {
		for _, p := range []*state.PatchRecord{k.Current, k.Target, k.From} {
			if p != nil && p.RPMName != "" && !slices.Contains(out, p.RPMName) {
				out = append(out, p.RPMName)
			}
		}
	}
	sort.Strings(out)
	return out
}

// CheckErase is `klp-agent uninstall --check`, run by the package's %preun
// on its final erase: nil when erasing klp-agent leaves rpm and the kernel
// agreeing (no livepatch package recorded, or `klp-agent uninstall` is the
// one erasing), else ErrLeavesPatches naming the packages and the command.
func CheckErase(l state.Layout) error {
	if _, err := os.Lstat(l.Uninstalling()); err == nil {
		return nil
	}
	st, err := (&state.Store{Dir: l.Dir}).Load()
	if err != nil {
		// No state (never configured, or removed): nothing recorded.
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("read %s: %w", l.StateFile(), err)
	}
	if pkgs := ManagedPackages(st); len(pkgs) > 0 {
		return fmt.Errorf("%w (%s): nothing would load them after the next reboot, yet rpm -qa and vulnerability scanners "+
			"would count them. Run `klp-agent uninstall` instead: it takes the kernel back to no patch and erases them "+
			"with klp-agent in one rpm transaction", ErrLeavesPatches, strings.Join(pkgs, ", "))
	}
	return nil
}

// Uninstall takes the host back to no livepatch of the agent's and erases
// the agent's livepatch packages together with klp-agent itself (when rpm
// has it) in one rpm transaction, so that after it rpm, the kernel and a
// scanner tell the same story. The caller holds the state lock, so no
// daemon runs. It returns the packages erased.
//
// Order: the kernel first (the running release's patch disabled and
// unloaded: a disabled patch is no fix, so rpm must not keep claiming
// it), then rpm. If rpm fails the record still names the packages, and
// the next agent start re-applies the recorded level: the story stays
// consistent and `klp-agent uninstall` can be run again.
func (a *Agent) Uninstall(ctx context.Context, operator string) ([]string, error) {
	if err := a.LoadState(); err != nil {
		return nil, err
	}
	k := a.kernel()
	to := "no patch"
	if p := k.Current; p != nil && a.d.KillSwitch == "" && a.enabled(p) {
		if err := a.d.Installer.Controller.Disable(ctx, p.Name); err != nil {
			return nil, fmt.Errorf("uninstall: take %s out of the kernel: %w", p.ID(), err)
		}
		a.log().Warn("uninstall: disabled and unloaded "+p.ID()+"; the kernel runs no patch of klp-agent's", patchFields(p)...)
	}
	var pkgs []string
	for _, name := range ManagedPackages(a.st) {
		v, err := a.d.Installer.RPM.Installed(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("uninstall: %w", err)
		}
		if v != "" {
			pkgs = append(pkgs, name)
		}
	}
	self, err := a.d.Installer.RPM.Installed(ctx, AgentPackage)
	if err != nil {
		return nil, fmt.Errorf("uninstall: %w", err)
	}
	if self != "" {
		pkgs = append(pkgs, AgentPackage)
	}
	marker := a.Layout().Uninstalling()
	b, _ := json.Marshal(struct {
		Packages []string `json:"packages"`
		By       string   `json:"by"`
	}{pkgs, operator})
	if err := atomicfile.WriteFile(marker, b, 0o600); err != nil {
		return nil, fmt.Errorf("uninstall: %w", err)
	}
	defer os.Remove(marker)
	if len(pkgs) > 0 {
		if err := a.d.Installer.RPM.EraseTogether(ctx, pkgs...); err != nil {
			return nil, fmt.Errorf("uninstall: %w (the kernel runs no patch of klp-agent's; the packages stay; "+
				"the agent re-applies its recorded level at its next start)", err)
		}
	}
	cur := k.Current
	for _, kk := range a.st.Kernels {
		kk.Phase, kk.Current, kk.Target, kk.From, kk.Cause, kk.Reason = state.PhaseNone, nil, nil, nil, "", ""
	}
	if err := a.save(); err != nil {
		return pkgs, err
	}
	a.record(history.Event{Kind: history.KindUninstall, Operator: operator, To: to, Reason: "erased " + strings.Join(pkgs, " ")}, cur)
	return pkgs, nil
}
