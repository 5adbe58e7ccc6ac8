package klp_test

import (
	"context"
	"errors"
	"path/filepath"
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
