package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/daemon"
	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
	"github.com/klp-agent/klp-agent/manifest"
)

// rootFleet is a publisher directory served by a real nginx and one host
// configured with trust.root, polling through the daemon's own source.
type rootFleet struct {
	t        *testing.T
	now      time.Time
	dir, www string
	keys     string
	cfg      string
	stateDir string
	src      *manifest.Source
	updates  []*manifest.RootUpdate
	seq      int
}

func newRootFleet(t *testing.T, manifestKeys ...string) *rootFleet {
	f := &rootFleet{t: t, now: time.Now().UTC(), dir: t.TempDir()}
	f.www, f.keys = filepath.Join(f.dir, "www"), filepath.Join(f.dir, "keys")
	for _, d := range []string{f.www, f.keys} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range append([]string{"root1", "root2"}, manifestKeys...) {
		run(t, f.now, "manifest", "keygen", "--out", f.key(k))
	}
	// The publisher's first root: root key root1, manifest key(s) given.
	r1 := filepath.Join(f.www, "root.1.json")
	args := []string{"manifest", "root", "init", "--root-key", f.key("root1") + ".pub", "--out", r1}
	for _, k := range manifestKeys {
		args = append(args, "--manifest-key", f.key(k)+".pub")
	}
	run(t, f.now, args...)
	run(t, f.now, "manifest", "root", "sign", "--envelope", r1, "--key", f.key("root1")+".key")

	// The host is provisioned with root.1.json (as the RPM or config
	// management would install it) and no keys dir at all.
	provisioned := filepath.Join(f.dir, "etc-root.json")
	b, err := os.ReadFile(r1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(provisioned, b, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := nginxtest.Start(t, f.www)
	hostRoot, stateDir := t.TempDir(), t.TempDir()
	writeHostRoot(t, hostRoot, testKernel, "0123456789abcdef0123456789abcdef")
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("manifest:\n  url: %s/manifest.json\n  retries: 0\ntrust:\n  root: %s\n  keys_dir: %s\npaths:\n  root: %s\n  state_dir: %s\n",
		srv.URL, provisioned, filepath.Join(f.dir, "no-such-keys-dir"), hostRoot, stateDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	// The keys dir does not exist: with trust.root it is not used.
	if out := run(t, f.now, "check-config", "--config", cfg); !strings.Contains(out, "# trusted keys (1)") {
		t.Fatalf("check-config:\n%s", out)
	}
	h, err := daemon.LoadHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, err := h.Client(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s, err := h.Settings(zap.NewNop(), client)
	if err != nil {
		t.Fatal(err)
	}
	f.src, f.cfg, f.stateDir = s.Source, cfg, stateDir
	// Keep the daemon's journal hook and record what it was told.
	journal := f.src.OnRootUpdate
	f.src.OnRootUpdate = func(u *manifest.RootUpdate) { journal(u); f.updates = append(f.updates, u) }
	return f
}

func (f *rootFleet) key(name string) string { return filepath.Join(f.keys, name) }

// publish signs a manifest of version v with the named keys and puts it
// on the server atomically.
func (f *rootFleet) publish(v uint64, keys ...string) string {
	f.t.Helper()
	f.seq++
	src := filepath.Join(f.dir, fmt.Sprintf("manifest-%d.yaml", f.seq))
	body := fmt.Sprintf("schema: 1\nversion: %d\nexpires: %s\n", v, f.now.Add(14*24*time.Hour).Format(time.RFC3339))
	if err := os.WriteFile(src, []byte(body), 0o644); err != nil {
		f.t.Fatal(err)
	}
	signed := filepath.Join(f.dir, fmt.Sprintf("signed-%d.json", f.seq))
	args := []string{"manifest", "sign", "--in", src, "--out", signed}
	for _, k := range keys {
		args = append(args, "--key", f.key(k)+".key")
	}
	run(f.t, f.now, args...)
	b, err := os.ReadFile(signed)
	if err != nil {
		f.t.Fatal(err)
	}
	path := filepath.Join(f.www, "manifest.json")
	replaceAtomically(f.t, path, b, f.now.Add(time.Duration(f.seq)*time.Second))
	return path
}

// rotate publishes root.2.json: root key root2 replaces root1, and the
// manifest key becomes manifestKey; signed by the old and the new root key.
func (f *rootFleet) rotate(manifestKey string) {
	f.t.Helper()
	r2 := filepath.Join(f.www, "root.2.json")
	out := run(f.t, f.now, "manifest", "root", "rotate", "--prev", filepath.Join(f.www, "root.1.json"),
		"--root-key", f.key("root2")+".pub", "--manifest-key", f.key(manifestKey)+".pub")
	if !strings.Contains(out, "root.2.json") || !strings.Contains(out, "AND 1 of its own") {
		f.t.Fatalf("rotate output:\n%s", out)
	}
	// Signed by the new root key alone it does not chain; by both it does.
	run(f.t, f.now, "manifest", "root", "sign", "--envelope", r2, "--key", f.key("root2")+".key")
	if _, code := runCode(f.t, f.now, "manifest", "verify", "--envelope", filepath.Join(f.www, "manifest.json"), "--root", filepath.Join(f.www, "root.1.json")); code != 1 {
		f.t.Fatalf("a root.2.json without root 1's signature verified (exit %d)", code)
	}
	run(f.t, f.now, "manifest", "root", "sign", "--envelope", r2, "--key", f.key("root1")+".key")
}

func (f *rootFleet) poll() (manifest.PollResult, error) {
	return f.src.Poll(context.Background())
}

// TestRootRotationThroughNginx: hosts apply with K1; the publisher rotates
// to K2 (revoking K1) by publishing one file, root.2.json; then a manifest
// signed with K1 only is refused and one signed with K2 accepted. On the
// keys-dir code the host would have kept accepting K1 until its keys dir
// was edited.
func TestRootRotationThroughNginx(t *testing.T) {
	f := newRootFleet(t, "k1")
	run(t, f.now, "manifest", "keygen", "--out", f.key("k2"))
	m := f.publish(1, "k1")
	run(t, f.now, "manifest", "verify", "--envelope", m, "--root", filepath.Join(f.www, "root.1.json"))
	res, err := f.poll()
	if err != nil || res.Status != http.StatusOK || res.Manifest.Version != 1 {
		t.Fatalf("K1 manifest under root 1: status %d err %v", res.Status, err)
	}
	if res.TrustedRoot == nil || res.TrustedRoot.Version != 1 {
		t.Fatalf("trusted root after the first poll: %+v, want version 1", res.TrustedRoot)
	}

	f.rotate("k2")
	// explain follows the chain in memory: it verifies the K2 manifest
	// but leaves the daemon's trusted root (and so its floor reset) alone.
	f.publish(2, "k2")
	if out := run(t, f.now, "explain", "--config", f.cfg); !strings.Contains(out, "host:") {
		t.Fatalf("explain after the rotation:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(f.stateDir, "root.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("explain persisted the root: %v", err)
	}
	m = f.publish(2, "k1")
	res, err = f.poll()
	if !errors.Is(err, manifest.ErrUnknownKey) || res.Manifest != nil {
		t.Fatalf("K1 manifest after K1 was revoked: err %v, in force %+v", err, res.Manifest)
	}
	// A failed poll still names the root it ran under (metrics, status).
	if res.TrustedRoot == nil || res.TrustedRoot.Version != 2 {
		t.Fatalf("trusted root after the rotation: %+v, want version 2", res.TrustedRoot)
	}
	if out := run(t, f.now, "status", "--config", f.cfg); !strings.Contains(out, "root:       version 2, expires") {
		t.Fatalf("status does not show trusted root version 2:\n%s", out)
	}
	if len(f.updates) != 1 || f.updates[0].To.Version != 2 || !f.updates[0].ManifestKeysChanged {
		t.Fatalf("root updates seen: %+v", f.updates)
	}
	if _, code := runCode(t, f.now, "manifest", "verify", "--envelope", m, "--root", filepath.Join(f.www, "root.1.json")); code != 1 {
		t.Fatalf("verify --root accepted the K1 manifest after the rotation (exit %d)", code)
	}

	m = f.publish(3, "k2")
	res, err = f.poll()
	if err != nil || res.Manifest == nil || res.Manifest.Version != 3 {
		t.Fatalf("K2 manifest under root 2: %v", err)
	}
	out := run(t, f.now, "manifest", "verify", "--envelope", m, "--root", filepath.Join(f.www, "root.1.json"))
	if !strings.Contains(out, "root chain version 1 to 2") {
		t.Fatalf("verify --root output:\n%s", out)
	}
	// Unchanged: the chain ends at root.3.json's 404 and the manifest is a 304.
	if res, err = f.poll(); err != nil || res.Status != http.StatusNotModified || res.Manifest.Version != 3 {
		t.Fatalf("unchanged poll: status %d err %v", res.Status, err)
	}
}

// TestRootFastForwardRecoveryThroughNginx: a manifest with version
// 2^64-1 signed with a leaked key locks hosts out of every normal version
// (on the old code, until manifest-version.json was deleted by hand on
// each host); a root rotation that revokes the key resets the floor and a
// normal version signed with the new key is accepted again.
func TestRootFastForwardRecoveryThroughNginx(t *testing.T) {
	f := newRootFleet(t, "leaked")
	f.publish(7, "leaked")
	if res, err := f.poll(); err != nil || res.Manifest.Version != 7 {
		t.Fatalf("first manifest: %v", err)
	}
	f.publish(18446744073709551615, "leaked")
	if res, err := f.poll(); err != nil || res.Manifest.Version != 18446744073709551615 {
		t.Fatalf("fast-forward manifest: %v", err)
	}
	f.publish(8, "leaked")
	if _, err := f.poll(); !errors.Is(err, manifest.ErrRollback) {
		t.Fatalf("normal version after the fast-forward: %v, want ErrRollback", err)
	}

	run(t, f.now, "manifest", "keygen", "--out", f.key("k2"))
	f.rotate("k2")
	f.publish(8, "k2")
	res, err := f.poll()
	if err != nil || res.Manifest == nil || res.Manifest.Version != 8 {
		t.Fatalf("normal version after the rotation: %v", err)
	}
	// The floor is 8 again: the leaked key's manifests stay refused.
	f.publish(18446744073709551615, "leaked")
	if _, err := f.poll(); !errors.Is(err, manifest.ErrUnknownKey) {
		t.Fatalf("leaked key's fast-forward after the rotation: %v", err)
	}
}
