package daemon

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/manifest"
)

type rootKey struct {
	pub    ed25519.PublicKey
	signer *manifest.Signer
}

func newRootKey(t *testing.T) rootKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return rootKey{pub, manifest.NewSigner(priv)}
}

// signedRoot is root version v with k as root key and m as manifest key,
// expiring at exp, signed by signers.
func signedRoot(t *testing.T, v uint64, exp time.Time, k, m rootKey, signers ...rootKey) []byte {
	t.Helper()
	r := &manifest.Root{Type: manifest.RootType, Version: v, Expires: exp, Keys: map[string]manifest.RootKey{}}
	for role, key := range map[*manifest.Role]rootKey{&r.Roles.Root: k, &r.Roles.Manifest: m} {
		id, rk := manifest.NewRootKey(key.pub)
		r.Keys[id] = rk
		role.KeyIDs, role.Threshold = []string{id}, 1
	}
	ss := make([]*manifest.Signer, len(signers))
	for i, s := range signers {
		ss[i] = s.signer
	}
	b, err := manifest.SignRoot(context.Background(), r, ss...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLoadHostRoot: with trust.root the manifest keys come from the newest
// trusted root (the persisted one when it is newer than the provisioned
// one), the keys dir is not read, and a bad root stops the agent.
func TestLoadHostRoot(t *testing.T) {
	rk, m1, m2 := newRootKey(t), newRootKey(t), newRootKey(t)
	exp := time.Now().Add(24 * time.Hour)
	dir, stateDir := t.TempDir(), t.TempDir()
	provisioned := filepath.Join(dir, "root.json")
	if err := os.WriteFile(provisioned, signedRoot(t, 1, exp, rk, m1, rk), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	writeConfig(t, cfg, "trust:\n  root: "+provisioned+"\n  keys_dir: /nonexistent\n  threshold: 5\npaths:\n  root: "+hostRoot(t)+"\n  state_dir: "+stateDir+"\n")
	h, err := LoadHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if h.Trust.Root == nil || h.Trust.Root.Current().Version != 1 || h.CheckTrust() != nil {
		t.Fatalf("trust %+v", h.Trust)
	}

	if err := os.WriteFile(filepath.Join(stateDir, "root.json"), signedRoot(t, 2, exp, rk, m2, rk), 0o644); err != nil {
		t.Fatal(err)
	}
	if h, err = LoadHost(cfg); err != nil || h.Trust.Root.Current().Version != 2 {
		t.Fatalf("persisted root 2: %v", err)
	}
	l, err := config.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	kr, problems := Problems(cfg, l)
	if _, ok := kr[manifest.KeyID(m2.pub)]; !ok || len(kr) != 1 || len(problems) != 1 || !strings.Contains(problems[0], "manifest.url") {
		t.Fatalf("check-config keys %v problems %q", kr.IDs(), problems)
	}

	// Signed by its manifest key only: not a root.
	if err := os.WriteFile(provisioned, signedRoot(t, 1, exp, rk, m1, m1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadHost(cfg); err == nil || !strings.Contains(err.Error(), "trust.root") {
		t.Fatalf("root not signed by its root key: %v", err)
	}

	// Expired: loads (health watching keeps running), check-config says so.
	if err := os.WriteFile(provisioned, signedRoot(t, 1, time.Now().Add(-time.Hour), rk, m1, rk), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(stateDir, "root.json")); err != nil {
		t.Fatal(err)
	}
	if _, problems = Problems(cfg, l); len(problems) != 2 || !strings.Contains(problems[0], "expired") {
		t.Fatalf("expired root: problems %q", problems)
	}
}

func TestLogRootUpdate(t *testing.T) {
	rk, m1, m2 := newRootKey(t), newRootKey(t), newRootKey(t)
	exp := time.Now().Add(time.Hour)
	r1, err := manifest.VerifySelfSigned(signedRoot(t, 1, exp, rk, m1, rk))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := manifest.VerifySelfSigned(signedRoot(t, 2, exp, rk, m2, rk))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	logRootUpdate(zap.New(core), &manifest.RootUpdate{From: r1, To: r2, ManifestKeysChanged: true})
	e := logs.All()
	if len(e) != 1 || e[0].Level != zapcore.WarnLevel || !strings.Contains(e[0].Message, "floor reset") || e[0].ContextMap()["KLP_ROOT_VERSION"] != uint64(2) ||
		e[0].ContextMap()["MESSAGE_ID"] != agent.MsgRootFloorReset {
		t.Fatalf("log %+v", e)
	}
	logRootUpdate(zap.New(core), &manifest.RootUpdate{From: r1, To: r2})
	if e := logs.All(); len(e) != 2 || e[1].Level != zapcore.InfoLevel || e[1].ContextMap()["MESSAGE_ID"] != agent.MsgRootUpdated {
		t.Fatalf("log %+v", e)
	}
}

// A re-provisioned trust.root is journalled with its own MESSAGE_ID when
// the daemon's settings are built (start and reload), once: the persisted
// chain (version 2 here) is replaced by the configured root before any
// walk.
func TestReprovisionedRootIsJournalled(t *testing.T) {
	rk, m1, m2, nrk, nm := newRootKey(t), newRootKey(t), newRootKey(t), newRootKey(t), newRootKey(t)
	exp := time.Now().Add(24 * time.Hour)
	dir, stateDir := t.TempDir(), t.TempDir()
	provisioned := filepath.Join(dir, "root.json")
	if err := os.WriteFile(provisioned, signedRoot(t, 1, exp, rk, m1, rk), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	writeConfig(t, cfg, "manifest:\n  url: http://127.0.0.1:1/manifest.json\ntrust:\n  root: "+provisioned+"\npaths:\n  root: "+hostRoot(t)+"\n  state_dir: "+stateDir+"\n")
	settings := func() []observer.LoggedEntry {
		t.Helper()
		h, err := LoadHost(cfg)
		if err != nil {
			t.Fatal(err)
		}
		core, logs := observer.New(zapcore.InfoLevel)
		log := zap.New(core)
		client, err := h.Client(log)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.Settings(log, client); err != nil {
			t.Fatal(err)
		}
		return logs.FilterField(zap.String("MESSAGE_ID", agent.MsgRootReprovisioned)).All()
	}
	if e := settings(); len(e) != 0 {
		t.Fatalf("first start journals a re-provisioning: %+v", e)
	}
	// The chain moved on to version 2 (in the field: a walk).
	if err := os.WriteFile(filepath.Join(stateDir, "root.json"), signedRoot(t, 2, exp, m2, m2, rk, m2), 0o644); err != nil {
		t.Fatal(err)
	}
	if e := settings(); len(e) != 0 {
		t.Fatalf("the same trust.root journals a re-provisioning: %+v", e)
	}
	newRoot := signedRoot(t, 1, exp, nrk, nm, nrk)
	if err := os.WriteFile(provisioned, newRoot, 0o644); err != nil {
		t.Fatal(err)
	}
	e := settings()
	if len(e) != 1 || e[0].Level != zapcore.WarnLevel || e[0].ContextMap()["KLP_ROOT_PREVIOUS_VERSION"] != uint64(2) ||
		e[0].ContextMap()["KLP_ROOT_VERSION"] != uint64(1) || e[0].ContextMap()["KLP_FLOOR_RESET"] != true ||
		!strings.Contains(e[0].Message, "trust.root re-provisioned: the root chain restarts from the configured root version 1") {
		t.Fatalf("re-provisioning journalled as %+v", e)
	}
	if b, err := os.ReadFile(filepath.Join(stateDir, "root.json")); err != nil || string(b) != string(newRoot) {
		t.Fatalf("persisted root is not the configured one (%v)", err)
	}
	if e := settings(); len(e) != 0 {
		t.Fatalf("journalled again at the next start: %+v", e)
	}
}
