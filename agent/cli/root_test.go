package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/manifest"
)

// TestRootCommands: the publisher's root tools write what hosts verify,
// keep what rotate is not told to change, and refuse misuse.
func TestRootCommands(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	k := func(n string) string { return filepath.Join(dir, n) }
	for _, n := range []string{"r1", "r2", "m1", "m2"} {
		run(t, now, "manifest", "keygen", "--out", k(n))
	}
	r1 := k("root.1.json")
	out := run(t, now, "manifest", "root", "init", "--root-key", k("r1.pub"), "--manifest-key", k("m1.pub"), "--manifest-key", k("m2.pub"),
		"--manifest-threshold", "2", "--expires-in", "30d", "--out", r1)
	if !strings.Contains(out, "root version 1, expires 2026-12-30T12:00:00Z") || !strings.Contains(out, "manifest role: 2 of ") {
		t.Fatalf("init output:\n%s", out)
	}
	// Unsigned, it is no root yet.
	if _, err := manifest.VerifySelfSigned(readFile(t, r1)); err == nil {
		t.Fatal("unsigned root verified")
	}
	run(t, now, "manifest", "root", "sign", "--envelope", r1, "--key", k("r1.key"))
	root1, err := manifest.VerifySelfSigned(readFile(t, r1))
	if err != nil || root1.Roles.Manifest.Threshold != 2 || len(root1.Roles.Manifest.KeyIDs) != 2 {
		t.Fatalf("root 1: %+v %v", root1, err)
	}

	// Rotate only the root key: the manifest role is carried over.
	run(t, now, "manifest", "root", "rotate", "--prev", r1, "--root-key", k("r2.pub"))
	r2 := k("root.2.json")
	run(t, now, "manifest", "root", "sign", "--envelope", r2, "--key", k("r1.key"), "--key", k("r2.key"))
	root2, err := root1.VerifyNext(readFile(t, r2))
	if err != nil || !root2.SameManifestRole(root1) || root2.Roles.Root.KeyIDs[0] == root1.Roles.Root.KeyIDs[0] {
		t.Fatalf("root 2: %+v %v", root2, err)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"init without keys", []string{"manifest", "root", "init", "--out", k("x.json")}, 2, "--root-key"},
		{"threshold above keys", []string{"manifest", "root", "init", "--root-key", k("r1.pub"), "--manifest-key", k("m1.pub"), "--manifest-threshold", "2", "--out", k("x.json")}, 1, "threshold 2 with 1 key"},
		{"rotate over a published version", []string{"manifest", "root", "rotate", "--prev", r1, "--out", r2}, 1, "written once"},
		{"rotate without prev", []string{"manifest", "root", "rotate"}, 2, "--prev"},
		{"sign a manifest as a root", []string{"manifest", "root", "sign", "--envelope", k("m.json"), "--key", k("r1.key")}, 1, "payload type"},
		{"sign twice with one key", []string{"manifest", "root", "sign", "--envelope", r1, "--key", k("r1.key")}, 1, "already signed"},
		{"verify with root and keys dir", []string{"manifest", "verify", "--envelope", k("m.json"), "--root", r1, "--keys-dir", dir}, 2, "one of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(k("m.json"), sign(t, now, k("m1.key")), 0o644); err != nil {
				t.Fatal(err)
			}
			out, code := runCode(t, now, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.msg) {
				t.Fatalf("exit %d, want %d with %q:\n%s", code, tc.code, tc.msg, out)
			}
		})
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sign is a manifest envelope signed with key.
func sign(t *testing.T, now time.Time, key string) []byte {
	t.Helper()
	s, err := manifest.LoadSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := manifest.SignPayload(t.Context(), []byte("schema: 1\nversion: 1\nexpires: "+now.Add(time.Hour).Format(time.RFC3339)+"\n"), s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
