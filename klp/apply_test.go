package klp_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/klp/klptest"
)

// TestInstallerApply runs the whole apply path with the real rpm into a
// test root and the simulated kernel: verify, rpm -U, modinfo, load, wait.
func TestInstallerApply(t *testing.T) {
	dir, root := t.TempDir(), t.TempDir()
	k := klptest.New()
	in := &klp.Installer{
		RPM: &klp.RPM{Runner: klp.ExecRunner{}, Root: root},
		Controller: &klp.Controller{Sysfs: &klp.Sysfs{FS: k, Poll: time.Millisecond}, Modules: k,
			Opts: klp.Options{TransitionTimeout: time.Second, UnloadTimeout: time.Second}},
		Root: root,
	}
	build := func(family, mod string, level int, ko []byte) (string, klp.Want) {
		f := rpmtest.Build(t, dir, rpmtest.Spec{Family: family, Module: mod, Level: level, KernelRelease: krel, KO: ko})
		sum, size, err := klp.FileSHA256(f)
		if err != nil {
			t.Fatal(err)
		}
		k.AddFile(filepath.Join(root, "usr/lib/klp-agent/livepatches", krel, mod+".ko"),
			klptest.Module{Name: mod, Livepatch: true, Replace: true, Funcs: map[string][]string{"vmlinux": {"cmdline_proc_show"}}})
		return f, klp.Want{KernelRelease: krel, Name: mod, Level: level, SHA256: sum, Size: size}
	}
	ctx := context.Background()
	f1, w1 := build("cmdline", "klp_cmdline_1", 1, goodKO(t, "klp_cmdline_1", krel))
	f2, w2 := build("cmdline", "klp_cmdline_2", 2, goodKO(t, "klp_cmdline_2", krel))
	res, err := in.Apply(ctx, f1, w1)
	if err != nil {
		t.Fatal(err)
	}
	if k.Patched("cmdline_proc_show") != "klp_cmdline_1" || res.Timing.Install <= 0 || res.Timing.Total < res.Timing.Transition {
		t.Fatalf("after level 1: patched by %q, timing %+v", k.Patched("cmdline_proc_show"), res.Timing)
	}
	if res, err = in.Apply(ctx, f2, w2); err != nil || len(res.Result.Replaced) != 1 {
		t.Fatalf("level 2: %+v %v", res, err)
	}
	if v, _ := in.RPM.Installed(ctx, "klp-cmdline"); v != "2-1" {
		t.Fatalf("installed %q, want 2-1", v)
	}

	// Refused before anything is installed or loaded.
	fo, wo := build("other", "klp_other_1", 1, goodKO(t, "klp_other_1", "6.1.0-29-amd64"))
	fn, wn := build("notlp", "klp_notlp", 1, rpmtest.Module(t, "vermagic="+krel+" SMP", "name=klp_notlp"))
	for _, tt := range []struct {
		name string
		file string
		want klp.Want
		err  error
	}{
		{"module for another kernel", fo, wo, klp.ErrVermagic},
		{"not a livepatch", fn, wn, klp.ErrNotLivepatch},
		{"running another kernel", f1, klp.Want{KernelRelease: "6.1.0-29-amd64", Name: w1.Name, Level: 1, SHA256: w1.SHA256, Size: w1.Size}, klp.ErrKernelMismatch},
	} {
		loads := len(k.Loads)
		if _, err := in.Apply(ctx, tt.file, tt.want); !errors.Is(err, tt.err) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.err)
		}
		if len(k.Loads) != loads {
			t.Errorf("%s: a module was loaded", tt.name)
		}
	}
	for _, pkg := range []string{"klp-other", "klp-notlp"} {
		if v, _ := in.RPM.Installed(ctx, pkg); v != "" {
			t.Errorf("%s was installed (%s) although refused", pkg, v)
		}
	}
}

// shapes is a test rig: the real rpm in a test root and the simulated
// kernel, with livepatch RPMs built on demand.
type shapes struct {
	t     *testing.T
	dir   string
	root  string
	k     *klptest.Kernel
	in    *klp.Installer
	files map[string]string // module -> RPM file
	wants map[string]klp.Want
}

func newShapes(t *testing.T) *shapes {
	s := &shapes{t: t, dir: t.TempDir(), root: t.TempDir(), k: klptest.New(), files: map[string]string{}, wants: map[string]klp.Want{}}
	s.in = &klp.Installer{
		RPM: &klp.RPM{Runner: klp.ExecRunner{}, Root: s.root},
		Controller: &klp.Controller{Sysfs: &klp.Sysfs{FS: s.k, Poll: time.Millisecond}, Modules: s.k, Log: s.k,
			Opts: klp.Options{TransitionTimeout: 300 * time.Millisecond, UnloadTimeout: time.Second}},
		Root: s.root,
	}
	return s
}

// add builds module mod (its simulated shape m) at level in RPM family.
func (s *shapes) add(family, mod string, level int, m klptest.Module, edit func(*rpmtest.Spec)) {
	spec := rpmtest.Spec{Family: family, Module: mod, Level: level, KernelRelease: krel, KO: goodKO(s.t, mod, krel)}
	if edit != nil {
		edit(&spec)
	}
	f := rpmtest.Build(s.t, s.dir, spec)
	sum, size, err := klp.FileSHA256(f)
	if err != nil {
		s.t.Fatal(err)
	}
	m.Name, m.Livepatch = mod, true
	if m.Funcs == nil {
		m.Funcs = map[string][]string{"vmlinux": {"cmdline_proc_show"}}
	}
	s.k.AddFile(filepath.Join(s.root, "usr/lib/klp-agent/livepatches", krel, mod+".ko"), m)
	s.files[mod] = f
	s.wants[mod] = klp.Want{KernelRelease: krel, Name: mod, Level: level, SHA256: sum, Size: size}
}

// apply applies mod over prev ("" = none), as the agent does.
func (s *shapes) apply(mod, prev, prevPkg string) error {
	w := s.wants[mod]
	if prev != "" {
		w.Previous = &klp.Installed{Module: prev, Package: prevPkg, RPM: s.files[prev]}
	}
	_, err := s.in.Apply(context.Background(), s.files[mod], w)
	return err
}

// expect checks the kernel serves serving and rpm -q names pkg at version.
func (s *shapes) expect(serving, pkg, version string) {
	s.t.Helper()
	if got := s.k.Patched("cmdline_proc_show"); got != serving {
		s.t.Fatalf("kernel serves %q, want %q (loaded %v)", got, serving, s.k.Loaded())
	}
	if v, err := s.in.RPM.Installed(context.Background(), pkg); err != nil || v != version {
		s.t.Fatalf("rpm -q %s: %q %v, want %q", pkg, v, err, version)
	}
	if loaded := s.k.Loaded(); len(loaded) > 1 || (serving == "") != (len(loaded) == 0) {
		s.t.Fatalf("modules loaded %v, want only %q", loaded, serving)
	}
}

// Each real shape of livepatch, on the kernel's rules: whatever the kernel
// refuses or the agent backs out, the kernel keeps the previous level and
// rpm -q names exactly that package again.
func TestInstallerShapes(t *testing.T) {
	for _, tt := range []struct {
		name        string
		replaceAttr bool // 6.11+ sysfs shows replace
		sigEnforce  bool
		second      klptest.Module
		err         error
		reason      klp.Refusal
		kernelSays  string
	}{
		{"not cumulative, seen after the transition, 6.1", false, false, klptest.Module{Replace: false}, klp.ErrNotCumulative, klp.RefusedNotCumulative, ""},
		{"not cumulative, sysfs replace=0, 6.12", true, false, klptest.Module{Replace: false}, klp.ErrNotCumulative, klp.RefusedNotCumulative, ""},
		{"klp_state downgrade", false, false, klptest.Module{Replace: true, States: map[uint64]int{1: 1}}, klp.ErrRefused, klp.RefusedState,
			"livepatch: Livepatch patch (klp_cmdline_2) is not compatible with the already installed livepatches."},
		{"pre-patch callback fails", false, false, klptest.Module{Replace: true, States: map[uint64]int{1: 2}, PrePatch: syscall.ENODEV}, syscall.ENODEV,
			klp.RefusedPrePatch, "livepatch: pre-patch callback failed for object 'vmlinux'"},
		{"unsigned under module.sig_enforce=1", false, true, klptest.Module{Replace: true, States: map[uint64]int{1: 2}, Unsigned: true}, syscall.EKEYREJECTED,
			klp.RefusedSignature, "Loading of unsigned module is rejected"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newShapes(t)
			s.k.ReplaceAttr = tt.replaceAttr
			s.add("cmdline", "klp_cmdline_1", 1, klptest.Module{Replace: true, States: map[uint64]int{1: 2}}, nil)
			s.add("cmdline", "klp_cmdline_2", 2, tt.second, nil)
			if err := s.apply("klp_cmdline_1", "", ""); err != nil {
				t.Fatal(err)
			}
			s.expect("klp_cmdline_1", "klp-cmdline", "1-1")
			s.k.SigEnforce = tt.sigEnforce
			err := s.apply("klp_cmdline_2", "klp_cmdline_1", "klp-cmdline")
			var refused *klp.RefusedError
			if !errors.Is(err, tt.err) || !errors.As(err, &refused) || refused.Reason != tt.reason || !refused.Deterministic() {
				t.Fatalf("err = %v, want %v (%s)", err, tt.err, tt.reason)
			}
			if tt.kernelSays != "" && !slices.Contains(refused.Kernel, tt.kernelSays) {
				t.Fatalf("the error does not carry the kernel's words %q: %v", tt.kernelSays, err)
			}
			s.expect("klp_cmdline_1", "klp-cmdline", "1-1")
		})
	}
}

// A stalled transition is reversed, and rpm's database too.
func TestInstallerStallRestoresRPM(t *testing.T) {
	s := newShapes(t)
	s.add("cmdline", "klp_cmdline_1", 1, klptest.Module{Replace: true}, nil)
	s.add("cmdline", "klp_cmdline_2", 2, klptest.Module{Replace: true}, nil)
	if err := s.apply("klp_cmdline_1", "", ""); err != nil {
		t.Fatal(err)
	}
	s.k.SetTask(klptest.Task{PID: 9, Comm: "stuck", Blocking: true})
	if err := s.apply("klp_cmdline_2", "klp_cmdline_1", "klp-cmdline"); !errors.Is(err, klp.ErrStalled) {
		t.Fatalf("err = %v, want ErrStalled", err)
	}
	s.expect("klp_cmdline_1", "klp-cmdline", "1-1")
	// With no previous level, a refused first patch leaves no package.
	s.add("fresh", "klp_fresh_1", 1, klptest.Module{Replace: true}, nil)
	s.k.SetTask(klptest.Task{PID: 9, Comm: "stuck"})
	s.k.SigEnforce = true
	s.add("unsigned", "klp_unsigned_1", 1, klptest.Module{Replace: true, Unsigned: true}, nil)
	if err := s.apply("klp_unsigned_1", "klp_cmdline_1", "klp-cmdline"); !errors.Is(err, klp.ErrRefused) {
		t.Fatalf("unsigned: %v", err)
	}
	if v, _ := s.in.RPM.Installed(context.Background(), "klp-unsigned"); v != "" {
		t.Fatalf("a refused package of its own name stays installed: %s", v)
	}
	s.expect("klp_cmdline_1", "klp-cmdline", "1-1")
}

// Levels that come in packages of different names: rpm -q names only the
// one the kernel runs.
func TestInstallerErasesThePreviousPackage(t *testing.T) {
	s := newShapes(t)
	s.add("a", "klp_a_1", 1, klptest.Module{Replace: true}, nil)
	s.add("b", "klp_b_2", 2, klptest.Module{Replace: true}, nil)
	if err := s.apply("klp_a_1", "", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.apply("klp_b_2", "klp_a_1", "klp-a"); err != nil {
		t.Fatal(err)
	}
	s.expect("klp_b_2", "klp-b", "2-1")
	if v, _ := s.in.RPM.Installed(context.Background(), "klp-a"); v != "" {
		t.Fatalf("klp-a still installed (%s)", v)
	}
}

// rpm runs no scriptlet of a livepatch RPM unless configured to; an RPM
// named like an installed package that is not a livepatch is refused.
func TestInstallerScriptletsAndNames(t *testing.T) {
	s := newShapes(t)
	// rpm runs scriptlets chrooted into its root: give it a shell there
	// (busybox-static, which make deps installs), and no dependency
	// database to satisfy.
	sh, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static (make deps): %v", err)
	}
	os.MkdirAll(filepath.Join(s.root, "bin"), 0o755)
	if err := os.WriteFile(filepath.Join(s.root, "bin/sh"), sh, 0o755); err != nil {
		t.Fatal(err)
	}
	s.in.RPM.NoDeps = true
	marker := filepath.Join(s.root, "post-ran")
	post := "echo ran >/post-ran"
	s.add("post", "klp_post_1", 1, klptest.Module{Replace: true}, func(sp *rpmtest.Spec) { sp.Post = post })
	if err := s.apply("klp_post_1", "", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the post scriptlet ran by default")
	}
	s.add("post", "klp_post_2", 2, klptest.Module{Replace: true}, func(sp *rpmtest.Spec) { sp.Post = post })
	s.in.RPM.Scripts = true
	if err := s.apply("klp_post_2", "klp_post_1", "klp-post"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("%%post did not run with scripts on: %v", err)
	}
	s.in.RPM.Scripts = false

	// An installed openssh-server, and a "livepatch" of that name.
	ssh := rpmtest.Build(t, t.TempDir(), rpmtest.Spec{Name: "openssh-server", Version: "9", NoProvides: true,
		Files: map[string][]byte{"/usr/sbin/sshd": []byte("sshd")}})
	if err := s.in.RPM.Install(context.Background(), ssh); err != nil {
		t.Fatal(err)
	}
	s.add("evil", "klp_evil_1", 1, klptest.Module{Replace: true}, func(sp *rpmtest.Spec) { sp.Name = "openssh-server"; sp.Version = "1" })
	if err := s.apply("klp_evil_1", "klp_post_2", "klp-post"); !errors.Is(err, klp.ErrForeignPackage) {
		t.Fatalf("err = %v, want ErrForeignPackage", err)
	}
	if _, err := os.Stat(filepath.Join(s.root, "usr/sbin/sshd")); err != nil {
		t.Fatalf("sshd is gone: %v", err)
	}
	s.expect("klp_post_2", "klp-post", "2-1")
}

// Power lost inside rpm's transaction (new header written, old one not yet
// erased) leaves two instances of one name installed: boot4 of
// TestAgentRealKernel left klp-cmdline 3 and 4 so. Each is a livepatch,
// not one package holding two modules: the next apply goes ahead, and
// rpm -U leaves the one it installs; erase takes every instance.
func TestInstallerMendsTwoInstancesOfAName(t *testing.T) {
	s := newShapes(t)
	s.add("cmdline", "klp_cmdline_1", 1, klptest.Module{Replace: true}, nil)
	s.add("cmdline", "klp_cmdline_2", 2, klptest.Module{Replace: true}, nil)
	ctx := context.Background()
	// rpm -i adds a header beside any of the same name, as the cut
	// transaction left them.
	rpmI := func(file string) {
		t.Helper()
		if out, err := exec.Command("rpm", "--root", s.root, "-i", "--nodeps", "--noscripts", "--", file).CombinedOutput(); err != nil {
			t.Fatalf("rpm -i %s: %v\n%s", file, err, out)
		}
	}
	rpmI(s.files["klp_cmdline_1"])
	rpmI(s.files["klp_cmdline_2"])
	ins, err := s.in.RPM.Instances(ctx, "klp-cmdline")
	if err != nil || len(ins) != 2 {
		t.Fatalf("instances = %+v, %v; want two", ins, err)
	}
	for _, i := range ins {
		if err := klp.LivepatchFiles(i.Files); err != nil {
			t.Errorf("%s: %v", i.NEVRA, err)
		}
	}
	if err := klp.LivepatchFiles(append(ins[0].Files, ins[1].Files...)); !errors.Is(err, klp.ErrModuleCount) {
		t.Fatalf("the two instances' files together: %v, want ErrModuleCount", err)
	}
	if err := s.apply("klp_cmdline_1", "", ""); err != nil {
		t.Fatalf("apply over two instances: %v", err)
	}
	s.expect("klp_cmdline_1", "klp-cmdline", "1-1")
	if ins, err := s.in.RPM.Instances(ctx, "klp-cmdline"); err != nil || len(ins) != 1 || !strings.HasPrefix(ins[0].NEVRA, "klp-cmdline-1-1.") {
		t.Fatalf("after the apply: %+v, %v; want klp-cmdline-1-1 alone", ins, err)
	}
	if _, err := os.Stat(filepath.Join(s.root, "usr/lib/klp-agent/livepatches", krel, "klp_cmdline_2.ko")); !os.IsNotExist(err) {
		t.Fatalf("level 2's module is still on disk: %v", err)
	}
	rpmI(s.files["klp_cmdline_2"])
	if err := s.in.RPM.Erase(ctx, "klp-cmdline"); err != nil {
		t.Fatalf("erase a name installed twice: %v", err)
	}
	if ins, err := s.in.RPM.Instances(ctx, "klp-cmdline"); err != nil || len(ins) != 0 {
		t.Fatalf("after erase: %+v, %v", ins, err)
	}
	// A name with a foreign instance beside a livepatch one is still refused.
	ssh := rpmtest.Build(t, t.TempDir(), rpmtest.Spec{Name: "klp-cmdline", Version: "9", NoProvides: true,
		Files: map[string][]byte{"/usr/sbin/sshd": []byte("sshd")}})
	rpmI(s.files["klp_cmdline_2"])
	rpmI(ssh)
	if err := s.apply("klp_cmdline_1", "", ""); !errors.Is(err, klp.ErrForeignPackage) || !strings.Contains(err.Error(), "klp-cmdline-9") {
		t.Fatalf("err = %v, want ErrForeignPackage naming klp-cmdline-9", err)
	}
}

// An apply whose failure could not be undone is refused before rpm -U:
// rpm holds the package of the livepatch the kernel runs, the new one of
// that name would replace it, and there is no copy of it to put back (the
// by-hand apply's old trap: a refused downgrade left rpm with no package
// of that name while the kernel kept the higher level).
func TestInstallerRefusesWhatItCouldNotRestore(t *testing.T) {
	s := newShapes(t)
	s.add("cmdline", "klp_cmdline_2", 2, klptest.Module{Replace: true, States: map[uint64]int{1: 2}}, nil)
	s.add("cmdline", "klp_cmdline_1", 1, klptest.Module{Replace: true, States: map[uint64]int{1: 1}}, nil)
	s.add("other", "klp_other_1", 1, klptest.Module{Replace: true, States: map[uint64]int{1: 2}}, nil)
	if err := s.apply("klp_cmdline_2", "", ""); err != nil {
		t.Fatal(err)
	}
	loads := len(s.k.Loads)
	for _, prev := range []*klp.Installed{
		{Module: "klp_cmdline_2"},                                  // by hand: only the kernel's patch is known
		{Module: "klp_cmdline_2", Package: "klp-cmdline"},          // the daemon, its copy lost
		{Module: "klp_cmdline_2", RPM: s.files["klp_cmdline_1"]},   // a copy, but of no known package
		{Module: "klp_cmdline_2", Package: "klp-a", RPM: "/x.rpm"}, // a copy of another package
	} {
		w := s.wants["klp_cmdline_1"]
		w.Previous = prev
		if _, err := s.in.Apply(context.Background(), s.files["klp_cmdline_1"], w); !errors.Is(err, klp.ErrNoRestore) {
			t.Fatalf("previous %+v: err = %v, want ErrNoRestore", prev, err)
		}
		s.expect("klp_cmdline_2", "klp-cmdline", "2-1")
	}
	if len(s.k.Loads) != loads {
		t.Fatalf("loaded %v after refusals", s.k.Loads[loads:])
	}
	// A package of another name does not replace it: nothing to restore.
	if err := s.apply("klp_other_1", "klp_cmdline_2", ""); err != nil {
		t.Fatal(err)
	}
}
