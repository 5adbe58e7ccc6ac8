package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/klp/klptest"
	"github.com/klp-agent/klp-agent/manifest"
)

// crashEnv carries a crash test's instructions to the re-executed test
// binary, which then plays the agent process instead of running tests.
const crashEnv = "KLP_AGENT_CRASH_HELPER"

type crashJob struct {
	Root, StateDir, Kernel, ServerURL string
	Patches                           []manifest.Patch
	Op                                string // "apply" (converge on level 1) or "rollback" (from 2, blocking it)
	CrashAt                           string // step at which the process SIGKILLs itself; "" = run to the end
}

func TestMain(m *testing.M) {
	if job := os.Getenv(crashEnv); job != "" {
		os.Exit(crashHelper(job))
	}
	os.Exit(m.Run())
}

// crashHelper is the agent process of a crash test.
func crashHelper(jobJSON string) int {
	var j crashJob
	if err := json.Unmarshal([]byte(jobJSON), &j); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	k, err := klptest.Open(j.Kernel)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	crash := func(step string) {
		if step == j.CrashAt {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	in := &klp.Installer{RPM: &klp.RPM{Runner: klp.ExecRunner{}, Root: j.Root},
		Controller: &klp.Controller{Sysfs: &klp.Sysfs{FS: k, Poll: time.Millisecond}, Modules: k,
			Opts: klp.Options{TransitionTimeout: 2 * time.Second, UnloadTimeout: 2 * time.Second},
			Hook: func(s string) { crash("klp:" + s) }},
		Root: j.Root, Hook: func(s string) { crash("klp:" + s) }}
	a := New(Deps{Store: &state.Store{Dir: j.StateDir}, Host: manifest.Host{ID: "h", Kernel: krel}, Installer: in,
		BootID: func() (string, error) { return "boot-1", nil }, Crashpoint: crash})
	ctx := context.Background()
	if err := a.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		return 1
	}
	switch j.Op {
	case "apply":
		m := &manifest.Manifest{Schema: 1, Version: 1, Expires: time.Now().Add(time.Hour), Patches: j.Patches[:1]}
		err = a.Converge(ctx, &manifest.Verified{Manifest: m, URL: j.ServerURL + "/manifest.json"})
	case "rollback":
		// The verdict (or the operator) asks again after a restart, as the
		// daemon's health monitor would; it is a no-op once done.
		if c := a.kernel().Current; c != nil && c.Level == 2 {
			err = a.Rollback(ctx, state.CauseHealth, "oops attributed to klp_cmdline_2", []string{"Oops"}, true)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, j.Op+":", err)
		return 1
	}
	return 0
}

// TestCrashConsistency kills the agent process with SIGKILL at every step
// of an apply and of a rollback, restarts it, and checks that the state
// file parses, the kernel and the recorded state agree, nothing applied is
// forgotten and nothing is applied twice. The simulated kernel lives in a
// file, so it outlives the killed agent as a real kernel would.
func TestCrashConsistency(t *testing.T) {
	rpmDir := t.TempDir()
	var patches []manifest.Patch
	var kos [][]byte
	for _, l := range []int{1, 2} {
		name := fmt.Sprintf("klp_cmdline_%d", l)
		ko := rpmtest.Module(t, "livepatch=Y", "vermagic="+krel+" SMP preempt mod_unload modversions ", "name="+name)
		f := rpmtest.Build(t, rpmDir, rpmtest.Spec{Family: "cmdline", Module: name, Level: l, KernelRelease: krel, KO: ko})
		sum, size, err := klp.FileSHA256(f)
		if err != nil {
			t.Fatal(err)
		}
		patches = append(patches, manifest.Patch{Kernel: krel, Name: name, Level: l, URL: filepath.Base(f), SHA256: sum, Size: size})
		kos = append(kos, ko)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(rpmDir)))
	defer srv.Close()

	points := map[string][]string{
		"apply": {"apply:intent", "apply:downloading", "apply:downloaded", "apply:installing", "klp:installed", "apply:enabling",
			"klp:loaded", "klp:enabled", "apply:soaking"},
		"rollback": {"rollback:intent", "rollback:loaded", "rollback:stepped-back", "rollback:done"},
	}
	for _, op := range []string{"apply", "rollback"} {
		for _, point := range points[op] {
			t.Run(op+"/"+point, func(t *testing.T) {
				j := crashJob{Root: t.TempDir(), StateDir: t.TempDir(), Kernel: filepath.Join(t.TempDir(), "kernel.json"),
					ServerURL: srv.URL, Patches: patches, Op: op}
				k := klptest.New()
				for i, p := range patches {
					m := klptest.Module{Name: p.Name, Livepatch: true, Replace: true, Funcs: map[string][]string{"vmlinux": {"cmdline_proc_show"}}}
					k.AddFile(filepath.Join(j.Root, "usr/lib/klp-agent/livepatches", krel, p.Name+".ko"), m)
					k.AddModule(kos[i], m)
				}
				if err := k.Persist(j.Kernel); err != nil {
					t.Fatal(err)
				}
				if op == "rollback" {
					setUpSoakingLevel2(t, j, k)
				}
				before, _ := klptest.Open(j.Kernel)
				loads1 := count(before.Loads, "klp_cmdline_1")

				j.CrashAt = point
				if err := runHelper(j); !killed(err) {
					t.Fatalf("the agent was not killed at %s: %v", point, err)
				}
				j.CrashAt = ""
				if err := runHelper(j); err != nil {
					t.Fatalf("restart after the crash at %s: %v", point, err)
				}

				st, err := (&state.Store{Dir: j.StateDir}).Load()
				if err != nil {
					t.Fatalf("state after the crash: %v", err)
				}
				ks, err := klptest.Open(j.Kernel)
				if err != nil {
					t.Fatal(err)
				}
				kst := st.Kernels[krel]
				served := ks.Patched("cmdline_proc_show")
				if kst.Current == nil || kst.Current.Name != served {
					t.Fatalf("state records %v, the kernel serves %q", kst.Current, served)
				}
				if loaded := ks.Loaded(); !slices.Equal(loaded, []string{served}) {
					t.Fatalf("modules loaded %v, want only %s", loaded, served)
				}
				switch op {
				case "apply":
					if served != "klp_cmdline_1" || kst.Phase != state.PhaseSoaking {
						t.Fatalf("after apply: %s serves, phase %s", served, kst.Phase)
					}
					if n := count(ks.Loads, "klp_cmdline_1"); n != 1 {
						t.Fatalf("klp_cmdline_1 loaded %d times", n)
					}
				case "rollback":
					if served != "klp_cmdline_1" || kst.Phase != state.PhaseGood || !kst.IsBlocked("klp_cmdline_2", 2, patches[1].SHA256) {
						t.Fatalf("after rollback: %s serves, phase %s, blocked %v", served, kst.Phase, kst.Blocked)
					}
					if n := count(ks.Loads, "klp_cmdline_1") - loads1; n != 1 {
						t.Fatalf("rolling back loaded klp_cmdline_1 %d times", n)
					}
					if len(kst.Good) != 1 || kst.Good[0].Level != 1 {
						t.Fatalf("good levels %v", kst.Good)
					}
				}
			})
		}
	}
}

// setUpSoakingLevel2 brings the host to level 1 good, level 2 soaking.
func setUpSoakingLevel2(t *testing.T, j crashJob, k *klptest.Kernel) {
	t.Helper()
	a := New(Deps{Store: &state.Store{Dir: j.StateDir}, Host: manifest.Host{ID: "h", Kernel: krel},
		Installer: &klp.Installer{RPM: &klp.RPM{Runner: klp.ExecRunner{}, Root: j.Root},
			Controller: &klp.Controller{Sysfs: &klp.Sysfs{FS: k, Poll: time.Millisecond}, Modules: k}, Root: j.Root},
		BootID: func() (string, error) { return "boot-1", nil }})
	ctx := context.Background()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Schema: 1, Version: 1, Expires: time.Now().Add(time.Hour), Patches: j.Patches}
	v := &manifest.Verified{Manifest: m, URL: j.ServerURL + "/m"}
	m.Patches = j.Patches[:1]
	if err := a.Converge(ctx, v); err != nil {
		t.Fatal(err)
	}
	if err := a.Tick(); err != nil { // soak 0: good at once
		t.Fatal(err)
	}
	m.Patches = j.Patches
	if err := a.Converge(ctx, v); err != nil {
		t.Fatal(err)
	}
	if c := a.kernel().Current; c == nil || c.Level != 2 || a.kernel().Phase != state.PhaseSoaking {
		t.Fatalf("set-up: %+v", a.kernel())
	}
}

func runHelper(j crashJob) error {
	b, _ := json.Marshal(j)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+string(b))
	out, err := cmd.CombinedOutput()
	if err != nil && !killed(err) {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return err
}

func killed(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}
