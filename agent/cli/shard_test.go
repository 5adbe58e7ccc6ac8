package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klp-agent/klp-agent/manifest"
)

// TestManifestShard: `manifest shard` writes one signed shard per kernel
// release (plus the empty ones asked for, and keeps writing those already
// published), each verifying as that kernel's shard, its relative RPM
// URLs still reaching the RPMs, and selecting as the full manifest does.
func TestManifestShard(t *testing.T) {
	dir, src, env := publisherFixture(t)
	out := filepath.Join(dir, "shards")
	key := filepath.Join(dir, "a.key")
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"out-dir required", []string{"--in", src, "--key", key}, 2, "--out-dir"},
		{"bad kernel", []string{"--in", src, "--key", key, "--out-dir", out, "--kernel", "../x"}, 2, `--kernel "../x"`},
		{"from the source", []string{"--in", src, "--key", key, "--out-dir", out, "--kernel", "6.1.0-99-amd64"}, 0,
			"wrote 2 shards of manifest version 2 to " + out + " (1 with no patch)"},
		// The empty shard already published is written again, not left stale.
		{"from the envelope", []string{"--in", env, "--key", key, "--out-dir", out}, 0, "wrote 2 shards of manifest version 2"},
	} {
		got, code := runCode(t, t0, append([]string{"manifest", "shard"}, c.args...)...)
		if code != c.code || !strings.Contains(got, c.want) {
			t.Fatalf("%s: exit %d\n%s\nwant exit %d with %q", c.name, code, got, c.code, c.want)
		}
	}
	kr, err := manifest.LoadKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	trust := manifest.Trust{Keys: kr, Threshold: 1}
	for _, c := range []struct {
		kernel  string
		patches int
		wanted  string
	}{
		{testKernel, 2, "klp_cmdline_2@2"},
		{"6.1.0-99-amd64", 0, ""},
	} {
		path := filepath.Join(out, c.kernel+".json")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		v, err := trust.VerifyShard(b, t0, nil, c.kernel)
		if err != nil || len(v.Patches) != c.patches {
			t.Fatalf("shard %s: %v", c.kernel, err)
		}
		if problems := manifest.CheckFiles(v.Manifest, path); len(problems) > 0 {
			t.Errorf("shard %s: RPM URLs from the shard's directory: %v", c.kernel, problems)
		}
		d := manifest.Select(v.Manifest, manifest.Host{ID: "h", Kernel: c.kernel}, t0, nil)
		if got := ""; d.Wanted != nil {
			got = d.Wanted.ID()
			if got != c.wanted {
				t.Errorf("shard %s selects %s, want %s", c.kernel, got, c.wanted)
			}
		} else if c.wanted != "" {
			t.Errorf("shard %s selects nothing, want %s", c.kernel, c.wanted)
		}
		if _, err := trust.VerifyShard(b, t0, nil, "6.1.0-1-amd64"); !errors.Is(err, manifest.ErrShardKernel) {
			t.Errorf("shard %s for another kernel: %v", c.kernel, err)
		}
	}
	// explain on a host with manifest.shard_url decides from its shard,
	// the RPM URL resolved against the shard's URL to the RPM itself.
	_, hkeys, cfg := hostConfig(t, "manifest:\n  url: "+dir+"\n  shard_url: "+out+"/{kernel}.json\n")
	pubKey, _ := os.ReadFile(filepath.Join(dir, "a.pub"))
	os.WriteFile(filepath.Join(hkeys, "a.pub"), pubKey, 0o644)
	got := run(t, t0, "explain", "--config", cfg)
	for _, want := range []string{"manifest: file://" + out + "/" + testKernel + ".json version 2", "wanted:   klp_cmdline_2 level 2",
		"file://" + dir + "/klp-cmdline-2-1.noarch.rpm"} {
		if !strings.Contains(got, want) {
			t.Errorf("explain with shard_url: no %q in\n%s", want, got)
		}
	}
	// manifest verify checks a shard as its host would.
	pub := filepath.Join(dir, "a.pub")
	shard := filepath.Join(out, testKernel+".json")
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"shard", []string{"--envelope", shard, "--shard", testKernel}, 0, "OK: " + shard + " version 2, 2 patch(es)"},
		{"shard for another kernel", []string{"--envelope", shard, "--shard", "6.1.0-99-amd64"}, 1, "shard is for another kernel release"},
		{"shard as the full manifest", []string{"--envelope", shard}, 1, "not the kind of manifest expected"},
		{"full manifest as a shard", []string{"--envelope", env, "--shard", testKernel}, 1, "is a full manifest, not a shard"},
		{"bad release", []string{"--envelope", shard, "--shard", "../x"}, 2, `--shard "../x"`},
	} {
		got, code := runCode(t, t0, append([]string{"manifest", "verify", "--pub", pub}, c.args...)...)
		if code != c.code || !strings.Contains(got, c.want) {
			t.Errorf("verify %s: exit %d\n%s\nwant exit %d with %q", c.name, code, got, c.code, c.want)
		}
	}
}
