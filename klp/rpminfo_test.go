package klp_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/klp-agent/klp-agent/klp"
)

const (
	krel = "6.1.0-28-amd64"
	// RPM versions cannot hold Debian's two dashes, so every kernel-uname-r
	// requirement below names a RHEL-style release.
	rhel    = "5.14.0-284.11.1.el9_2.x86_64"
	klpDir  = "/usr/lib/klp-agent/livepatches/"
	kpDir   = "/usr/lib/kpatch/"
	lpMagic = " SMP preempt mod_unload modversions "
)

// fixtureDir holds everything the fixtures build, once per test binary.
var fixtureDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "klp-rpminfo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fixtureDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// moduleInfo is the .modinfo of a fake module; "" leaves a key out.
type moduleInfo struct {
	livepatch, vermagic, name string
	none                      bool // no .modinfo section at all
}

func livepatchInfo(name, release string) moduleInfo {
	return moduleInfo{livepatch: "Y", vermagic: release + lpMagic, name: name}
}

type onceResult struct {
	once sync.Once
	b    []byte
	path string
	err  error
}

var (
	modulesMu sync.Mutex
	modules   = map[moduleInfo]*onceResult{}
)

// fakeModule compiles testdata/rpminfo/modinfo.c into an ELF relocatable
// object with the given .modinfo, once per distinct moduleInfo.
func fakeModule(mi moduleInfo) ([]byte, error) {
	modulesMu.Lock()
	r := modules[mi]
	if r == nil {
		r = &onceResult{}
		modules[mi] = r
	}
	modulesMu.Unlock()
	r.once.Do(func() {
		if _, err := exec.LookPath("gcc"); err != nil {
			r.err = fmt.Errorf("gcc not found: install it (apt-get install gcc): %w", err)
			return
		}
		src, err := filepath.Abs("testdata/rpminfo/modinfo.c")
		if err != nil {
			r.err = err
			return
		}
		out, err := os.CreateTemp(fixtureDir, "module-*.o")
		if err != nil {
			r.err = err
			return
		}
		out.Close()
		args := []string{"-c", "-o", out.Name()}
		for _, d := range []struct{ macro, v string }{{"MI_LIVEPATCH", mi.livepatch}, {"MI_VERMAGIC", mi.vermagic}, {"MI_NAME", mi.name}} {
			if d.v != "" {
				args = append(args, fmt.Sprintf("-D%s=%q", d.macro, d.v))
			}
		}
		if mi.none {
			args = append(args, "-DMI_NO_MODINFO")
		}
		if msg, err := exec.Command("gcc", append(args, src)...).CombinedOutput(); err != nil {
			r.err = fmt.Errorf("gcc %v: %w\n%s", args, err, msg)
			return
		}
		r.b, r.err = os.ReadFile(out.Name())
	})
	return r.b, r.err
}

// goodKO is a fake livepatch module built for release.
func goodKO(t testing.TB, name, release string) []byte {
	t.Helper()
	b, err := fakeModule(livepatchInfo(name, release))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rpmFixture is one package built with testdata/rpminfo/livepatch.spec.
type rpmFixture struct {
	name, version      string
	provides, requires string                // spec syntax, comma-separated
	payload            string                // _binary_payload; "" is w9.gzdio
	files              map[string]string     // path → literal content
	modules            map[string]moduleInfo // path → fake module
	links              map[string]string     // path → symlink target
	dirs               []string              // directories the package owns
	attrs              map[string]string     // path → %attr(mode,user,group) it is packaged with
	source             bool                  // build the .src.rpm instead
	obsoletes          string                // spec syntax
	conflicts          string
	post               string // a %post scriptlet
}

// klpFixture is a package in our layout at the given level.
func klpFixture(name, module string, level int) rpmFixture {
	return rpmFixture{
		name: name, version: fmt.Sprint(level),
		provides: fmt.Sprintf("klp-livepatch(%s) = %d, klp-module(%s) = %d", krel, level, module, level),
		modules:  map[string]moduleInfo{klpDir + krel + "/" + module + ".ko": livepatchInfo(module, krel)},
	}
}

// klpAttr is klpFixture("name", "m", 1) owning its kernel directory, the
// directory packaged with dirAttr and the module with modAttr.
func klpAttr(name, dirAttr, modAttr string) rpmFixture {
	return klpFixture(name, "m", 1).with(func(f *rpmFixture) {
		f.dirs = []string{klpDir + krel}
		f.attrs = map[string]string{klpDir + krel: dirAttr, klpDir + krel + "/m.ko": modAttr}
	})
}

// with returns f changed by edit, so table entries read as a base plus a twist.
func (f rpmFixture) with(edit func(*rpmFixture)) rpmFixture {
	edit(&f)
	return f
}

var longKrel = strings.Repeat("6", 65)

var fixtures = map[string]rpmFixture{
	// Accepted.
	"klp": klpFixture("klp-cmdline", "klp_cmdline_1", 1).with(func(f *rpmFixture) {
		f.dirs = []string{klpDir + krel} // its own directory is fine
	}),
	"klp-dashes": {name: "klp-dash", version: "2", provides: "klp-livepatch(" + krel + ") = 2",
		modules: map[string]moduleInfo{klpDir + krel + "/klp-dash-2.ko": livepatchInfo("klp_dash_2", krel)}},
	// Red Hat's kpatch-patch: Version 1, the release counting updates, a
	// %post that runs kpatch, and a conflict with its own older versions.
	"kpatch": {name: "kpatch-patch-5_14_0-284_11_1", version: "3", requires: "kernel-uname-r = " + rhel,
		conflicts: "kpatch-patch-5_14_0-284_11_1 < 3-1", post: "kpatch install -k " + rhel + " /usr/lib/kpatch/" + rhel + "/kpatch-5_14_0-284_11_1-3-1.ko",
		modules: map[string]moduleInfo{kpDir + rhel + "/kpatch-5_14_0-284_11_1-3-1.ko": livepatchInfo("kpatch_5_14_0_284_11_1_3_1", rhel)}},
	"kpatch-no-requires": {name: "kpatch-patch-bare", version: "2", modules: map[string]moduleInfo{kpDir + rhel + "/kpatch-bare.ko": livepatchInfo("kpatch_bare", rhel)}},
	// Meta's klp.spec: Name klp-<krel>, Version hotfixN, the file named
	// for the kernel while the module inside is named for the hotfix.
	"meta": {name: "klp-" + krel, version: "hotfix3", requires: "kpatch", post: "kpatch load --all",
		modules: map[string]moduleInfo{"/var/lib/kpatch/" + krel + "/klp_" + krel + ".ko": livepatchInfo("klp_6_1_0_28_amd64_hotfix3", krel)}},
	// SUSE's kernel-livepatch: /lib/modules/<krel>/livepatch/livepatch-<v>-<r>.ko.
	"suse": {name: "kernel-livepatch-6_1_0-28-default", version: "13",
		modules: map[string]moduleInfo{"/lib/modules/" + krel + "/livepatch/livepatch-13-150400_2_2.ko": livepatchInfo("livepatch_13_150400_2_2", krel)}},
	"kpatch-version-decimal": {name: "kpatch-patch-vd", version: "1.2", modules: map[string]moduleInfo{kpDir + rhel + "/kpatch-vd.ko": livepatchInfo("kpatch_vd", rhel)}},
	"xz":                     klpFixture("klp-xz", "klp_xz_1", 1).with(func(f *rpmFixture) { f.payload = "w2.xzdio" }),
	"zstd":                   klpFixture("klp-zstd", "klp_zstd_1", 1).with(func(f *rpmFixture) { f.payload = "w3.zstdio" }),
	// Owning their directory puts its entry before the module in the payload.
	"gzip-dir": klpFixture("klp-gzdir", "klp_gzdir_1", 1).with(func(f *rpmFixture) { f.dirs = []string{klpDir, klpDir + krel} }),
	"xz-dir": klpFixture("klp-xzdir", "klp_xzdir_1", 1).with(func(f *rpmFixture) {
		f.payload, f.dirs = "w6.xzdio", []string{klpDir, klpDir + krel}
	}),
	"zstd-dir": klpFixture("klp-zstddir", "klp_zstddir_1", 1).with(func(f *rpmFixture) {
		f.payload, f.dirs = "w19.zstdio", []string{klpDir, klpDir + krel}
	}),
	"lzma": klpFixture("klp-lzma", "klp_lzma_1", 1).with(func(f *rpmFixture) { f.payload = "w2.lzdio" }),
	"notlp": klpFixture("klp-notlp", "klp_notlp", 1).with(func(f *rpmFixture) {
		f.modules = map[string]moduleInfo{klpDir + krel + "/klp_notlp.ko": {vermagic: krel + lpMagic, name: "klp_notlp"}}
	}),

	// Rejected.
	"source": klpFixture("klp-src", "klp_src_1", 1).with(func(f *rpmFixture) { f.source = true }),
	"no-module": klpFixture("klp-none", "m", 1).with(func(f *rpmFixture) {
		f.modules, f.files = nil, map[string]string{"/usr/share/klp-fixture/README": "x"}
	}),
	"two-modules": klpFixture("klp-two", "m", 1).with(func(f *rpmFixture) {
		f.files = map[string]string{klpDir + krel + "/m2.ko": "x"}
	}),
	"module-elsewhere-too": klpFixture("klp-also", "m", 1).with(func(f *rpmFixture) {
		f.files = map[string]string{"/lib/modules/" + krel + "/extra/other.ko": "x"}
	}),
	"outside-layouts": klpFixture("klp-out", "m", 1).with(func(f *rpmFixture) {
		f.modules, f.files = nil, map[string]string{"/lib/modules/" + krel + "/extra/m.ko": "x"}
	}),
	"nested": klpFixture("klp-nested", "m", 1).with(func(f *rpmFixture) {
		f.modules, f.files = nil, map[string]string{klpDir + krel + "/sub/m.ko": "x"}
	}),
	"no-kernel-dir": {name: "kpatch-patch-flat", version: "1", files: map[string]string{kpDir + "kpatch-flat.ko": "x"}},
	"symlink": klpFixture("klp-link", "m", 1).with(func(f *rpmFixture) {
		f.modules, f.links = nil, map[string]string{klpDir + krel + "/m.ko": "/lib/modules/" + krel + "/kernel/fs/ext4/ext4.ko"}
	}),
	"provide-other-kernel": klpFixture("klp-pk", "m", 1).with(func(f *rpmFixture) {
		f.provides = "klp-livepatch(6.1.0-29-amd64) = 1"
	}),
	"requires-other-kernel": {name: "kpatch-patch-rk", version: "1", requires: "kernel-uname-r = 5.14.0-285.el9.x86_64",
		files: map[string]string{kpDir + "5.14.0-284.el9.x86_64/kpatch-rk.ko": "x"}},
	"requires-other-kernel-klp": {name: "klp-rk", version: "1", provides: "klp-livepatch(5.14.0-284.el9.x86_64) = 1",
		requires: "kernel-uname-r = 5.14.0-285.el9.x86_64", files: map[string]string{klpDir + "5.14.0-284.el9.x86_64/m.ko": "x"}},
	"requires-any-kernel": {name: "kpatch-patch-ru", version: "1", requires: "kernel-uname-r",
		files: map[string]string{kpDir + rhel + "/kpatch-ru.ko": "x"}},
	"module-name-dot": klpFixture("klp-dot", "m", 1).with(func(f *rpmFixture) {
		f.modules = map[string]moduleInfo{klpDir + krel + "/m.ko": livepatchInfo("bad.name", krel)}
	}),
	"module-name-long": klpFixture("klp-long", "m", 1).with(func(f *rpmFixture) {
		f.modules = map[string]moduleInfo{klpDir + krel + "/m.ko": livepatchInfo(strings.Repeat("m", 56), krel)}
	}),
	"module-file-name": klpFixture("klp-file", "m", 1).with(func(f *rpmFixture) {
		f.modules, f.files = nil, map[string]string{klpDir + krel + "/.hidden.ko": "x"}
	}),
	"kernel-release-char": {name: "klp-kc", version: "1", provides: "klp-livepatch(6.1.0=28) = 1",
		files: map[string]string{klpDir + "6.1.0=28/m.ko": "x"}},
	"kernel-release-long": {name: "klp-kl", version: "1", provides: "klp-livepatch(" + longKrel + ") = 1",
		files: map[string]string{klpDir + longKrel + "/m.ko": "x"}},
	"no-level-provide": klpFixture("klp-np", "m", 1).with(func(f *rpmFixture) { f.provides = "" }),
	"level-zero":       klpFixture("klp-l0", "m", 0),
	"level-decimal": klpFixture("klp-ld", "m", 1).with(func(f *rpmFixture) {
		f.version, f.provides = "1.5", "klp-livepatch("+krel+") = 1.5"
	}),
	"level-epoch": klpFixture("klp-le", "m", 1).with(func(f *rpmFixture) {
		f.provides = "klp-livepatch(" + krel + ") = 1:1"
	}),
	"level-range": klpFixture("klp-lr", "m", 1).with(func(f *rpmFixture) {
		f.provides = "klp-livepatch(" + krel + ") >= 1"
	}),
	"level-mismatch": klpFixture("klp-lm", "m", 1).with(func(f *rpmFixture) {
		f.provides = "klp-livepatch(" + krel + ") = 2"
	}),
	"extra-file": klpFixture("klp-extra", "m", 1).with(func(f *rpmFixture) {
		f.files = map[string]string{"/usr/share/klp-fixture/README": "not a module\n"}
	}),
	"extra-dir": klpFixture("klp-extradir", "m", 1).with(func(f *rpmFixture) {
		f.dirs = []string{"/etc/cron.d"}
	}),
	"obsoletes": klpFixture("klp-obs", "m", 1).with(func(f *rpmFixture) { f.obsoletes = "openssh-server" }),
	"conflicts": klpFixture("klp-con", "m", 1).with(func(f *rpmFixture) { f.conflicts = "kpatch" }),
	// Modes and owners rpm would install as they are: anyone but root
	// able to write the module or a directory above it could change what
	// the kernel loads.
	"setuid-module":         klpAttr("klp-suid", "", "%attr(4644,root,root)"),
	"setgid-module":         klpAttr("klp-sgid", "", "%attr(2644,root,root)"),
	"world-writable-module": klpAttr("klp-ww", "", "%attr(0666,root,root)"),
	"group-writable-module": klpAttr("klp-gw", "", "%attr(0664,root,root)"),
	"user-owned-module":     klpAttr("klp-uo", "", "%attr(0644,nobody,root)"),
	"group-owned-module":    klpAttr("klp-go", "", "%attr(0644,root,nogroup)"),
	"world-writable-dir":    klpAttr("klp-wwd", "%attr(0777,root,root)", ""),
	"setgid-dir":            klpAttr("klp-sgd", "%attr(2755,root,root)", ""),
	"user-owned-dir":        klpAttr("klp-uod", "%attr(0755,nobody,nogroup)", ""),
	"no-modinfo-name": klpFixture("klp-nn", "m", 1).with(func(f *rpmFixture) {
		f.modules = map[string]moduleInfo{klpDir + krel + "/m.ko": {livepatch: "Y", vermagic: krel + lpMagic}}
	}),
}

var (
	builtMu sync.Mutex
	built   = map[string]*onceResult{}
)

// fixtureRPMs builds the named fixtures, each once per test binary and all
// at once, and returns their paths by name. A missing rpmbuild or gcc
// fails the test: these tests are the only check that real rpm output
// parses.
func fixtureRPMs(t testing.TB, names ...string) map[string]string {
	t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	results := make([]*onceResult, len(names))
	for i, n := range names {
		fx, ok := fixtures[n]
		if !ok {
			t.Fatalf("no fixture %q", n)
		}
		builtMu.Lock()
		r := built[n]
		if r == nil {
			r = &onceResult{}
			built[n] = r
		}
		builtMu.Unlock()
		results[i] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r.once.Do(func() { r.path, r.err = buildRPM(n, fx) })
		}()
	}
	wg.Wait()
	paths := map[string]string{}
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("fixture %s: %v", names[i], r.err)
		}
		paths[names[i]] = r.path
	}
	return paths
}

func buildRPM(name string, fx rpmFixture) (string, error) {
	if _, err := exec.LookPath("rpmbuild"); err != nil {
		return "", fmt.Errorf("rpmbuild not found: install the Debian package rpm (apt-get install rpm): %w", err)
	}
	spec, err := filepath.Abs("testdata/rpminfo/livepatch.spec")
	if err != nil {
		return "", err
	}
	top, err := os.MkdirTemp(fixtureDir, name+"-")
	if err != nil {
		return "", err
	}
	tree := filepath.Join(top, "tree")
	contents := map[string][]byte{}
	for p, c := range fx.files {
		contents[p] = []byte(c)
	}
	for p, mi := range fx.modules {
		if contents[p], err = fakeModule(mi); err != nil {
			return "", err
		}
	}
	var list []string
	for p, c := range contents {
		if err := os.MkdirAll(filepath.Dir(tree+p), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(tree+p, c, 0o644); err != nil {
			return "", err
		}
		list = append(list, fx.attrs[p]+" "+p)
	}
	for _, d := range fx.dirs {
		if err := os.MkdirAll(tree+d, 0o755); err != nil {
			return "", err
		}
		list = append(list, "%dir "+fx.attrs[d]+" "+d)
	}
	for p, target := range fx.links {
		if err := os.MkdirAll(filepath.Dir(tree+p), 0o755); err != nil {
			return "", err
		}
		if err := os.Symlink(target, tree+p); err != nil {
			return "", err
		}
		list = append(list, p)
	}
	sort.Strings(list)
	fileList := filepath.Join(top, "files.list")
	if err := os.WriteFile(fileList, []byte(strings.Join(list, "\n")+"\n"), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(top, "out")
	mode := "-bb"
	if fx.source {
		mode = "-bs"
	}
	args := []string{mode, "--quiet",
		"--define", "_topdir " + top,
		"--define", "_rpmdir " + out,
		"--define", "_srcrpmdir " + out,
		"--define", "_build_name_fmt %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm",
		"--define", "pkg_name " + fx.name,
		"--define", "pkg_version " + fx.version,
		"--define", "pkg_tree " + tree,
		"--define", "pkg_filelist " + fileList,
	}
	for _, d := range []struct{ macro, v string }{{"pkg_provides", fx.provides}, {"pkg_requires", fx.requires}, {"pkg_payload", fx.payload},
		{"pkg_obsoletes", fx.obsoletes}, {"pkg_conflicts", fx.conflicts}, {"pkg_post", fx.post}} {
		if d.v != "" {
			args = append(args, "--define", d.macro+" "+d.v)
		}
	}
	if msg, err := exec.Command("rpmbuild", append(args, spec)...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("rpmbuild %q: %w\n%s", args, err, msg)
	}
	rpms, _ := filepath.Glob(filepath.Join(out, "*.rpm"))
	if len(rpms) != 1 {
		return "", fmt.Errorf("rpmbuild made %v, want one .rpm", rpms)
	}
	return rpms[0], nil
}

func sha256File(t *testing.T, file string) (string, int64) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), int64(len(b))
}

func TestInspectRPMLayouts(t *testing.T) {
	f := fixtureRPMs(t, "klp", "klp-dashes", "kpatch", "kpatch-no-requires", "xz", "zstd", "lzma", "meta", "suse", "kpatch-version-decimal")
	tests := []struct {
		fixture                      string
		name, version                string
		layout                       klp.Layout
		level                        int
		kernel, modulePath, module   string
		compression                  string
		wantProvide, wantRequirement string
	}{
		{"klp", "klp-cmdline", "1", klp.LayoutKLP, 1, krel, klpDir + krel + "/klp_cmdline_1.ko", "klp_cmdline_1", "gzip",
			"klp-livepatch(" + krel + ") = 1", ""},
		{"klp-dashes", "klp-dash", "2", klp.LayoutKLP, 2, krel, klpDir + krel + "/klp-dash-2.ko", "klp_dash_2", "gzip",
			"klp-livepatch(" + krel + ") = 2", ""},
		// Layouts whose level the manifest gives (level 0 here).
		{"kpatch", "kpatch-patch-5_14_0-284_11_1", "3", klp.LayoutKpatch, 0, rhel, kpDir + rhel + "/kpatch-5_14_0-284_11_1-3-1.ko",
			"kpatch_5_14_0_284_11_1_3_1", "gzip", "", "kernel-uname-r = " + rhel},
		{"kpatch-no-requires", "kpatch-patch-bare", "2", klp.LayoutKpatch, 0, rhel, kpDir + rhel + "/kpatch-bare.ko", "kpatch_bare", "gzip", "", ""},
		{"kpatch-version-decimal", "kpatch-patch-vd", "1.2", klp.LayoutKpatch, 0, rhel, kpDir + rhel + "/kpatch-vd.ko", "kpatch_vd", "gzip", "", ""},
		// The module's own name, not the file's.
		{"meta", "klp-" + krel, "hotfix3", klp.LayoutKpatchInstalled, 0, krel, "/var/lib/kpatch/" + krel + "/klp_" + krel + ".ko",
			"klp_6_1_0_28_amd64_hotfix3", "gzip", "", "kpatch"},
		{"suse", "kernel-livepatch-6_1_0-28-default", "13", klp.LayoutSUSE, 0, krel, "/lib/modules/" + krel + "/livepatch/livepatch-13-150400_2_2.ko",
			"livepatch_13_150400_2_2", "gzip", "", ""},
		{"xz", "klp-xz", "1", klp.LayoutKLP, 1, krel, klpDir + krel + "/klp_xz_1.ko", "klp_xz_1", "xz", "", ""},
		{"zstd", "klp-zstd", "1", klp.LayoutKLP, 1, krel, klpDir + krel + "/klp_zstd_1.ko", "klp_zstd_1", "zstd", "", ""},
		{"lzma", "klp-lzma", "1", klp.LayoutKLP, 1, krel, klpDir + krel + "/klp_lzma_1.ko", "klp_lzma_1", "lzma", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			info, err := klp.InspectRPM(f[tt.fixture])
			if err != nil {
				t.Fatal(err)
			}
			sum, size := sha256File(t, f[tt.fixture])
			got := fmt.Sprintf("%s %s-1.%s layout=%s level=%d kernel=%s path=%s module=%s payload=%s size=%d sha256=%s",
				info.Name, info.Version, info.Arch, info.Layout, info.Level, info.KernelRelease, info.ModulePath,
				info.ModuleName, info.PayloadCompression, info.Size, info.SHA256)
			want := fmt.Sprintf("%s %s-1.noarch layout=%s level=%d kernel=%s path=%s module=%s payload=%s size=%d sha256=%s",
				tt.name, tt.version, tt.layout, tt.level, tt.kernel, tt.modulePath, tt.module, tt.compression, size, sum)
			if got != want || info.Release != "1" {
				t.Errorf("got  %s (release %q)\nwant %s", got, info.Release, want)
			}
			if tt.wantProvide != "" && !slices.Contains(info.Provides, tt.wantProvide) {
				t.Errorf("provides %q, want %q among them", info.Provides, tt.wantProvide)
			}
			if tt.wantRequirement != "" && !slices.Contains(info.Requires, tt.wantRequirement) {
				t.Errorf("requires %q, want %q among them", info.Requires, tt.wantRequirement)
			}
			// The reader form sees the same bytes the same way.
			b, _ := os.ReadFile(f[tt.fixture])
			if r, err := klp.InspectRPMReader(bytes.NewReader(b)); err != nil || fmt.Sprint(*r) != fmt.Sprint(*info) {
				t.Errorf("InspectRPMReader = %+v, %v\nInspectRPM      = %+v", r, err, info)
			}
		})
	}
}

func TestInspectRPMRejects(t *testing.T) {
	tests := []struct {
		fixture string
		want    error
	}{
		{"source", klp.ErrNotRPM},
		{"no-module", klp.ErrModuleCount},
		{"two-modules", klp.ErrModuleCount},
		{"module-elsewhere-too", klp.ErrModuleCount},
		{"outside-layouts", klp.ErrLayout},
		{"nested", klp.ErrLayout},
		{"no-kernel-dir", klp.ErrLayout},
		{"symlink", klp.ErrLayout},
		{"provide-other-kernel", klp.ErrKernelMismatch},
		{"requires-other-kernel", klp.ErrKernelMismatch},
		{"requires-other-kernel-klp", klp.ErrKernelMismatch},
		{"requires-any-kernel", klp.ErrKernelMismatch},
		{"module-name-dot", klp.ErrInvalidName},
		{"module-name-long", klp.ErrInvalidName},
		{"module-file-name", klp.ErrInvalidName},
		{"kernel-release-char", klp.ErrInvalidName},
		{"kernel-release-long", klp.ErrInvalidName},
		{"no-level-provide", klp.ErrNoLevel},
		{"level-zero", klp.ErrNoLevel},
		{"level-decimal", klp.ErrNoLevel},
		{"level-epoch", klp.ErrNoLevel},
		{"level-range", klp.ErrNoLevel},
		{"level-mismatch", klp.ErrLevelMismatch},
		{"extra-file", klp.ErrPayload},
		{"extra-dir", klp.ErrPayload},
		{"obsoletes", klp.ErrDependency},
		{"conflicts", klp.ErrDependency},
		{"no-modinfo-name", klp.ErrInvalidName},
		{"setuid-module", klp.ErrFileMode},
		{"setgid-module", klp.ErrFileMode},
		{"world-writable-module", klp.ErrFileMode},
		{"group-writable-module", klp.ErrFileMode},
		{"user-owned-module", klp.ErrFileMode},
		{"group-owned-module", klp.ErrFileMode},
		{"world-writable-dir", klp.ErrFileMode},
		{"setgid-dir", klp.ErrFileMode},
		{"user-owned-dir", klp.ErrFileMode},
	}
	var names []string
	for _, tt := range tests {
		names = append(names, tt.fixture)
	}
	f := fixtureRPMs(t, names...)
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			info, err := klp.InspectRPM(f[tt.fixture])
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "inspect "+f[tt.fixture]+": ") {
				t.Errorf("error lacks the file: %v", err)
			}
			if info != nil && info.Level != 0 {
				t.Errorf("rejected package still has level %d", info.Level)
			}
		})
	}
}

func TestInspectRPMNotRPM(t *testing.T) {
	good, err := os.ReadFile(fixtureRPMs(t, "klp")["klp"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := klp.InspectRPMReader(bytes.NewReader(good)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		input []byte
	}{
		{"empty", nil},
		{"garbage", bytes.Repeat([]byte("definitely not an rpm "), 20)},
		{"deb", append([]byte("!<arch>\ndebian-binary   "), make([]byte, 200)...)},
		{"lead only", good[:96]},
		{"truncated lead", good[:50]},
		{"truncated signature header", good[:96+40]},
		{"truncated header", good[:len(good)/2]},
		{"rpm v2 lead", append(append([]byte{}, good[:4]...), append([]byte{2}, good[5:]...)...)},
		{"bad header magic", append(append([]byte{}, good[:96]...), append([]byte{0x8e, 0xad, 0xe8, 0x02}, good[100:]...)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := klp.InspectRPMReader(bytes.NewReader(tt.input)); !errors.Is(err, klp.ErrNotRPM) {
				t.Fatalf("err = %v, want ErrNotRPM", err)
			}
		})
	}
	if _, err := klp.InspectRPM(filepath.Join(t.TempDir(), "missing.rpm")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// Layouts other than klp-agent's carry no level (Red Hat's Version is 1
// for every update, Meta's is hotfixN): inspection gives everything else
// and no error, and the publisher names the level.
func TestInspectRPMLevelFromTheManifest(t *testing.T) {
	f := fixtureRPMs(t, "kpatch-version-decimal")["kpatch-version-decimal"]
	info, err := klp.InspectRPM(f)
	if err != nil {
		t.Fatalf("err = %v", err)
	}
	sum, size := sha256File(t, f)
	if info == nil || info.KernelRelease != rhel || info.ModuleName != "kpatch_vd" || info.Layout != klp.LayoutKpatch ||
		info.ModulePath != kpDir+rhel+"/kpatch-vd.ko" || info.Level != 0 || info.SHA256 != sum || info.Size != size {
		t.Fatalf("info = %+v", info)
	}
}

// Scriptlets are reported (the agent does not run them by default).
func TestInspectRPMScriptlets(t *testing.T) {
	f := fixtureRPMs(t, "kpatch", "klp")
	for name, want := range map[string][]string{"kpatch": {"%post"}, "klp": nil} {
		info, err := klp.InspectRPM(f[name])
		if err != nil || !slices.Equal(info.Scriptlets, want) {
			t.Errorf("%s: scriptlets %q, %v; want %q", name, info.Scriptlets, err, want)
		}
	}
}

func TestExtractModule(t *testing.T) {
	f := fixtureRPMs(t, "klp", "kpatch", "xz", "zstd", "meta")
	tests := []struct {
		fixture string
		module  moduleInfo
		want    error
	}{
		{"klp", livepatchInfo("klp_cmdline_1", krel), nil},
		{"kpatch", livepatchInfo("kpatch_5_14_0_284_11_1_3_1", rhel), nil},
		{"xz", livepatchInfo("klp_xz_1", krel), nil},
		{"zstd", livepatchInfo("klp_zstd_1", krel), nil},
		{"meta", livepatchInfo("klp_6_1_0_28_amd64_hotfix3", krel), nil},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			var out bytes.Buffer
			err := klp.ExtractModule(f[tt.fixture], &out)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.want != nil {
				return
			}
			want, err := fakeModule(tt.module)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("extracted %d bytes, packaged module has %d", out.Len(), len(want))
			}
		})
	}
	if err := klp.ExtractModule(fixtureRPMs(t, "no-module")["no-module"], &bytes.Buffer{}); !errors.Is(err, klp.ErrModuleCount) {
		t.Errorf("extract from a package without a module: %v", err)
	}
}

// The module is found and hashed wherever it sits in the payload: after
// the directory entries of its package, for each compressor.
func TestInspectRPMModuleNotFirst(t *testing.T) {
	f := fixtureRPMs(t, "gzip-dir", "xz-dir", "zstd-dir")
	for _, tt := range []struct{ fixture, module string }{{"gzip-dir", "klp_gzdir_1"}, {"xz-dir", "klp_xzdir_1"}, {"zstd-dir", "klp_zstddir_1"}} {
		t.Run(tt.fixture, func(t *testing.T) {
			payload, err := exec.Command("rpm2cpio", f[tt.fixture]).Output()
			if err != nil {
				t.Fatalf("rpm2cpio: %v", err)
			}
			list := exec.Command("cpio", "-t", "--quiet")
			list.Stdin = bytes.NewReader(payload)
			out, err := list.Output()
			if err != nil {
				t.Fatalf("cpio -t: %v", err)
			}
			if entries := strings.Fields(string(out)); len(entries) != 3 || !strings.HasSuffix(entries[2], ".ko") {
				t.Fatalf("payload %q: want two directories, then the module", entries)
			}
			info, err := klp.InspectRPM(f[tt.fixture])
			if err != nil {
				t.Fatal(err)
			}
			ko := goodKO(t, tt.module, krel)
			sum := sha256.Sum256(ko)
			if info.ModuleName != tt.module || info.ModuleSHA256 != hex.EncodeToString(sum[:]) {
				t.Fatalf("module %q sha256 %s, want %q %x", info.ModuleName, info.ModuleSHA256, tt.module, sum)
			}
		})
	}
}

func TestModInfoAndCheckModule(t *testing.T) {
	tests := []struct {
		name   string
		module moduleInfo
		want   error
	}{
		{"livepatch", livepatchInfo("klp_cmdline_1", krel), nil},
		{"no name key", moduleInfo{livepatch: "Y", vermagic: krel + lpMagic}, klp.ErrInvalidName},
		{"not a livepatch", moduleInfo{vermagic: krel + lpMagic, name: "klp_cmdline_1"}, klp.ErrNotLivepatch},
		{"livepatch=N", moduleInfo{livepatch: "N", vermagic: krel + lpMagic, name: "klp_cmdline_1"}, klp.ErrNotLivepatch},
		{"other kernel", livepatchInfo("klp_cmdline_1", "6.1.0-29-amd64"), klp.ErrVermagic},
		{"kernel prefix only", livepatchInfo("klp_cmdline_1", krel+"x"), klp.ErrVermagic},
		{"no vermagic", moduleInfo{livepatch: "Y", name: "klp_cmdline_1"}, klp.ErrVermagic},
		{"other name", livepatchInfo("klp_evil", krel), klp.ErrInvalidName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ko, err := fakeModule(tt.module)
			if err != nil {
				t.Fatal(err)
			}
			mi, err := klp.ModInfo(ko)
			if err != nil {
				t.Fatal(err)
			}
			if got := mi["license"]; len(got) != 1 || got[0] != "GPL" {
				t.Errorf("license = %q", got)
			}
			if err := klp.CheckModule(mi, krel, "klp_cmdline_1"); !errors.Is(err, tt.want) {
				t.Fatalf("CheckModule: %v, want %v", err, tt.want)
			}
		})
	}
	noSection, err := fakeModule(moduleInfo{none: true})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"not ELF": []byte("not elf"), "no .modinfo": noSection} {
		if _, err := klp.ModInfo(b); err == nil {
			t.Errorf("%s: ModInfo accepted it", name)
		}
	}
}

func TestVerifyFile(t *testing.T) {
	f := fixtureRPMs(t, "klp", "notlp", "xz")
	sum, size := sha256File(t, f["klp"])
	nsum, nsize := sha256File(t, f["notlp"])
	xsum, xsize := sha256File(t, f["xz"])
	good := klp.Want{KernelRelease: krel, Name: "klp_cmdline_1", Level: 1, SHA256: sum, Size: size}
	if _, err := klp.VerifyFile(f["klp"], good); err != nil {
		t.Fatal(err)
	}
	// An xz payload is read before install too.
	if _, err := klp.VerifyFile(f["xz"], klp.Want{KernelRelease: krel, Name: "klp_xz_1", Level: 1, SHA256: xsum, Size: xsize}); err != nil {
		t.Fatal(err)
	}
	if _, err := klp.VerifyFile(f["xz"], klp.Want{KernelRelease: krel, Name: "klp_other", Level: 1, SHA256: xsum, Size: xsize}); !errors.Is(err, klp.ErrInvalidName) {
		t.Fatalf("a manifest naming another module: %v", err)
	}
	tests := []struct {
		name string
		file string
		want klp.Want
		err  error
	}{
		{"digest", f["klp"], klp.Want{KernelRelease: krel, Name: "klp_cmdline_1", Level: 1, SHA256: strings.Repeat("0", 64), Size: size}, klp.ErrDigest},
		{"size", f["klp"], klp.Want{KernelRelease: krel, Name: "klp_cmdline_1", Level: 1, SHA256: sum, Size: size + 1}, klp.ErrDigest},
		{"running another kernel", f["klp"], klp.Want{KernelRelease: "6.1.0-29-amd64", Name: "klp_cmdline_1", Level: 1, SHA256: sum, Size: size}, klp.ErrKernelMismatch},
		{"not a livepatch", f["notlp"], klp.Want{KernelRelease: krel, Name: "klp_notlp", Level: 1, SHA256: nsum, Size: nsize}, klp.ErrNotLivepatch},
	}
	for _, tt := range tests {
		if _, err := klp.VerifyFile(tt.file, tt.want); !errors.Is(err, tt.err) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.err)
		}
	}
}
