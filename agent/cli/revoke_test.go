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
	selected := func() string {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		m, err := manifest.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		d := manifest.Select(m, host, t0, nil)
		if d.Wanted == nil {
			return "none"
		}
		return d.Wanted.ID()
	}
	if got := selected(); got != "klp_cmdline_2@2" {
		t.Fatalf("before: %s", got)
	}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"reason required", []string{"--name", "klp_cmdline_2", "--level", "2"}, 2, "--reason"},
		{"nothing matches", []string{"--name", "klp_cmdline_2", "--level", "3", "--reason", "x"}, 1, "no entry"},
		{"another kernel", []string{"--name", "klp_cmdline_2", "--level", "2", "--kernel", "5.14.0-1.el9", "--reason", "x"}, 1, "no entry"},
		{"revoked", []string{"--name", "klp_cmdline_2", "--level", "2", "--reason", "oops in cmdline_proc_show"}, 0, "manifest version 3"},
		{"twice", []string{"--name", "klp_cmdline_2", "--level", "2", "--reason", "again"}, 1, "already revoked"},
		{"absent allowed", []string{"--name", "klp_old", "--level", "1", "--reason", "x", "--allow-absent"}, 0, "matching entries: 0"},
	}
	for _, tt := range tests {
		out, code := runCode(t, t0, append([]string{"manifest", "revoke", "--manifest", src}, tt.args...)...)
		if code != tt.code || !strings.Contains(out, tt.want) {
			t.Fatalf("%s: exit %d\n%s\nwant exit %d with %q", tt.name, code, out, tt.code, tt.want)
		}
	}
	// Hosts fall back to level 1; a host running 2 would roll back.
	if got := selected(); got != "klp_cmdline_1@1" {
		t.Fatalf("after the revoke: %s", got)
	}
	// It signs and verifies like any manifest.
	run(t, t0, "manifest", "sign", "--in", src, "--key", filepath.Join(dir, "a.key"), "--out", env)
	if out := run(t, t0, "manifest", "verify", "--envelope", env, "--pub", filepath.Join(dir, "a.pub")); !strings.Contains(out, "version 4") {
		t.Fatalf("verify: %s", out)
	}
}
