package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/manifest"
)

// TestRevokeRoleCommands: root init/rotate manage the revoke role, and
// `manifest revocations` writes documents hosts accept from it; a revoke
// key is no manifest key.
func TestRevokeRoleCommands(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	k := func(n string) string { return filepath.Join(dir, n) }
	for _, n := range []string{"r1", "m1", "v1", "v2"} {
		run(t, now, "manifest", "keygen", "--out", k(n))
	}
	r1 := k("root.1.json")
	out := run(t, now, "manifest", "root", "init", "--root-key", k("r1.pub"), "--manifest-key", k("m1.pub"), "--revoke-key", k("v1.pub"), "--out", r1)
	if !strings.Contains(out, "revoke role: 1 of ") {
		t.Fatalf("init output:\n%s", out)
	}
	run(t, now, "manifest", "root", "sign", "--envelope", r1, "--key", k("r1.key"))
	rt, err := manifest.LoadRootTrust(readFile(t, r1), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, th, ok := rt.Current().RevokeTrust(); !ok || th != 1 {
		t.Fatalf("root 1 revoke role: %d %v", th, ok)
	}

	// Revoke, then pause: each a new signed version hosts accept.
	rev := k("revocations.json")
	out = run(t, now, "manifest", "revocations", "add", "--file", rev, "--name", "klp_bad", "--level", "3", "--reason", "crash budget", "--key", k("v1.key"))
	if !strings.Contains(out, "revoked klp_bad level 3 in "+rev+": version 1 (1 revoked, 0 paused)") {
		t.Fatalf("add output:\n%s", out)
	}
	run(t, now, "manifest", "revocations", "pause", "--file", rev, "--name", "klp_new", "--level", "4", "--reason", "canary", "--key", k("v1.key"))
	store := &manifest.RevocationsStore{}
	v, err := manifest.RevocationsTrust{Root: rt}.Verify(readFile(t, rev), now, store)
	if err != nil || v.Version != 2 || len(v.Revoked) != 1 || len(v.Paused) != 1 || v.ByRelease {
		t.Fatalf("revocations.json: %+v %v", v, err)
	}

	// Rotate: a second revoke key at threshold 2 (co-signed with sign),
	// then no revoke role at all.
	run(t, now, "manifest", "root", "rotate", "--prev", r1, "--revoke-key", k("v1.pub"), "--revoke-key", k("v2.pub"), "--revoke-threshold", "2")
	r2 := k("root.2.json")
	run(t, now, "manifest", "root", "sign", "--envelope", r2, "--key", k("r1.key"))
	run(t, now, "manifest", "revocations", "add", "--file", rev, "--name", "klp_bad", "--level", "5", "--reason", "x", "--key", k("v1.key"))
	rt2, _, err := rootTrustFromFiles(r1, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (manifest.RevocationsTrust{Root: rt2}).Verify(readFile(t, rev), now, nil); !errors.Is(err, manifest.ErrThreshold) {
		t.Fatalf("one of two revoke signatures: %v", err)
	}
	if err := os.WriteFile(k("one.json"), readFile(t, rev), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(k("release"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k("release/m1.pub"), readFile(t, k("m1.pub")), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, now, "manifest", "revocations", "sign", "--file", rev, "--key", k("v2.key"))
	if _, err := (manifest.RevocationsTrust{Root: rt2}).Verify(readFile(t, rev), now, store); err != nil {
		t.Fatalf("two of two: %v", err)
	}
	out = run(t, now, "manifest", "revocations", "verify", "--file", rev, "--root", r1)
	if !strings.Contains(out, "OK: "+rev+" version 3, 2 revoked, 1 paused, expires 2026-12-07T12:00:00Z, signed by the revoke role: ") {
		t.Fatalf("verify output:\n%s", out)
	}
	if out, code := runCode(t, now, "manifest", "revocations", "verify", "--file", k("one.json"), "--root", r1, "--chain", dir); code != 1 || !strings.Contains(out, "1 valid of 2 required") {
		t.Fatalf("verify below threshold: exit %d\n%s", code, out)
	}
	run(t, now, "manifest", "root", "rotate", "--prev", r2, "--no-revoke-role")
	r3, _ := manifest.RootPayload(readFile(t, k("root.3.json")))
	if r3 == nil || r3.Roles.Revoke != nil {
		t.Fatalf("root 3 still has a revoke role: %+v", r3)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"add without key", []string{"manifest", "revocations", "add", "--file", rev, "--name", "a", "--level", "1", "--reason", "r"}, 2, "--key"},
		{"add twice", []string{"manifest", "revocations", "add", "--file", rev, "--name", "klp_bad", "--level", "3", "--reason", "r", "--key", k("v1.key")}, 1, "already revoked"},
		{"bad name", []string{"manifest", "revocations", "pause", "--file", rev, "--name", "a/b", "--level", "1", "--reason", "r", "--key", k("v1.key")}, 1, "name"},
		{"verify with release keys", []string{"manifest", "revocations", "verify", "--file", rev, "--keys-dir", k("release")}, 1, "not among"},
		{"verify without trust", []string{"manifest", "revocations", "verify", "--file", rev}, 2, "--root or --keys-dir"},
		{"sign a root as revocations", []string{"manifest", "revocations", "sign", "--file", r1, "--key", k("v1.key")}, 1, "payload type"},
		{"threshold without role", []string{"manifest", "root", "init", "--root-key", k("r1.pub"), "--manifest-key", k("m1.pub"), "--revoke-threshold", "1", "--out", k("x.json")}, 2, "--revoke-key"},
		{"revoke key is a manifest key", []string{"manifest", "root", "init", "--root-key", k("r1.pub"), "--manifest-key", k("m1.pub"), "--revoke-key", k("m1.pub"), "--out", k("x.json")}, 1, "a revoke key must sign nothing else"},
		{"no role and keys", []string{"manifest", "root", "rotate", "--prev", r1, "--no-revoke-role", "--revoke-key", k("v1.pub"), "--out", k("x.json")}, 2, "--no-revoke-role"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runCode(t, now, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.msg) {
				t.Fatalf("exit %d, want %d with %q:\n%s", code, tc.code, tc.msg, out)
			}
		})
	}
}
