package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
)

// TestAddWritesURLsRelativeToThePublishDir: the URL manifest add writes is
// the RPM's path from the directory the manifest is published from, where
// a host resolves it. It used to be the file name alone: --rpm
// www/rpms/x.rpm with the manifest in www/ wrote url x.rpm, a 404 later.
func TestAddWritesURLsRelativeToThePublishDir(t *testing.T) {
	dir := t.TempDir()
	www := filepath.Join(dir, "www")
	rpms := filepath.Join(www, "rpms")
	if err := os.MkdirAll(rpms, 0o755); err != nil {
		t.Fatal(err)
	}
	rpm := rpmtest.Build(t, rpms, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_1", Level: 1, KernelRelease: testKernel})
	outside := rpmtest.Build(t, dir, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_2", Level: 2, KernelRelease: testKernel})
	base := filepath.Base(rpm)
	for _, tt := range []struct {
		name     string
		manifest string
		args     []string
		code     int
		out      string // in the output
		url      string // in the manifest ("" when refused)
	}{
		{"manifest in the publish dir", filepath.Join(www, "m.yaml"), []string{"--rpm", rpm}, 0, " as rpms/" + base + ";", "url: rpms/" + base},
		{"--publish-dir", filepath.Join(dir, "m.yaml"), []string{"--rpm", rpm, "--publish-dir", www}, 0, " as rpms/" + base + ";", "url: rpms/" + base},
		{"outside the publish dir", filepath.Join(www, "m.yaml"), []string{"--rpm", outside}, 1,
			"RPM is outside the directory the manifest is published from: " + outside + " is not under " + www + ": copy it under there, or give --url", ""},
		{"outside, with an explicit URL", filepath.Join(www, "m.yaml"), []string{"--rpm", outside, "--url", "https://cdn.example/x.rpm"}, 0,
			" as https://cdn.example/x.rpm;", "url: https://cdn.example/x.rpm"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(tt.manifest)
			out, code := runCode(t, t0, append([]string{"manifest", "add", "--manifest", tt.manifest}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.out) {
				t.Fatalf("exit %d, output %q; want exit %d containing %q", code, out, tt.code, tt.out)
			}
			b, err := os.ReadFile(tt.manifest)
			if tt.url == "" {
				if err == nil {
					t.Fatalf("a refused add wrote %s:\n%s", tt.manifest, b)
				}
				return
			}
			if err != nil || !strings.Contains(string(b), tt.url+"\n") {
				t.Fatalf("manifest (%v) does not say %q:\n%s", err, tt.url, b)
			}
		})
	}
}

// TestLintChecksPublishedFiles: lint resolves each URL against where the
// manifest is published and checks the file there against the pinned size
// and sha256; a missing or different file is an error naming the resolved
// path, and lint exits 1. It used to check no file at all.
func TestLintChecksPublishedFiles(t *testing.T) {
	dir := t.TempDir()
	www := filepath.Join(dir, "www")
	if err := os.MkdirAll(filepath.Join(www, "rpms"), 0o755); err != nil {
		t.Fatal(err)
	}
	rpm := rpmtest.Build(t, filepath.Join(www, "rpms"), rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_1", Level: 1, KernelRelease: testKernel})
	other := rpmtest.Build(t, dir, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_2", Level: 2, KernelRelease: testKernel})
	base := filepath.Base(rpm)
	src := filepath.Join(www, "manifest.yaml")
	// The trap: the URL the old add wrote, the file name alone.
	trap := filepath.Join(www, "trap.yaml")
	run(t, t0, "manifest", "add", "--manifest", trap, "--rpm", rpm, "--url", base)
	out, code := runCode(t, t0, "manifest", "lint", trap)
	want := trap + ": error: klp_cmdline_1@1: url " + base + " resolves to " + filepath.Join(www, base) + ": no such file\n"
	if code != 1 || !strings.Contains(out, want) || !strings.Contains(out, trap+": 1 error(s), 0 warning(s)") {
		t.Fatalf("lint of the trap: exit %d, output %q; want exit 1 and %q", code, out, want)
	}

	run(t, t0, "manifest", "add", "--manifest", src, "--rpm", rpm)
	if out := run(t, t0, "manifest", "lint", src); !strings.Contains(out, "valid, 0 warning(s)") {
		t.Fatalf("lint of a good manifest: %q", out)
	}
	// Linted where it is not published: --publish-dir says where it is.
	if out, code := runCode(t, t0, "manifest", "lint", "--publish-dir", dir, src); code != 1 || !strings.Contains(out, "resolves to "+filepath.Join(dir, "rpms", base)+": no such file") {
		t.Fatalf("lint --publish-dir elsewhere: exit %d, %q", code, out)
	}
	// Another RPM copied over the listed one.
	b, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rpm, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = runCode(t, t0, "manifest", "lint", src)
	if code != 1 || !strings.Contains(out, "klp_cmdline_1@1: url rpms/"+base+" resolves to "+rpm+": ") ||
		!(strings.Contains(out, "the manifest pins") || strings.Contains(out, "more than the pinned")) {
		t.Fatalf("lint of a replaced file: exit %d, output %q", code, out)
	}
}

// TestExplainPrintsResolvedURLs: explain shows the URL a host fetches each
// RPM from: resolved against manifest.url, or, with none configured,
// against the --manifest file's own location.
func TestExplainPrintsResolvedURLs(t *testing.T) {
	dir, _, env := publisherFixture(t)
	keys := filepath.Join(dir, "keys")
	if err := os.MkdirAll(keys, 0o755); err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "a.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keys, "a.pub"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, extra, want string }{
		{"no manifest.url", "", "file://" + dir + "/klp-cmdline-2-1.noarch.rpm"},
		{"manifest.url", "manifest:\n  url: https://user:secret@mirror.example/klp/manifest.json\n", "https://user:xxxxx@mirror.example/klp/klp-cmdline-2-1.noarch.rpm"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeHostRoot(t, root, testKernel, "0123456789abcdef0123456789abcdef")
			cfg := filepath.Join(t.TempDir(), "config.yaml")
			y := "trust:\n  keys_dir: " + keys + "\npaths:\n  root: " + root + "\n  state_dir: " + t.TempDir() + "\n" + tt.extra
			if err := os.WriteFile(cfg, []byte(y), 0o644); err != nil {
				t.Fatal(err)
			}
			out := run(t, t0, "explain", "--config", cfg, "--manifest", env)
			if !strings.Contains(out, "wanted:   klp_cmdline_2 level 2 ("+tt.want+")\n") || !strings.Contains(out, "  "+tt.want+"  ") {
				t.Fatalf("explain:\n%s\nwant %s in the wanted line and the table", out, tt.want)
			}
		})
	}
}
