package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/klp/klptest"
)

// shaped makes a host whose levels have the given simulated shapes.
func shaped(t *testing.T, shapes map[int]func(*klptest.Module), levels ...int) *host {
	h := newHost(t, levels...)
	h.shapes = shapes
	h.agent.Stop()
	h.reboot()
	return h
}

// rpmQ is what rpm's database says of the klp-cmdline family.
func (h *host) rpmQ() string {
	h.t.Helper()
	v, err := (&klp.RPM{Runner: klp.ExecRunner{}, Root: h.root}).Installed(context.Background(), "klp-cmdline")
	if err != nil {
		h.t.Fatal(err)
	}
	return v
}

// A level the kernel refuses for good (its own log says why) is blocked
// with the kernel's words as evidence; the kernel and rpm stay on the good
// level. A transient failure is not blocked.
func TestKernelRefusalsBlock(t *testing.T) {
	for _, tt := range []struct {
		name   string
		level2 func(*klptest.Module)
		says   string
	}{
		{"klp_state downgrade", func(m *klptest.Module) { m.States = map[uint64]int{1: 1} }, "is not compatible with the already installed livepatches"},
		{"pre-patch callback", func(m *klptest.Module) { m.States, m.PrePatch = map[uint64]int{1: 2}, syscall.ENODEV }, "pre-patch callback failed for object 'vmlinux'"},
		{"not cumulative", func(m *klptest.Module) { m.Replace = false }, "klp_cmdline_1 is still enabled after klp_cmdline_2's transition"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := shaped(t, map[int]func(*klptest.Module){1: func(m *klptest.Module) { m.States = map[uint64]int{1: 2} }, 2: tt.level2}, 1, 2)
			h.converge([]int{1})
			h.soak()
			err := h.converge([]int{1, 2})
			if !errors.Is(err, klp.ErrRefused) {
				t.Fatalf("err = %v, want a refusal", err)
			}
			h.expect(state.PhaseGood, 1)
			if q := h.rpmQ(); q != "1-1" {
				t.Fatalf("rpm -q klp-cmdline: %q, want 1-1", q)
			}
			k := h.agent.State().Kernels[krel]
			if !k.IsBlocked("klp_cmdline_2", 2, h.patches[2].SHA256) || k.Blocked[0].Cause != state.CauseKernelRefused ||
				!strings.Contains(k.Blocked[0].Reason+strings.Join(k.Blocked[0].Evidence, "\n"), tt.says) {
				t.Fatalf("blocked %+v", k.Blocked)
			}
			// Blocked means never tried again.
			loads := len(h.kernel.Loads)
			if err := h.converge([]int{1, 2}); err != nil || len(h.kernel.Loads) != loads {
				t.Fatalf("tried again: %v, %d loads", err, len(h.kernel.Loads)-loads)
			}
		})
	}
}

// Rolling back from a level that raised a klp_state version: the kernel
// refuses every older cumulative level, so the agent tries them newest
// first and ends with no patch, rpm agreeing.
func TestRollbackPastRefusedLevels(t *testing.T) {
	h := shaped(t, map[int]func(*klptest.Module){
		1: func(m *klptest.Module) { m.States = map[uint64]int{1: 1} },
		2: func(m *klptest.Module) { m.States = map[uint64]int{1: 1} },
		3: func(m *klptest.Module) { m.States = map[uint64]int{1: 2} },
	}, 1, 2, 3)
	h.converge([]int{1})
	h.soak()
	h.converge([]int{1, 2})
	h.soak()
	h.converge([]int{1, 2, 3})
	if err := h.agent.Rollback(context.Background(), state.CauseHealth, "oops attributed to klp_cmdline_3", nil, true); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseNone, 0)
	if q := h.rpmQ(); q != "" {
		t.Fatalf("rpm -q klp-cmdline: %q after rolling back to no patch", q)
	}
	var refusals int
	for _, l := range h.kernel.Log() {
		if strings.Contains(l, "is not compatible") {
			refusals++
		}
	}
	if refusals != 2 {
		t.Fatalf("%d refusals in the kernel log, want levels 2 and 1 tried", refusals)
	}
}

// The rollback loads the good level's module from the agent's own copy:
// the kernel runs it and rpm's database names it.
func TestRollbackLoadsTheKeptModule(t *testing.T) {
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	h.converge([]int{1, 2})
	ko, err := state.Layout{Dir: h.stateDir}.Module(h.patches[1].SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(ko); err != nil || string(b) != string(h.kos[1]) {
		t.Fatalf("kept module of level 1: %v", err)
	}
	// rpm's copy of level 1 is gone (level 2 replaced the package): the
	// module comes from the agent's copy.
	if _, err := os.Stat(filepath.Join(h.root, "usr/lib/klp-agent/livepatches", krel, "klp_cmdline_1.ko")); err == nil {
		t.Fatal("level 1's packaged module is still there")
	}
	if err := h.agent.Rollback(context.Background(), state.CauseHealth, "oops attributed to klp_cmdline_2", nil, true); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseGood, 1)
	if q := h.rpmQ(); q != "1-1" {
		t.Fatalf("rpm -q klp-cmdline: %q, want 1-1", q)
	}
}

// Blame only what ran: a host that went down while rpm installed a level
// (its module not in the kernel yet) retries the apply after the reboot;
// one that went down after the module went in blocks it.
func TestBootBlamesOnlyWhatRan(t *testing.T) {
	for _, tt := range []struct {
		phase   state.Phase
		blocked bool
	}{
		{state.PhaseInstalling, false},
		{state.PhaseEnabling, true},
	} {
		t.Run(string(tt.phase), func(t *testing.T) {
			h := newHost(t, 1, 2)
			h.converge([]int{1})
			h.soak()
			// Level 2 downloaded and on its way in when the power went.
			p := h.patches[2]
			rec := state.PatchRecord{Name: p.Name, Level: 2, SHA256: p.SHA256, Size: p.Size, URL: h.srv.URL + "/" + p.URL}
			if _, err := h.agent.Download(context.Background(), rec); err != nil {
				t.Fatal(err)
			}
			st := h.agent.State()
			st.Kernels[krel].Target, st.Kernels[krel].Phase = &rec, tt.phase
			if err := h.agent.save(); err != nil {
				t.Fatal(err)
			}
			h.reboot() // no clean stop
			k := h.agent.State().Kernels[krel]
			if got := k.IsBlocked(p.Name, 2, p.SHA256); got != tt.blocked {
				t.Fatalf("blocked = %v (%+v)", got, k.Blocked)
			}
			if tt.blocked {
				h.expect(state.PhaseGood, 1)
			} else {
				h.expect(state.PhaseSoaking, 2)
			}
		})
	}
}
