package manifest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fixedKey is a key from a fixed seed: shard envelopes are then the same
// bytes on every run (ed25519 signatures are deterministic).
func fixedKey() testKey {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	pub := priv.Public().(ed25519.PublicKey)
	return testKey{NewSigner(priv), pub, KeyID(pub)}
}

// shardFixture has two kernels, a revocation for every kernel, one for
// each kernel, and a rollout with tiers.
func shardFixture() *Manifest {
	start := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	return &Manifest{Schema: SchemaVersion, Version: 7, Expires: time.Date(2026, 12, 9, 0, 0, 0, 0, time.UTC),
		Annotations: map[string]string{"publisher": "fleet"},
		Patches: []Patch{
			{Kernel: "6.1.0-28-amd64", Name: "klp_a", Level: 1, URL: "rpms/a1.rpm", SHA256: sha(1), Size: 10},
			{Kernel: "6.1.0-28-amd64", Name: "klp_a", Level: 2, URL: "rpms/a2.rpm", SHA256: sha(2), Size: 20,
				Rollout: &Rollout{Tiers: []string{"canary"}, Start: start, StartPercent: 0}},
			{Kernel: "6.12.9+deb13-amd64", Name: "klp_b", Level: 1, URL: "rpms/b1.rpm", SHA256: sha(3), Size: 30},
		},
		Revoked: []Revoked{
			{Name: "klp_a", Level: 3, Reason: "every kernel"},
			{Name: "klp_a", Level: 1, Kernel: "6.1.0-28-amd64", Reason: "oops on 28"},
			{Name: "klp_b", Level: 2, Kernel: "6.12.9+deb13-amd64", Reason: "oops on 6.12"},
		},
	}
}

// TestShardsGolden pins the shard payloads `manifest shard` signs:
// each kernel's patches, the revocations that could apply, the global
// fields, and an empty shard for an extra kernel. UPDATE_GOLDEN=1
// rewrites testdata/shard/.
func TestShardsGolden(t *testing.T) {
	shards, err := Shards(shardFixture(), "6.1.0-30-amd64", "6.1.0-28-amd64")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range shards {
		names = append(names, s.Shard)
		got, err := MarshalJSON(s)
		if err != nil {
			t.Fatal(err)
		}
		golden := filepath.Join("testdata", "shard", ShardFileName(s.Shard))
		if os.Getenv("UPDATE_GOLDEN") != "" {
			if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(golden, got, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("shard %s:\n%s\nwant (%s):\n%s", s.Shard, got, golden, want)
		}
	}
	if want := []string{"6.1.0-28-amd64", "6.1.0-30-amd64", "6.12.9+deb13-amd64"}; !reflect.DeepEqual(names, want) {
		t.Errorf("shards %v, want %v", names, want)
	}
}

// TestShardSelectSameAsFull: a host deciding from its shard decides
// exactly as from the full manifest.
func TestShardSelectSameAsFull(t *testing.T) {
	full := shardFixture()
	for _, h := range []Host{
		{ID: "h1", Kernel: "6.1.0-28-amd64"},
		{ID: "h2", Kernel: "6.1.0-28-amd64", Tier: "canary"},
		{ID: "h3", Kernel: "6.12.9+deb13-amd64"},
		{ID: "h4", Kernel: "6.1.0-30-amd64"},
	} {
		t.Run(h.ID, func(t *testing.T) {
			shard, err := ShardFor(full, h.Kernel)
			if err != nil {
				t.Fatal(err)
			}
			want, got := Select(full, h, now, nil), Select(shard, h, now, nil)
			if !reflect.DeepEqual(want.Wanted, got.Wanted) || !reflect.DeepEqual(want.Entries, got.Entries) {
				t.Errorf("from shard: wanted %v entries %+v\nfrom full: wanted %v entries %+v", got.Wanted, got.Entries, want.Wanted, want.Entries)
			}
		})
	}
	// And the expected picks, so the equality above is not vacuous.
	d := Select(mustShard(t, full, "6.1.0-28-amd64"), Host{ID: "h2", Kernel: "6.1.0-28-amd64", Tier: "canary"}, now, nil)
	if d.Wanted == nil || d.Wanted.Level != 2 || d.Entries[1].Revoked == nil {
		t.Errorf("canary on 28: wanted %v, entries %+v", d.Wanted, d.Entries)
	}
}

func mustShard(t *testing.T, m *Manifest, kernel string) *Manifest {
	t.Helper()
	s, err := ShardFor(m, kernel)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func signManifest(t *testing.T, k testKey, m *Manifest) []byte {
	t.Helper()
	payload, err := MarshalJSON(m)
	if err != nil {
		t.Fatal(err)
	}
	env, err := SignPayload(context.Background(), payload, k.signer)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestVerifyShard: a host accepts its own kernel's shard and refuses
// another kernel's, a full manifest in a shard's place (and a shard in
// the full manifest's), a tampered shard and a shard holding another
// kernel's entries; a refused shard never moves the version floor.
func TestVerifyShard(t *testing.T) {
	k := fixedKey()
	trust := Trust{Keys: keyring(k), Threshold: 1}
	const kernel = "6.1.0-28-amd64"
	mine := signManifest(t, k, mustShard(t, shardFixture(), kernel))
	foreign := mustShard(t, shardFixture(), kernel)
	foreign.Patches = append(foreign.Patches, Patch{Kernel: "6.1.0-30-amd64", Name: "klp_x", Level: 1, URL: "x.rpm", SHA256: sha(9), Size: 1})
	for _, c := range []struct {
		name     string
		envelope []byte
		full     bool // through VerifyFor (the single-file path)
		want     error
	}{
		{"own shard", mine, false, nil},
		{"other kernel's shard", signManifest(t, k, mustShard(t, shardFixture(), "6.12.9+deb13-amd64")), false, ErrShardKernel},
		{"full manifest as shard", signManifest(t, k, shardFixture()), false, ErrNotShard},
		{"shard as full manifest", mine, true, ErrNotShard},
		{"full manifest unchanged", signManifest(t, k, shardFixture()), true, nil},
		{"tampered shard", mutateEnvelope(t, mine, func(m map[string]any) {
			p, err := base64.StdEncoding.DecodeString(m["payload"].(string))
			if err != nil || !bytes.Contains(p, []byte(`"level":2`)) {
				t.Fatalf("payload %q: %v", p, err)
			}
			m["payload"] = base64.StdEncoding.EncodeToString(bytes.Replace(p, []byte(`"level":2`), []byte(`"level":9`), 1))
		}), false, ErrBadSignature},
		{"signed shard with another kernel's patch", signManifest(t, k, foreign), false, ErrInvalid},
	} {
		t.Run(c.name, func(t *testing.T) {
			store := &MemVersionStore{}
			var v *Verified
			var err error
			if c.full {
				v, err = trust.VerifyFor(c.envelope, now, store, kernel)
			} else {
				v, err = trust.VerifyShard(c.envelope, now, store, kernel)
			}
			if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
			hi, _ := store.Highest()
			if c.want != nil && hi != 0 {
				t.Errorf("refused document moved the floor to %d", hi)
			}
			if c.want == nil && (hi != 7 || v.Version != 7) {
				t.Errorf("floor %d after accepting version %d", hi, v.Version)
			}
		})
	}
}

// TestShardVersionFloor: each shard has its own floor, kept in its own
// file: an older shard of the same kernel is refused, another kernel's
// floor is untouched.
func TestShardVersionFloor(t *testing.T) {
	k := fixedKey()
	trust := Trust{Keys: keyring(k), Threshold: 1}
	dir := t.TempDir()
	store := func(kernel string) VersionStore {
		p, err := ShardVersionFile(dir, kernel)
		if err != nil {
			t.Fatal(err)
		}
		return &FileVersionStore{Path: p}
	}
	at := func(version uint64, kernel string) []byte {
		m := shardFixture()
		m.Version = version
		return signManifest(t, k, mustShard(t, m, kernel))
	}
	for i, c := range []struct {
		kernel  string
		version uint64
		want    error
	}{
		{"6.1.0-28-amd64", 9, nil},
		{"6.1.0-28-amd64", 8, ErrRollback},     // replayed older shard
		{"6.12.9+deb13-amd64", 8, nil},         // its own floor, still 0
		{"6.12.9+deb13-amd64", 8, nil},         // same version, same bytes
		{"6.1.0-28-amd64", 10, nil},            // next publish
		{"6.12.9+deb13-amd64", 7, ErrRollback}, // below its floor of 8
		{"6.1.0-30-amd64", 1, nil},             // a kernel never seen
		{"6.1.0-28-amd64", 9, ErrRollback},     // floor survived in the file
		{"../../etc/x", 1, ErrInvalidName},     // not a file name
		{"6.1.0-30-amd64", 0x7fffffff, nil},    // fast-forward of one shard...
		{"6.1.0-28-amd64", 11, nil},            // ...leaves the others' floors alone
		{"6.1.0-30-amd64", 2, ErrRollback},     // and holds its own
	} {
		if c.want == ErrInvalidName {
			if _, err := ShardVersionFile(dir, c.kernel); !errors.Is(err, ErrInvalidName) {
				t.Errorf("step %d: ShardVersionFile(%q): %v, want %v", i, c.kernel, err, ErrInvalidName)
			}
			continue
		}
		_, err := trust.VerifyShard(at(c.version, c.kernel), now, store(c.kernel), c.kernel)
		if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("step %d: shard %s version %d: %v, want %v", i, c.kernel, c.version, err, c.want)
		}
	}
}

// TestShardURL: {kernel} is filled with the exact release, safely; a
// template without it, with it twice or outside the file name is refused.
func TestShardURL(t *testing.T) {
	for _, c := range []struct {
		template, kernel, want string
		err                    error
	}{
		{"https://mirror/klp/shards/{kernel}.json", "6.12.9+deb13-amd64", "https://mirror/klp/shards/6.12.9+deb13-amd64.json", nil},
		{"/srv/klp/shards/{kernel}.json", "6.1.0-28-amd64", "/srv/klp/shards/6.1.0-28-amd64.json", nil},
		{"file:///srv/klp/{kernel}.json", "5.14.0-503.el9.x86_64", "file:///srv/klp/5.14.0-503.el9.x86_64.json", nil},
		{"https://mirror/klp/shards/{kernel}.json", "../../x", "", ErrInvalidName},
		{"https://mirror/klp/shards/{kernel}.json", "..", "", ErrInvalidName},
		{"https://mirror/klp/shards/{kernel}.json", "a/b", "", ErrInvalidName},
		{"https://mirror/klp/shards/{kernel}.json", "a%2fb", "", ErrInvalidName},
		{"https://mirror/klp/shards/{kernel}.json", "a?b", "", ErrInvalidName},
		{"https://mirror/klp/shards/manifest.json", "6.1.0-28-amd64", "", ErrShardURL},
		{"https://mirror/{kernel}/{kernel}.json", "6.1.0-28-amd64", "", ErrShardURL},
		{"https://mirror/{kernel}/shard.json", "6.1.0-28-amd64", "", ErrShardURL},
		{"https://{kernel}/shard.json", "6.1.0-28-amd64", "", ErrShardURL},
		{"https://mirror/shard.json?k={kernel}", "6.1.0-28-amd64", "", ErrShardURL},
		{"ftp://mirror/{kernel}.json", "6.1.0-28-amd64", "", ErrShardURL},
		{"shards/{kernel}.json", "6.1.0-28-amd64", "", ErrShardURL},
	} {
		got, err := ShardURL(c.template, c.kernel)
		if got != c.want || !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
			t.Errorf("ShardURL(%q, %q) = %q, %v; want %q, %v", c.template, c.kernel, got, err, c.want, c.err)
		}
	}
}

// TestSourceShard: a Source on a shard URL polls its kernel's shard with
// conditional GETs, and refuses what another kernel's shard or a 404
// would do to it while keeping the last good shard in force.
func TestSourceShard(t *testing.T) {
	k := fixedKey()
	const kernel = "6.1.0-28-amd64"
	bodies := map[string][]byte{}
	for _, s := range mustSigned(t, k, shardFixture()) {
		bodies["/shards/"+s.File] = s.Envelope
	}
	var requests []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests = append(requests, r.URL.Path)
		b, ok := bodies[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		etag := `"` + r.URL.Path + `"`
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", etag)
		w.Write(b)
	}))
	defer srv.Close()
	u, err := ShardURL(srv.URL+"/shards/{kernel}.json", kernel)
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewFetcher(FetcherConfig{URL: u})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := ShardVersionFile(t.TempDir(), kernel)
	s := &Source{Fetcher: f, Trust: Trust{Keys: keyring(k), Threshold: 1}, Store: &FileVersionStore{Path: p}, Kernel: kernel, Shard: true, Now: func() time.Time { return now }}

	res, err := s.Poll(context.Background())
	if err != nil || !res.Changed || res.Manifest.Shard != kernel || len(res.Manifest.Patches) != 2 {
		t.Fatalf("first poll: %+v, %v", res, err)
	}
	if res, err = s.Poll(context.Background()); err != nil || res.Status != http.StatusNotModified || res.Changed {
		t.Fatalf("second poll: status %d changed %v, %v", res.Status, res.Changed, err)
	}
	// A mirror serving another kernel's shard at this URL.
	bodies["/shards/"+kernel+".json"] = bodies["/shards/6.12.9+deb13-amd64.json"]
	s.validators = Validators{}
	if res, err = s.Poll(context.Background()); !errors.Is(err, ErrShardKernel) || res.Manifest.Shard != kernel {
		t.Fatalf("other kernel's shard: %v, in force %q", err, res.Manifest.Shard)
	}
	// A 404 is never "nothing for this kernel": the last good shard stays
	// in force (until it expires) and the poll fails.
	delete(bodies, "/shards/"+kernel+".json")
	if res, err = s.Poll(context.Background()); !errors.Is(err, ErrHTTPStatus) || res.Manifest == nil || res.Manifest.Shard != kernel {
		t.Fatalf("404: %v, in force %+v", err, res.Manifest)
	}
	if want := "/shards/" + kernel + ".json"; len(requests) != 4 || strings.Join(requests, " ") != strings.TrimSpace(strings.Repeat(want+" ", 4)) {
		t.Errorf("requests %v, want only %s", requests, want)
	}
}

func mustSigned(t *testing.T, k testKey, m *Manifest) []SignedShard {
	t.Helper()
	s, err := SignShards(context.Background(), m, nil, k.signer)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRebaseURLs: a relative RPM URL resolves to the same file from the
// shard's URL as from the full manifest's.
func TestRebaseURLs(t *testing.T) {
	for _, c := range []struct {
		url, publish, shards, want string
	}{
		{"rpms/a.rpm", "/srv/klp", "/srv/klp/shards", "../rpms/a.rpm"},
		{"rpms/a.rpm", "/srv/klp", "/srv/klp", "rpms/a.rpm"},
		{"rpms/a.rpm?x=1", "/srv/klp", "/srv/shards", "../klp/rpms/a.rpm?x=1"},
		{"./k:1/a.rpm", "/srv/klp", "/srv/klp/shards", "../k:1/a.rpm"},
		{"https://cdn/rpms/a.rpm", "/srv/klp", "/srv/klp/shards", "https://cdn/rpms/a.rpm"},
		{"/rpms/a.rpm", "/srv/klp", "/srv/klp/shards", "/rpms/a.rpm"},
		{"//cdn/a.rpm", "/srv/klp", "/srv/klp/shards", "//cdn/a.rpm"},
	} {
		m := &Manifest{Patches: []Patch{{Name: "klp_a", Level: 1, URL: c.url}}}
		if err := RebaseURLs(m, c.publish, c.shards); err != nil {
			t.Fatal(err)
		}
		if m.Patches[0].URL != c.want {
			t.Errorf("%s from %s to %s: %q, want %q", c.url, c.publish, c.shards, m.Patches[0].URL, c.want)
		}
		// Resolved as a host resolves it, both land on the same file.
		full, err1 := ResolveURL("https://mirror"+c.publish+"/manifest.json", &Patch{URL: c.url})
		shard, err2 := ResolveURL("https://mirror"+c.shards+"/x.json", &m.Patches[0])
		if err1 != nil || err2 != nil || full != shard {
			t.Errorf("%s: full resolves to %s (%v), shard to %s (%v)", c.url, full, err1, shard, err2)
		}
	}
}

// TestShardRootBase: a shard source reads the root chain beside the full
// manifest (RootURL), not beside its shard.
func TestShardRootBase(t *testing.T) {
	dir := t.TempDir()
	f, err := NewFetcher(FetcherConfig{URL: dir + "/shards/6.1.0-28-amd64.json"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ root, want string }{
		{"", "file://" + dir + "/shards/6.1.0-28-amd64.json"},
		{dir + "/manifest.json", "file://" + dir + "/manifest.json"},
		{"https://mirror/klp/manifest.json", "https://mirror/klp/manifest.json"},
	} {
		s := &Source{Fetcher: f, Shard: true, RootURL: c.root}
		if got := s.RootBase(); got != c.want {
			t.Errorf("RootURL %q: root chain beside %s, want %s", c.root, got, c.want)
		}
	}
}
