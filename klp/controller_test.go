package klp_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/klp/klptest"
)

// simFile is the module file of name for the simulated kernel: a root-owned
// 0644 file in the fixture directory and the sha256 of its bytes.
func simFile(t *testing.T, name string) klp.ModuleFile {
	t.Helper()
	dir := filepath.Join(fixtureDir, "lp")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b := []byte("simulated module " + name)
	p := filepath.Join(dir, name+".ko")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return klp.ModuleFile{Path: p, SHA256: hex.EncodeToString(sum[:])}
}

func newSim(t *testing.T) (*klptest.Kernel, *klp.Controller) {
	t.Helper()
	k := klptest.New()
	for lvl := 1; lvl <= 3; lvl++ {
		name := "klp_cmdline_" + string(rune('0'+lvl))
		k.AddFile(simFile(t, name).Path, klptest.Module{Name: name, Livepatch: true, Replace: true,
			Funcs: map[string][]string{"vmlinux": {"cmdline_proc_show"}}})
	}
	k.AddFile(simFile(t, "klp_other").Path, klptest.Module{Name: "klp_other", Livepatch: true, Replace: false,
		Funcs: map[string][]string{"vmlinux": {"version_proc_show"}}})
	c := &klp.Controller{
		Sysfs:   &klp.Sysfs{FS: k, Poll: time.Millisecond},
		Modules: k,
		Opts: klp.Options{TransitionTimeout: 300 * time.Millisecond, UnloadTimeout: 300 * time.Millisecond,
			LoadBackoff: klp.Backoff{Attempts: 20, First: 5 * time.Millisecond, Max: 20 * time.Millisecond}},
	}
	return k, c
}

func enable(t *testing.T, c *klp.Controller, name string) klp.Result {
	t.Helper()
	res, err := c.Enable(context.Background(), simFile(t, name), name, klp.EnableOptions{})
	if err != nil {
		t.Fatalf("enable %s: %v", name, err)
	}
	return res
}

// watchPatched samples which patch serves cmdline_proc_show until stopped
// and reports whether it was ever unpatched.
func watchPatched(k *klptest.Kernel) (stop func() bool) {
	var gap atomic.Bool
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			default:
			}
			if k.Patched("cmdline_proc_show") == "" {
				gap.Store(true)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	return func() bool { close(done); <-finished; return gap.Load() }
}

func TestCumulativeUpgradeStepBackAndDisable(t *testing.T) {
	k, c := newSim(t)
	enable(t, c, "klp_cmdline_1")
	if got := k.Patched("cmdline_proc_show"); got != "klp_cmdline_1" {
		t.Fatalf("after level 1, cmdline_proc_show served by %q", got)
	}
	stop := watchPatched(k)
	for _, step := range []struct{ to, replaced string }{
		{"klp_cmdline_2", "klp_cmdline_1"},
		{"klp_cmdline_3", "klp_cmdline_2"},
		{"klp_cmdline_2", "klp_cmdline_3"}, // step back by loading the older cumulative patch
	} {
		res := enable(t, c, step.to)
		if !slices.Equal(res.Replaced, []string{step.replaced}) {
			t.Fatalf("%s replaced %v, want [%s]", step.to, res.Replaced, step.replaced)
		}
		if got := k.Patched("cmdline_proc_show"); got != step.to {
			t.Fatalf("after %s, served by %q", step.to, got)
		}
		if loaded := k.Loaded(); !slices.Equal(loaded, []string{step.to}) {
			t.Fatalf("after %s, loaded modules %v: the replaced one must be unloaded", step.to, loaded)
		}
	}
	if stop() {
		t.Fatal("the kernel was unpatched at some moment during atomic replace")
	}
	ps, err := c.Sysfs.List()
	if err != nil || len(ps) != 1 || ps[0].Name != "klp_cmdline_2" || !ps[0].Enabled || ps[0].Transition {
		t.Fatalf("List = %+v, %v", ps, err)
	}
	if err := c.Disable(context.Background(), "klp_cmdline_2"); err != nil {
		t.Fatal(err)
	}
	if got := k.Patched("cmdline_proc_show"); got != "" || len(k.Loaded()) != 0 {
		t.Fatalf("after disable: served by %q, loaded %v", got, k.Loaded())
	}
	// What is already gone cannot be disabled: the answer says so.
	if err := c.Disable(context.Background(), "klp_cmdline_2"); !errors.Is(err, klp.ErrNotFound) {
		t.Fatalf("second disable: %v, want ErrNotFound", err)
	}
}

// TestOnlyLivepatchesAreUnloaded: every path that unloads (disable, the
// clean-up of an enable that found no livepatch of its name) unloads only
// a module the kernel says is a livepatch (listed in
// /sys/kernel/livepatch, or tainted K); a name is never proof.
func TestOnlyLivepatchesAreUnloaded(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, k *klptest.Kernel, c *klp.Controller)
		run     func(c *klp.Controller) error
		wantErr error
		loaded  []string // modules loaded afterwards
		unloads []string
	}{
		{
			name:    "disable of a name nothing has",
			run:     func(c *klp.Controller) error { return c.Disable(ctx, "nonexistent") },
			wantErr: klp.ErrNotFound, loaded: []string{"e1000e"},
		},
		{
			name:    "disable of an idle module that is not a livepatch",
			run:     func(c *klp.Controller) error { return c.Disable(ctx, "e1000e") },
			wantErr: klp.ErrNotLivepatchModule, loaded: []string{"e1000e"},
		},
		{
			name: "enable whose name is another module's",
			run: func(c *klp.Controller) error {
				_, err := c.Enable(ctx, simFile(t, "klp_cmdline_1"), "e1000e", klp.EnableOptions{})
				return err
			},
			wantErr: klp.ErrNotLivepatchModule, loaded: []string{"e1000e", "klp_cmdline_1"},
		},
		{
			name: "disable of a livepatch module whose patch is gone",
			setup: func(t *testing.T, k *klptest.Kernel, c *klp.Controller) {
				enable(t, c, "klp_cmdline_1")
				// Disabled by hand and freed: only its module, tainted K, is left.
				if err := c.Sysfs.SetEnabled("klp_cmdline_1", false); err != nil {
					t.Fatal(err)
				}
				for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
					if ents, err := k.ReadDir("sys/kernel/livepatch"); err == nil && len(ents) == 0 {
						break
					}
					if time.Since(start) > 10*time.Second {
						t.Fatal("the disabled patch was never freed")
					}
				}
			},
			run:    func(c *klp.Controller) error { return c.Disable(ctx, "klp_cmdline_1") },
			loaded: []string{"e1000e"}, unloads: []string{"klp_cmdline_1"},
		},
		{
			name:    "disable of a livepatch",
			setup:   func(t *testing.T, k *klptest.Kernel, c *klp.Controller) { enable(t, c, "klp_cmdline_1") },
			run:     func(c *klp.Controller) error { return c.Disable(ctx, "klp_cmdline_1") },
			loaded:  []string{"e1000e"},
			unloads: []string{"klp_cmdline_1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, c := newSim(t)
			k.AddFile("/lib/modules/e1000e.ko", klptest.Module{Name: "e1000e"})
			if err := k.LoadPath("/lib/modules/e1000e.ko"); err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				tc.setup(t, k, c)
			}
			err := tc.run(c)
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if got := k.Loaded(); !slices.Equal(got, tc.loaded) {
				t.Errorf("loaded %v, want %v", got, tc.loaded)
			}
			if !slices.Equal(k.Unloads, tc.unloads) {
				t.Errorf("unloaded %v, want %v", k.Unloads, tc.unloads)
			}
		})
	}
}

func TestEnableIsIdempotent(t *testing.T) {
	k, c := newSim(t)
	enable(t, c, "klp_cmdline_1")
	if res := enable(t, c, "klp_cmdline_1"); !res.Already {
		t.Fatal("second enable of an enabled patch should report Already")
	}
	if len(k.Loads) != 1 {
		t.Fatalf("loaded %d times", len(k.Loads))
	}
}

func TestStalledEnableIsReversedAndNamesTheBlocker(t *testing.T) {
	k, c := newSim(t)
	enable(t, c, "klp_cmdline_1")
	k.SetTask(klptest.Task{PID: 4242, Comm: "stuck-reader", Stack: "[<0>] klp_victim_sleep+0x1c/0x40 [klp_victim]\n[<0>] proc_reg_read+0x50/0xa0\n", Blocking: true})
	// The blocker never leaves; the reversal does not need it to.
	_, err := c.Enable(context.Background(), simFile(t, "klp_cmdline_2"), "klp_cmdline_2", klp.EnableOptions{})
	var stall *klp.StallError
	if !errors.Is(err, klp.ErrStalled) || !errors.As(err, &stall) {
		t.Fatalf("err = %v, want a StallError", err)
	}
	if !strings.Contains(err.Error(), "stuck-reader (pid 4242 tid 4242) at [<0>] klp_victim_sleep") {
		t.Fatalf("stall error does not name the blocking task: %v", err)
	}
	if got := k.Patched("cmdline_proc_show"); got != "klp_cmdline_1" {
		t.Fatalf("after a reversed stall, served by %q; want the previous level", got)
	}
	if loaded := k.Loaded(); !slices.Equal(loaded, []string{"klp_cmdline_1"}) {
		t.Fatalf("stalled module not unloaded: %v", loaded)
	}
}

func TestStallForcedOnlyWhenConfigured(t *testing.T) {
	k, c := newSim(t)
	c.Opts.ForceOnStall = true
	k.SetTask(klptest.Task{PID: 7, Comm: "stuck", Blocking: true})
	res, err := c.Enable(context.Background(), simFile(t, "klp_cmdline_1"), "klp_cmdline_1", klp.EnableOptions{})
	if err != nil || !res.Forced {
		t.Fatalf("forced enable: %+v %v", res, err)
	}
	// A forced module can never be unloaded: disable works, unload does not.
	if err := c.Disable(context.Background(), "klp_cmdline_1"); err == nil || !strings.Contains(err.Error(), "refcount") {
		t.Fatalf("disable of a forced patch: %v, want an unload refcount error", err)
	}
}

func TestLoadRetriesWhileAnotherTransitionRuns(t *testing.T) {
	k, c := newSim(t)
	k.SetTask(klptest.Task{PID: 9, Comm: "slow", Blocking: true})
	if err := k.LoadPath(simFile(t, "klp_other").Path); err != nil { // transition stuck until released
		t.Fatal(err)
	}
	go func() { time.Sleep(60 * time.Millisecond); k.SetTask(klptest.Task{PID: 9, Comm: "slow"}) }()
	res := enable(t, c, "klp_cmdline_1")
	if res.BusyRetry == 0 {
		t.Fatal("expected EBUSY retries while klp_other transitioned")
	}
	// cmdline_1 has replace=true, so it frees klp_other too.
	if !slices.Equal(res.Replaced, []string{"klp_other"}) {
		t.Fatalf("replaced %v", res.Replaced)
	}
}

func TestLoadGivesUpOnPersistentBusy(t *testing.T) {
	k, c := newSim(t)
	c.Opts.LoadBackoff = klp.Backoff{Attempts: 3, First: time.Millisecond, Max: time.Millisecond}
	k.SetTask(klptest.Task{PID: 9, Comm: "slow", Blocking: true})
	if err := k.LoadPath(simFile(t, "klp_other").Path); err != nil {
		t.Fatal(err)
	}
	_, err := c.Enable(context.Background(), simFile(t, "klp_cmdline_1"), "klp_cmdline_1", klp.EnableOptions{})
	if !errors.Is(err, klp.ErrBusy) || !strings.Contains(err.Error(), "3 attempts") {
		t.Fatalf("err = %v, want ErrBusy after 3 attempts", err)
	}
}

func TestSysfsRules(t *testing.T) {
	k, c := newSim(t)
	enable(t, c, "klp_cmdline_1")
	if err := c.Sysfs.SetEnabled("klp_cmdline_1", true); !errors.Is(err, klp.ErrAlreadyState) {
		t.Fatalf("writing the current value: %v, want ErrAlreadyState (EINVAL)", err)
	}
	if err := c.Sysfs.SetEnabled("nope", false); !errors.Is(err, klp.ErrNotFound) {
		t.Fatalf("unknown patch: %v", err)
	}
	k.SetTask(klptest.Task{PID: 9, Comm: "slow", Blocking: true})
	if err := k.LoadPath(simFile(t, "klp_other").Path); err != nil {
		t.Fatal(err)
	}
	if err := c.Sysfs.SetEnabled("klp_cmdline_1", false); !errors.Is(err, klp.ErrBusy) {
		t.Fatalf("disable while another transitions: %v, want ErrBusy", err)
	}
	blockers, err := c.Sysfs.Blockers()
	if err != nil || len(blockers) != 1 || blockers[0].Comm != "slow" {
		t.Fatalf("Blockers = %+v, %v", blockers, err)
	}
	p, err := c.Sysfs.Get("klp_other")
	if err != nil || !p.Transition || p.Replace != nil || len(p.Objects) != 1 || p.Objects[0].Functions[0] != "version_proc_show,1" {
		t.Fatalf("Get = %+v, %v", p, err)
	}
}

func TestNoLivepatchSupport(t *testing.T) {
	s := &klp.Sysfs{FS: klp.OSFS{Root: t.TempDir()}}
	if err := s.Supported(); !errors.Is(err, klp.ErrNoLivepatch) {
		t.Fatalf("Supported on an empty root: %v", err)
	}
	if _, err := s.List(); !errors.Is(err, klp.ErrNoLivepatch) {
		t.Fatalf("List on an empty root: %v", err)
	}
}
