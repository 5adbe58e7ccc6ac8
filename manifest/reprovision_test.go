package manifest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestRootReprovisionRecovers replays a compromise of the root keys and the
// recovery docs/security.md prescribes. The attacker, holding the root
// key, rotates the chain to root and manifest keys of their own (versions 2
// and 3) and fast-forwards the manifest version; the host follows, as it
// must. The operator then writes a new trust.root. From then on the
// attacker's chain is no longer trusted: a manifest signed by the real new
// key is accepted (below the attacker's version), the attacker's refused,
// and a restart keeps it so. On the old code the persisted chain (version
// 3) stayed trusted while the new root's version was the same or lower,
// and the attacker's version floor stayed at any version.
func TestRootReprovisionRecovers(t *testing.T) {
	for _, tc := range []struct {
		name       string
		newVersion uint64
		// attackerFiles: the attacker's root.2/3.json are still served
		// (a new root above them skips them; at version 1 the publisher
		// must have replaced them).
		attackerFiles bool
	}{
		{"new root at version 1, attacker's root files gone", 1, false},
		{"new root at the attacker's version", 3, false},
		{"new root above the attacker's chain, its files still served", 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rk, k1 := newTestKey(t), newTestKey(t)   // the publisher's
			ark, akm := newTestKey(t), newTestKey(t) // the attacker's
			nrk, k2 := newTestKey(t), newTestKey(t)  // the publisher's after the recovery
			root1 := signRoot(t, newRoot(1, []testKey{rk}, 1, []testKey{k1}, 1), rk)
			rs, srv := newRootServer(t)
			dir := t.TempDir()
			ctx := context.Background()
			start := func(provisioned []byte) (*Source, *RootTrust, *RootRestart) {
				t.Helper()
				src, rt := rootSource(t, srv, provisioned, dir)
				restart, err := rt.Settle(src.Store)
				if err != nil {
					t.Fatal(err)
				}
				if err := src.LoadCache(); err != nil {
					t.Logf("cache: %v", err)
				}
				return src, rt, restart
			}

			src, _, restart := start(root1)
			if restart != nil {
				t.Fatalf("first start is a restart: %+v", restart)
			}
			rs.put("/m/manifest.json", sign(t, manifestVersion(1), k1))
			if _, err := src.Poll(ctx); err != nil {
				t.Fatal(err)
			}

			// The compromise: root 2 signed with the stolen root key
			// hands the chain to the attacker; root 3 is theirs alone.
			rs.put("/m/root.2.json", signRoot(t, newRoot(2, []testKey{ark}, 1, []testKey{akm}, 1), rk, ark))
			rs.put("/m/root.3.json", signRoot(t, newRoot(3, []testKey{ark}, 1, []testKey{akm}, 1), ark))
			evil := sign(t, manifestVersion(1<<62), akm)
			rs.put("/m/manifest.json", evil)
			if res, err := src.Poll(ctx); err != nil || res.Manifest.Version != 1<<62 {
				t.Fatalf("the attacker's chain is not followed (the replay is wrong): %v", err)
			}
			// Restarting with the same trust.root keeps the chain: the
			// persisted root is the newest.
			if _, rt, restart := start(root1); rt.Current().Version != 3 || restart != nil {
				t.Fatalf("same trust.root: version %d, restart %+v", rt.Current().Version, restart)
			}

			// The recovery: a new trust.root; the publisher signs a new
			// manifest, version 2, with the new key.
			if !tc.attackerFiles {
				rs.mu.Lock()
				delete(rs.files, "/m/root.2.json")
				delete(rs.files, "/m/root.3.json")
				rs.mu.Unlock()
			}
			newRootFile := signRoot(t, newRoot(tc.newVersion, []testKey{nrk}, 1, []testKey{k2}, 1), nrk)
			src, rt, restart := start(newRootFile)
			if restart == nil || restart.From.Version != 3 || restart.To.Version != tc.newVersion || !restart.ManifestKeysChanged {
				t.Fatalf("re-provisioning is not a restart: %+v", restart)
			}
			if rt.Current().Version != tc.newVersion {
				t.Fatalf("trusted root version %d after re-provisioning, want %d", rt.Current().Version, tc.newVersion)
			}
			if cur := src.Current(); cur != nil {
				t.Fatalf("the attacker's manifest stays in force: version %d", cur.Version)
			}
			if _, err := src.Poll(ctx); !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("the attacker's manifest after re-provisioning: %v", err)
			}
			rs.put("/m/manifest.json", sign(t, manifestVersion(2), k2))
			if res, err := src.Poll(ctx); err != nil || res.Manifest.Version != 2 {
				t.Fatalf("the real key's manifest after re-provisioning: %v", err)
			}

			// A restart with the new trust.root is no restart and keeps
			// the attacker out.
			src, rt, restart = start(newRootFile)
			if restart != nil || rt.Current().Version != tc.newVersion {
				t.Fatalf("second start: version %d, restart %+v", rt.Current().Version, restart)
			}
			rs.put("/m/manifest.json", evil)
			if _, err := src.Poll(ctx); !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("the attacker's manifest after a restart: %v", err)
			}
			if b, err := os.ReadFile(filepath.Join(dir, "root.json")); err != nil || string(b) != string(newRootFile) {
				t.Errorf("persisted root is not the re-provisioned one (%v)", err)
			}
		})
	}
}

// A daemon reloaded with a new trust.root settles it while the old
// configuration may still be polling: the old one's walk no longer
// replaces the re-provisioned root.
func TestOldConfigurationCannotCommitOverReprovisionedRoot(t *testing.T) {
	rk, k1, nrk, k2 := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	rs, srv := newRootServer(t)
	dir := t.TempDir()
	old, oldRT := rootSource(t, srv, signRoot(t, newRoot(1, []testKey{rk}, 1, []testKey{k1}, 1), rk), dir)
	if _, err := oldRT.Settle(old.Store); err != nil {
		t.Fatal(err)
	}
	newFile := signRoot(t, newRoot(1, []testKey{nrk}, 1, []testKey{k2}, 1), nrk)
	src, rt := rootSource(t, srv, newFile, dir)
	if _, err := rt.Settle(src.Store); err != nil { // nothing persisted yet: no restart, a new origin
		t.Fatal(err)
	}
	rs.put("/m/root.2.json", signRoot(t, newRoot(2, []testKey{rk}, 1, []testKey{k1}, 1), rk))
	rs.put("/m/manifest.json", sign(t, manifestVersion(1), k1))
	if _, err := old.Poll(context.Background()); !errors.Is(err, ErrRootRollback) {
		t.Fatalf("old configuration's walk: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "root.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the old configuration's root was persisted (%v)", err)
	}
}
