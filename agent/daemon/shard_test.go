package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/klp-agent/klp-agent/manifest"
)

// shardMirror adds shards/<kernel>.json to a mirror's directory, signed
// by a key it adds to keysDir, for krel and for another kernel.
func shardMirror(t *testing.T, www, keysDir string) {
	t.Helper()
	env, err := os.ReadFile(filepath.Join(www, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := manifest.EnvelopePayload(env)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(payload)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(www, "shards")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := manifest.RebaseURLs(m, www, dir); err != nil {
		t.Fatal(err)
	}
	priv, pub, _, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(keysDir, "shards.pub"), pub, 0o644)
	key, err := manifest.ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	shards, err := manifest.SignShards(context.Background(), m, []string{"6.1.0-1-amd64"}, manifest.NewSigner(key))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shards {
		if err := os.WriteFile(filepath.Join(dir, s.File), s.Envelope, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestShardSource: with manifest.shard_url the agent polls only its
// kernel's shard, keeps that shard's version floor in its own file (the
// full manifest's floor untouched), resolves the RPM against the shard's
// URL and applies it; a mirror serving another kernel's shard there
// applies nothing. Without shard_url the same mirror still serves the
// whole manifest (TestFileAndDirectorySources).
func TestShardSource(t *testing.T) {
	www, keys := mirror(t)
	shardMirror(t, www, keys)
	for _, tt := range []struct {
		name, swap string // swap: serve this kernel's shard as krel's
		err        error
	}{
		{"own shard", "", nil},
		{"another kernel's shard", "6.1.0-1-amd64", manifest.ErrShardKernel},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root, stateDir := hostRoot(t), t.TempDir()
			if tt.swap != "" {
				b, err := os.ReadFile(filepath.Join(www, "shards", tt.swap+".json"))
				if err != nil {
					t.Fatal(err)
				}
				os.WriteFile(filepath.Join(www, "shards", krel+".json"), b, 0o644)
			}
			cfg := filepath.Join(t.TempDir(), "config.yaml")
			writeConfig(t, cfg, "manifest:\n  url: "+www+"\n  shard_url: "+www+"/shards/{kernel}.json\ntrust:\n  keys_dir: "+keys+
				"\npaths:\n  root: "+root+"\n  state_dir: "+stateDir+"\n")
			res, err := pollAndApply(t, cfg, root)
			if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("poll: %v, want %v", err, tt.err)
			}
			floor := filepath.Join(stateDir, "shard-version."+krel+".json")
			if _, err := os.Stat(filepath.Join(stateDir, "manifest-version.json")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("full manifest's floor written: %v", err)
			}
			if tt.err != nil {
				if _, err := os.Stat(floor); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("refused shard wrote the floor: %v", err)
				}
				return
			}
			if want := "file://" + www + "/shards/" + krel + ".json"; res.Manifest.URL != want || res.Manifest.Shard != krel {
				t.Errorf("manifest URL %s shard %q, want %s", res.Manifest.URL, res.Manifest.Shard, want)
			}
			if _, err := os.Stat(floor); err != nil {
				t.Errorf("shard floor: %v", err)
			}
		})
	}
}
