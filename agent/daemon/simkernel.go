//go:build klp_simkernel

package daemon

import (
	"fmt"
	"io"
	"path/filepath"
	"sync"

	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/klp/klptest"
)

// A test build drives klptest's simulated kernel instead of the running
// one: the fleet test (e2e/fleet_test.go) runs dozens of real daemons as
// hosts on one machine. The kernel's state lives in <paths.root>/simkernel.json,
// so it outlives a daemon restart and `klp-agent status` sees it. Never
// in the shipped binary (internal/archtest: TestShippedBuildHasNoSimulatedKernel).
func init() {
	simKernel = func(root string) (Kernel, error) {
		sims.Lock()
		defer sims.Unlock()
		if k, ok := sims.m[root]; ok {
			return k, nil
		}
		state := filepath.Join(root, "simkernel.json")
		k, err := klptest.Open(state)
		if err != nil {
			k = klptest.New()
			if err := k.Persist(state); err != nil {
				return Kernel{}, fmt.Errorf("simulated kernel: %w", err)
			}
		}
		sk := Kernel{FS: k, Modules: anyLivepatch{k}, Log: k}
		sims.m[root] = sk
		return sk, nil
	}
}

var sims = struct {
	sync.Mutex
	m map[string]Kernel
}{m: map[string]Kernel{}}

// anyLivepatch loads whatever livepatch module the agent hands it: the
// simulated kernel learns each module from its own modinfo (name=) as an
// atomic-replace livepatch of one function, as kpatch builds them.
type anyLivepatch struct{ k *klptest.Kernel }

func (a anyLivepatch) Load(m *klp.Module) error {
	b, err := io.ReadAll(m.Content())
	if err != nil {
		return err
	}
	info, err := klp.ModInfo(b)
	if err != nil {
		return err
	}
	names := info["name"]
	if len(names) != 1 {
		return fmt.Errorf("simulated kernel: %s names no module", m.Path())
	}
	lp := info["livepatch"]
	a.k.AddModule(b, klptest.Module{Name: names[0], Livepatch: len(lp) == 1 && lp[0] == "Y", Replace: true,
		Funcs: map[string][]string{"vmlinux": {"cmdline_proc_show"}}})
	return a.k.Load(m)
}

func (a anyLivepatch) Unload(name string) error { return a.k.Unload(name) }
