package klp_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/klp-agent/klp-agent/e2e/rpmtest"
	"github.com/klp-agent/klp-agent/klp"
)

const krel = "6.1.0-28-amd64"

func goodKO(t testing.TB, name, release string) []byte {
	return rpmtest.Module(t, "livepatch=Y", "vermagic="+release+" SMP preempt mod_unload modversions ", "name="+name, "license=GPL")
}

func TestInspectRPMLayouts(t *testing.T) {
	dir := t.TempDir()
	ours := rpmtest.Build(t, dir, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_2", Level: 2, KernelRelease: krel, KO: goodKO(t, "klp_cmdline_2", krel)})
	rhel := "5.14.0-284.11.1.el9_2.x86_64"
	kp := rpmtest.Build(t, dir, rpmtest.Spec{Name: "kpatch-patch-5_14_0-284_11_1", Version: "3", NoProvides: true,
		Requires: []string{"kernel-uname-r = " + rhel},
		Files:    map[string][]byte{"/usr/lib/kpatch/" + rhel + "/kpatch-5_14_0-284_11_1-3-1.ko": []byte("x")}})
	tests := []struct {
		file                       string
		layout                     klp.Layout
		level                      int
		kernel, module, modulePath string
	}{
		{ours, klp.LayoutKLP, 2, krel, "klp_cmdline_2", "/usr/lib/klp-agent/livepatches/" + krel + "/klp_cmdline_2.ko"},
		{kp, klp.LayoutKpatch, 3, rhel, "kpatch_5_14_0_284_11_1_3_1", "/usr/lib/kpatch/" + rhel + "/kpatch-5_14_0-284_11_1-3-1.ko"},
	}
	for _, tt := range tests {
		info, err := klp.InspectRPM(tt.file)
		if err != nil {
			t.Fatalf("%s: %v", tt.file, err)
		}
		b, _ := os.ReadFile(tt.file)
		sum := sha256.Sum256(b)
		if info.Layout != tt.layout || info.Level != tt.level || info.KernelRelease != tt.kernel ||
			info.ModuleName != tt.module || info.ModulePath != tt.modulePath ||
			info.Size != int64(len(b)) || info.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: got %+v", filepath.Base(tt.file), info)
		}
	}
}

func TestInspectRPMRejects(t *testing.T) {
	dir := t.TempDir()
	kpath := func(k, m string) string { return "/usr/lib/klp-agent/livepatches/" + k + "/" + m + ".ko" }
	tests := []struct {
		name string
		spec rpmtest.Spec
		want error
	}{
		{"no module", rpmtest.Spec{Family: "a", Module: "m", Level: 1, KernelRelease: krel, Files: map[string][]byte{"/usr/share/doc/x": []byte("x")}}, klp.ErrModuleCount},
		{"two modules", rpmtest.Spec{Family: "b", Module: "m", Level: 1, KernelRelease: krel, Files: map[string][]byte{kpath(krel, "m1"): []byte("x"), kpath(krel, "m2"): []byte("y")}}, klp.ErrModuleCount},
		{"outside layouts", rpmtest.Spec{Family: "c", Module: "m", Level: 1, KernelRelease: krel, Files: map[string][]byte{"/lib/modules/" + krel + "/extra/m.ko": []byte("x")}}, klp.ErrLayout},
		{"provide for another kernel", rpmtest.Spec{Family: "d", Module: "m", Level: 1, KernelRelease: krel, Provides: []string{"klp-livepatch(6.1.0-29-amd64) = 1"}}, klp.ErrKernelMismatch},
		// RPM versions cannot hold Debian's two dashes, so this one is RHEL-style.
		{"requires another kernel", rpmtest.Spec{Name: "kpatch-patch-e", Version: "1", NoProvides: true, Requires: []string{"kernel-uname-r = 5.14.0-285.el9.x86_64"},
			Files: map[string][]byte{"/usr/lib/kpatch/5.14.0-284.el9.x86_64/kpatch-e.ko": []byte("x")}}, klp.ErrKernelMismatch},
		{"no level provide", rpmtest.Spec{Family: "f", Module: "m", Level: 1, KernelRelease: krel, NoProvides: true}, klp.ErrNoLevel},
		{"provide differs from version", rpmtest.Spec{Family: "g", Module: "m", Level: 1, KernelRelease: krel, Provides: []string{"klp-livepatch(" + krel + ") = 2"}}, klp.ErrLevelMismatch},
		{"module name not allowed", rpmtest.Spec{Family: "h", Module: "m", Level: 1, KernelRelease: krel, Files: map[string][]byte{kpath(krel, "bad.name"): []byte("x")}}, klp.ErrInvalidName},
		{"kpatch version not a level", rpmtest.Spec{Name: "kpatch-patch-x", Version: "1.2", NoProvides: true, Files: map[string][]byte{"/usr/lib/kpatch/" + krel + "/kpatch-x.ko": []byte("x")}}, klp.ErrNoLevel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := rpmtest.Build(t, dir, tt.spec)
			if _, err := klp.InspectRPM(f); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	for name, content := range map[string][]byte{
		"empty":   nil,
		"garbage": []byte("definitely not an rpm, but long enough to read a lead from........................................................................"),
		"truncated": func() []byte {
			b, _ := os.ReadFile(rpmtest.Build(t, dir, rpmtest.Spec{Family: "z", Module: "m", Level: 1, KernelRelease: krel}))
			return b[:300]
		}(),
	} {
		if _, err := klp.InspectRPMReader(bytes.NewReader(content)); !errors.Is(err, klp.ErrNotRPM) {
			t.Errorf("%s: err = %v, want ErrNotRPM", name, err)
		}
	}
}

func TestExtractModuleAndCheck(t *testing.T) {
	dir := t.TempDir()
	ko := goodKO(t, "klp_cmdline_1", krel)
	f := rpmtest.Build(t, dir, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_1", Level: 1, KernelRelease: krel, KO: ko})
	var out bytes.Buffer
	if err := klp.ExtractModule(f, &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), ko) {
		t.Fatal("extracted module differs from the packaged one")
	}
	mi, err := klp.ModInfo(out.Bytes())
	if err != nil || mi["name"][0] != "klp_cmdline_1" {
		t.Fatalf("ModInfo = %v, %v", mi, err)
	}
	if err := klp.CheckModule(mi, krel, "klp_cmdline_1"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		modinfo []string
		want    error
	}{
		{"not a livepatch", []string{"vermagic=" + krel + " SMP", "name=klp_cmdline_1"}, klp.ErrNotLivepatch},
		{"other kernel", []string{"livepatch=Y", "vermagic=6.1.0-29-amd64 SMP", "name=klp_cmdline_1"}, klp.ErrVermagic},
		{"other name", []string{"livepatch=Y", "vermagic=" + krel + " SMP", "name=klp_evil"}, klp.ErrInvalidName},
	}
	for _, tt := range tests {
		mi, err := klp.ModInfo(rpmtest.Module(t, tt.modinfo...))
		if err != nil {
			t.Fatal(err)
		}
		if err := klp.CheckModule(mi, krel, "klp_cmdline_1"); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	if _, err := klp.ModInfo([]byte("not elf")); err == nil {
		t.Error("ModInfo accepted a non-ELF file")
	}
	// An xz payload cannot be read with the stdlib: inspection still works,
	// extraction says why it cannot.
	xz := rpmtest.Build(t, dir, rpmtest.Spec{Family: "xz", Module: "klp_xz_1", Level: 1, KernelRelease: krel, Payload: "w2.xzdio"})
	if _, err := klp.InspectRPM(xz); err != nil {
		t.Fatalf("inspect xz rpm: %v", err)
	}
	if err := klp.ExtractModule(xz, &out); !errors.Is(err, klp.ErrUnsupportedPayload) {
		t.Fatalf("extract xz: %v, want ErrUnsupportedPayload", err)
	}
}

func TestVerifyFile(t *testing.T) {
	dir := t.TempDir()
	f := rpmtest.Build(t, dir, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_1", Level: 1, KernelRelease: krel, KO: goodKO(t, "klp_cmdline_1", krel)})
	notlp := rpmtest.Build(t, dir, rpmtest.Spec{Family: "notlp", Module: "klp_notlp", Level: 1, KernelRelease: krel, KO: rpmtest.Module(t, "vermagic="+krel+" SMP", "name=klp_notlp")})
	sum, size, err := klp.FileSHA256(f)
	if err != nil {
		t.Fatal(err)
	}
	nsum, nsize, _ := klp.FileSHA256(notlp)
	good := klp.Want{KernelRelease: krel, Name: "klp_cmdline_1", Level: 1, SHA256: sum, Size: size}
	if _, err := klp.VerifyFile(f, good); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		file string
		want klp.Want
		err  error
	}{
		{"digest", f, klp.Want{KernelRelease: krel, Name: "klp_cmdline_1", Level: 1, SHA256: strings.Repeat("0", 64), Size: size}, klp.ErrDigest},
		{"size", f, klp.Want{KernelRelease: krel, Name: "klp_cmdline_1", Level: 1, SHA256: sum, Size: size + 1}, klp.ErrDigest},
		{"running another kernel", f, klp.Want{KernelRelease: "6.1.0-29-amd64", Name: "klp_cmdline_1", Level: 1, SHA256: sum, Size: size}, klp.ErrKernelMismatch},
		{"not a livepatch", notlp, klp.Want{KernelRelease: krel, Name: "klp_notlp", Level: 1, SHA256: nsum, Size: nsize}, klp.ErrNotLivepatch},
	}
	for _, tt := range tests {
		if _, err := klp.VerifyFile(tt.file, tt.want); !errors.Is(err, tt.err) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.err)
		}
	}
}

var seedOnce sync.Once
var seedRPM []byte

func FuzzInspectRPMReader(f *testing.F) {
	seedOnce.Do(func() {
		dir := f.TempDir()
		b, err := os.ReadFile(rpmtest.Build(f, dir, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_1", Level: 1, KernelRelease: krel}))
		if err != nil {
			f.Fatal(err)
		}
		seedRPM = b
	})
	f.Add(seedRPM)
	f.Add(seedRPM[:200])
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := klp.InspectRPMReader(bytes.NewReader(b))
		if err == nil && (info.ModuleName == "" || info.KernelRelease == "" || info.Level < 1) {
			t.Fatalf("accepted without a module, kernel or level: %+v", info)
		}
	})
}
