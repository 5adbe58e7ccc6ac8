package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/klp/klptest"
)

// klpRig is a host for the klp commands: the simulated kernel, the real
// rpm in a test root, the agent's state directory.
type klpRig struct {
	t               *testing.T
	root, state, rp string
	k               *klptest.Kernel
	rpms            map[string]string // module -> RPM file
}

func newKLPRig(t *testing.T) *klpRig {
	r := &klpRig{t: t, root: t.TempDir(), state: t.TempDir(), rp: t.TempDir(), k: klptest.New(), rpms: map[string]string{}}
	osr := filepath.Join(r.root, "proc/sys/kernel/osrelease")
	if err := os.MkdirAll(filepath.Dir(osr), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(osr, []byte(testKernel+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

// add builds klp-cmdline at level, whose module has klp_state 1 at version.
func (r *klpRig) add(level, version int) {
	mod := "klp_cmdline_" + string(rune('0'+level))
	r.rpms[mod] = rpmtest.Build(r.t, r.rp, rpmtest.Spec{Family: "cmdline", Module: mod, Level: level, KernelRelease: testKernel})
	r.k.AddFile(filepath.Join(r.root, "usr/lib/klp-agent/livepatches", testKernel, mod+".ko"), klptest.Module{Name: mod, Livepatch: true,
		Replace: true, States: map[uint64]int{1: version}, Funcs: map[string][]string{"vmlinux": {"cmdline_proc_show"}}})
}

func (r *klpRig) run(args ...string) (string, int) {
	var buf bytes.Buffer
	env := &Env{Stdout: &buf, Stderr: &buf, Now: func() time.Time { return t0 },
		KLPKernel: func(string) KLPKernel { return KLPKernel{FS: r.k, Modules: r.k, Log: r.k} }}
	// args[:2] is "klp VERB": flags before the positional NAME.
	code := Main(append(append(args[:2:2], "--root", r.root), args[2:]...), env)
	return buf.String(), code
}

// expect checks what the kernel serves and what rpm -q says of klp-cmdline.
func (r *klpRig) expect(serving, version string) {
	r.t.Helper()
	if got := r.k.Patched("cmdline_proc_show"); got != serving {
		r.t.Errorf("the kernel serves %q, want %q", got, serving)
	}
	rpm := &klp.RPM{Runner: klp.ExecRunner{}, Root: r.root}
	if v, err := rpm.Installed(context.Background(), "klp-cmdline"); err != nil || v != version {
		r.t.Errorf("rpm -q klp-cmdline: %q %v, want %q", v, err, version)
	}
}

// TestKLPDisableUnloadsOnlyLivepatches: klp disable of a name that is no
// livepatch refuses with the reason and a non-zero exit, and unloads
// nothing (it used to unload any idle module of that name and say
// "disabled and unloaded").
func TestKLPDisableUnloadsOnlyLivepatches(t *testing.T) {
	r := newKLPRig(t)
	r.k.AddFile("/lib/modules/e1000e.ko", klptest.Module{Name: "e1000e"})
	if err := r.k.LoadPath("/lib/modules/e1000e.ko"); err != nil {
		t.Fatal(err)
	}
	r.add(1, 1)
	if out, code := r.run("klp", "apply", "--rpm", r.rpms["klp_cmdline_1"], "--state-dir", r.state); code != 0 {
		t.Fatalf("apply: exit %d: %s", code, out)
	}
	for _, tt := range []struct {
		name string
		code int
		want string
	}{
		{"nonexistent", 1, "klp-agent klp: disable nonexistent: livepatch not found: no /sys/kernel/livepatch/nonexistent and no module of that name loaded\n"},
		{"e1000e", 1, "klp-agent klp: disable e1000e: unload e1000e: not a livepatch module: the kernel lists no /sys/kernel/livepatch/e1000e and /sys/module/e1000e/taint has no K; nothing unloaded\n"},
		{"klp_cmdline_1", 0, "klp_cmdline_1 disabled and unloaded in "},
	} {
		out, code := r.run("klp", "disable", tt.name)
		if code != tt.code || !strings.HasPrefix(out, tt.want) {
			t.Errorf("klp disable %s: exit %d, output %q; want exit %d, %q", tt.name, code, out, tt.code, tt.want)
		}
	}
	if got := r.k.Loaded(); !slices.Equal(got, []string{"e1000e"}) {
		t.Errorf("loaded %v, want [e1000e]", got)
	}
	if !slices.Equal(r.k.Unloads, []string{"klp_cmdline_1"}) {
		t.Errorf("unloaded %v, want only klp_cmdline_1", r.k.Unloads)
	}
}

// TestKLPApplyRestoresRPMOnRefusal: when the kernel refuses a by-hand
// apply (here a klp_state downgrade), rpm's database is put back: the
// previous package re-installed from the agent's copy (where the daemon
// finds it) or --previous-rpm; with neither, nothing is installed at all.
// It used to erase the package, so rpm -q named nothing while the kernel
// kept the higher level.
func TestKLPApplyRestoresRPMOnRefusal(t *testing.T) {
	r := newKLPRig(t)
	r.add(2, 2)
	r.add(1, 1)
	if out, code := r.run("klp", "apply", "--rpm", r.rpms["klp_cmdline_2"], "--state-dir", r.state); code != 0 {
		t.Fatalf("apply level 2: exit %d: %s", code, out)
	}
	r.expect("klp_cmdline_2", "2-1")

	// No copy anywhere: refused before rpm -U.
	out, code := r.run("klp", "apply", "--rpm", r.rpms["klp_cmdline_1"], "--state-dir", r.state)
	want := "klp-agent klp: apply klp-cmdline: no copy of the running livepatch's package to restore: rpm -U would replace klp-cmdline-2-1.noarch, " +
		"the package of klp_cmdline_2 which the kernel runs now; nothing was changed: give --previous-rpm FILE, the RPM of klp_cmdline_2\n"
	if code != 1 || out != want {
		t.Errorf("without a copy: exit %d, output %q; want 1, %q", code, out, want)
	}
	r.expect("klp_cmdline_2", "2-1")

	// The agent's copy, as the daemon keeps it.
	sum, size, err := klp.FileSHA256(r.rpms["klp_cmdline_2"])
	if err != nil {
		t.Fatal(err)
	}
	store := &state.Store{Dir: r.state}
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	st.Kernel(testKernel).Current = &state.PatchRecord{Name: "klp_cmdline_2", Level: 2, SHA256: sum, Size: size, RPMName: "klp-cmdline"}
	if err := store.Save(st); err != nil {
		t.Fatal(err)
	}
	cp, _ := store.RPMPath(st.Kernel(testKernel).Current)
	b, err := os.ReadFile(r.rpms["klp_cmdline_2"])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(cp), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	loads := len(r.k.Loads)
	for _, args := range [][]string{
		{"--state-dir", r.state},
		{"--state-dir", t.TempDir(), "--previous-rpm", r.rpms["klp_cmdline_2"]},
	} {
		out, code := r.run(append([]string{"klp", "apply", "--rpm", r.rpms["klp_cmdline_1"]}, args...)...)
		if code != 1 || !strings.Contains(out, "is not compatible with the already installed livepatches") {
			t.Errorf("%v: exit %d, output %q; want 1 and the kernel's refusal", args, code, out)
		}
		r.expect("klp_cmdline_2", "2-1")
	}
	if len(r.k.Loads) != loads {
		t.Errorf("loads %v: the refused module went in", r.k.Loads[loads:])
	}
}

// klp apply of an RPM named like an installed package that is not a
// livepatch is refused before rpm -U, with the reason and a non-zero exit,
// now that the command starts rpm -q of the name before the rest of its
// work: the package stays, nothing is loaded.
func TestKLPApplyRefusesAForeignName(t *testing.T) {
	r := newKLPRig(t)
	ssh := rpmtest.Build(t, t.TempDir(), rpmtest.Spec{Name: "openssh-server", Version: "9", NoProvides: true,
		Files: map[string][]byte{"/usr/sbin/sshd": []byte("sshd")}})
	if err := (&klp.RPM{Runner: klp.ExecRunner{}, Root: r.root}).Install(context.Background(), ssh); err != nil {
		t.Fatal(err)
	}
	evil := rpmtest.Build(t, t.TempDir(), rpmtest.Spec{Name: "openssh-server", Version: "1", Module: "klp_evil_1", Level: 1, KernelRelease: testKernel})
	out, code := r.run("klp", "apply", "--rpm", evil, "--state-dir", r.state)
	if code == 0 || !strings.Contains(out, klp.ErrForeignPackage.Error()) {
		t.Fatalf("exit %d: %s; want the foreign-name refusal", code, out)
	}
	if _, err := os.Stat(filepath.Join(r.root, "usr/sbin/sshd")); err != nil {
		t.Fatalf("sshd is gone: %v", err)
	}
	if v, err := (&klp.RPM{Runner: klp.ExecRunner{}, Root: r.root}).Installed(context.Background(), "openssh-server"); err != nil || v != "9-1" {
		t.Fatalf("rpm -q openssh-server: %q %v, want 9-1", v, err)
	}
	if got := r.k.Patched("cmdline_proc_show"); got != "" {
		t.Fatalf("the kernel serves %q", got)
	}
}
