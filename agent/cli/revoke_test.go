package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klp-agent/klp-agent/manifest"
)

func TestRevoke(t *testing.T) {
	dir, src, env := publisherFixture(t)
	host := manifest.Host{ID: "host-1", Kernel: testKernel}
	load := func() *manifest.Manifest {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		m, err := manifest.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	selected := func() string {
		d := manifest.Select(load(), host, t0, nil)
		if d.Wanted == nil {
			return "none"
		}
		return d.Wanted.ID()
	}
	if got := selected(); got != "klp_cmdline_2@2" {
		t.Fatalf("before: %s", got)
	}
	sums := map[int]string{}
	for _, p := range load().Patches {
		sums[p.Level] = p.SHA256
	}
	// The rows run in order against one manifest: each sees the edits of
	// the ones before.
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"reason required", []string{"--name", "klp_cmdline_2", "--level", "2"}, 2, "--reason"},
		{"level required", []string{"--name", "klp_cmdline_2", "--reason", "x"}, 2, "--level"},
		{"invalid name", []string{"--name", "klp-cmdline", "--level", "2", "--reason", "x"}, 2, "--name"},
		{"invalid kernel", []string{"--name", "klp_cmdline_2", "--level", "2", "--kernel", "../x", "--reason", "x"}, 2, "--kernel"},
		{"malformed sha256", []string{"--name", "klp_cmdline_2", "--level", "2", "--sha256", "abc", "--reason", "x"}, 2, "64 hex digits"},
		{"nothing at that level", []string{"--name", "klp_cmdline_2", "--level", "3", "--reason", "x"}, 1, "no entry"},
		{"another kernel", []string{"--name", "klp_cmdline_2", "--level", "2", "--kernel", "5.14.0-1.el9", "--reason", "x"}, 1, "no entry"},
		{"another RPM's digest", []string{"--name", "klp_cmdline_2", "--level", "2", "--sha256", sums[1], "--reason", "x"}, 1, "no entry"},
		{"revoked (digest pasted in uppercase)", []string{"--name", "klp_cmdline_2", "--level", "2", "--kernel", testKernel,
			"--sha256", strings.ToUpper(sums[2]), "--reason", "oops in cmdline_proc_show"}, 0, "manifest version 3"},
		{"twice", []string{"--name", "klp_cmdline_2", "--level", "2", "--kernel", testKernel, "--sha256", sums[2], "--reason", "again"}, 1, "already revoked"},
		{"absent allowed", []string{"--name", "klp_old", "--level", "1", "--reason", "x", "--allow-absent"}, 0, "matching entries: 0"},
	}
	for _, tt := range tests {
		out, code := runCode(t, t0, append([]string{"manifest", "revoke", "--manifest", src}, tt.args...)...)
		if code != tt.code || !strings.Contains(out, tt.want) {
			t.Fatalf("%s: exit %d\n%s\nwant exit %d with %q", tt.name, code, out, tt.code, tt.want)
		}
	}
	m := load()
	if r := m.Revoked[0]; len(m.Revoked) != 2 || r.SHA256 != sums[2] || r.Kernel != testKernel || r.Reason != "oops in cmdline_proc_show" {
		t.Fatalf("revocations written: %+v", m.Revoked)
	}
	// Hosts fall back to level 1; a host running 2 would roll back.
	if got := selected(); got != "klp_cmdline_1@1" {
		t.Fatalf("after the revoke: %s", got)
	}
	// It signs and verifies like any manifest.
	run(t, t0, "manifest", "sign", "--in", src, "--key", filepath.Join(dir, "a.key"), "--out", env)
	if out := run(t, t0, "manifest", "verify", "--envelope", env, "--pub", filepath.Join(dir, "a.pub")); !strings.Contains(out, "version 4") || !strings.Contains(out, "2 revoked") {
		t.Fatalf("verify: %s", out)
	}
}
