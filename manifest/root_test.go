package manifest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// newRoot is a root naming rootKeys (threshold rt) and manifestKeys
// (threshold mt).
func newRoot(version uint64, rootKeys []testKey, rt int, manifestKeys []testKey, mt int) *Root {
	r := &Root{Type: RootType, Version: version, Expires: now.Add(365 * 24 * time.Hour), Keys: map[string]RootKey{}}
	for _, k := range rootKeys {
		id, rk := NewRootKey(k.pub)
		r.Keys[id] = rk
		r.Roles.Root.KeyIDs = append(r.Roles.Root.KeyIDs, id)
	}
	for _, k := range manifestKeys {
		id, rk := NewRootKey(k.pub)
		r.Keys[id] = rk
		r.Roles.Manifest.KeyIDs = append(r.Roles.Manifest.KeyIDs, id)
	}
	r.Roles.Root.Threshold, r.Roles.Manifest.Threshold = rt, mt
	return r
}

func signRoot(t testing.TB, r *Root, keys ...testKey) []byte {
	t.Helper()
	signers := make([]*Signer, len(keys))
	for i, k := range keys {
		signers[i] = k.signer
	}
	b, err := SignRoot(context.Background(), r, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawRootEnvelope signs arbitrary payload bytes as a root (for documents
// SignRoot would refuse to write).
func rawRootEnvelope(t testing.TB, payload []byte, keys ...testKey) []byte {
	t.Helper()
	signers := make([]*Signer, len(keys))
	for i, k := range keys {
		signers[i] = k.signer
	}
	b, err := signPayloadType(context.Background(), RootPayloadType, payload, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRootChainRules is every rule a successor root must pass (TUF 5.3).
func TestRootChainRules(t *testing.T) {
	r1a, r1b, r2a, r2b, m1, m2, other := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	// Root 1: root keys r1a, r1b with threshold 2; manifest key m1.
	root1 := newRoot(1, []testKey{r1a, r1b}, 2, []testKey{m1}, 1)
	// Root 2 (the good rotation): root keys r2a, r2b (threshold 2),
	// manifest key m2: signed by both generations.
	root2 := newRoot(2, []testKey{r2a, r2b}, 2, []testKey{m2}, 1)
	good := signRoot(t, root2, r1a, r1b, r2a, r2b)

	dupSig := func() []byte {
		// r1a's signature twice, r1b's not at all: still one of two.
		var env map[string]any
		b := signRoot(t, root2, r1a, r2a, r2b)
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatal(err)
		}
		sigs := env["signatures"].([]any)
		env["signatures"] = append(sigs, sigs[0])
		out, _ := json.Marshal(env)
		return out
	}
	tampered := func() []byte {
		var env map[string]any
		if err := json.Unmarshal(good, &env); err != nil {
			t.Fatal(err)
		}
		p, _ := base64.StdEncoding.DecodeString(env["payload"].(string))
		env["payload"] = base64.StdEncoding.EncodeToString(bytes.Replace(p, []byte(`"threshold":1`), []byte(`"threshold":1 `), 1))
		out, _ := json.Marshal(env)
		return out
	}
	unknownField := func() []byte {
		b, _ := MarshalRoot(root2)
		b = bytes.Replace(b, []byte(`{"type"`), []byte(`{"extra":1,"type"`), 1)
		return rawRootEnvelope(t, b, r1a, r1b, r2a, r2b)
	}
	wrongVersion := func(v uint64) []byte {
		r := *root2
		r.Version = v
		return signRoot(t, &r, r1a, r1b, r2a, r2b)
	}
	manifestSig := func() []byte {
		b, _ := MarshalRoot(root2)
		return sign(t, string(b), r1a, r1b, r2a, r2b)
	}
	for _, tc := range []struct {
		name     string
		envelope []byte
		want     error
	}{
		{"old and new root keys", good, nil},
		{"old keys only", signRoot(t, root2, r1a, r1b), ErrUnknownKey},
		{"new keys only", signRoot(t, root2, r2a, r2b), ErrUnknownKey},
		{"old below threshold", signRoot(t, root2, r1a, r2a, r2b), ErrThreshold},
		{"new below threshold", signRoot(t, root2, r1a, r1b, r2a), ErrThreshold},
		{"duplicate signature counts once", dupSig(), ErrThreshold},
		{"manifest key cannot sign a root", signRoot(t, root2, m1, r2a, r2b), ErrUnknownKey},
		{"bad signature", tampered(), ErrBadSignature},
		{"version skips", wrongVersion(3), ErrRootVersion},
		{"version repeats (rollback)", wrongVersion(1), ErrRootVersion},
		{"unknown field", unknownField(), ErrRootInvalid},
		{"manifest payload type", manifestSig(), ErrPayloadType},
		{"unrelated key", signRoot(t, root2, other), ErrUnknownKey},
		{"too large", append(good, bytes.Repeat([]byte(" "), RootMaxSize)...), ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := root1.VerifyNext(tc.envelope)
			if tc.want == nil {
				if err != nil || got.Version != 2 {
					t.Fatalf("VerifyNext: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || got != nil {
				t.Fatalf("VerifyNext: err %v, want %v", err, tc.want)
			}
		})
	}
}

// TestRootKeptKeys: a rotation that keeps part of the root keys needs
// the threshold of each generation, counted separately.
func TestRootKeptKeys(t *testing.T) {
	a, b, c := newTestKey(t), newTestKey(t), newTestKey(t)
	root1 := newRoot(1, []testKey{a, b}, 1, []testKey{a}, 1)
	root2 := newRoot(2, []testKey{b, c}, 2, []testKey{c}, 1)
	if _, err := root1.VerifyNext(signRoot(t, root2, b)); !errors.Is(err, ErrThreshold) {
		t.Fatalf("b alone (1 of root 1, 1 of 2 of root 2): %v", err)
	}
	if _, err := root1.VerifyNext(signRoot(t, root2, b, c)); err != nil {
		t.Fatalf("b and c: %v", err)
	}
}

func TestRootValidate(t *testing.T) {
	k, m := newTestKey(t), newTestKey(t)
	for _, tc := range []struct {
		name string
		edit func(r *Root)
	}{
		{"type", func(r *Root) { r.Type = "klp-agent-manifest" }},
		{"version 0", func(r *Root) { r.Version = 0 }},
		{"no expiry", func(r *Root) { r.Expires = time.Time{} }},
		{"threshold 0", func(r *Root) { r.Roles.Manifest.Threshold = 0 }},
		{"threshold above keys", func(r *Root) { r.Roles.Root.Threshold = 2 }},
		{"role key not listed", func(r *Root) { r.Roles.Manifest.KeyIDs = []string{sha(9)} }},
		{"key listed twice", func(r *Root) {
			r.Roles.Root.KeyIDs = append(r.Roles.Root.KeyIDs, r.Roles.Root.KeyIDs[0])
		}},
		{"key id is not the key's", func(r *Root) {
			id, rk := NewRootKey(k.pub)
			delete(r.Keys, id)
			r.Keys[sha(9)] = rk
			r.Roles.Root.KeyIDs = []string{sha(9)}
		}},
		{"keytype", func(r *Root) {
			id := r.Roles.Root.KeyIDs[0]
			rk := r.Keys[id]
			rk.KeyType = "rsa"
			r.Keys[id] = rk
		}},
		{"short key", func(r *Root) {
			id := r.Roles.Root.KeyIDs[0]
			r.Keys[id] = RootKey{KeyType: "ed25519", Public: "AAAA"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRoot(1, []testKey{k}, 1, []testKey{m}, 1)
			if err := r.Validate(); err != nil {
				t.Fatalf("base root: %v", err)
			}
			tc.edit(r)
			if err := r.Validate(); !errors.Is(err, ErrRootInvalid) {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestRootSelfSigned(t *testing.T) {
	k, m := newTestKey(t), newTestKey(t)
	r := newRoot(1, []testKey{k}, 1, []testKey{m}, 1)
	if _, err := VerifySelfSigned(signRoot(t, r, k)); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifySelfSigned(signRoot(t, r, m)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("root signed by its manifest key only: %v", err)
	}
}

func TestRootExpiry(t *testing.T) {
	k := newTestKey(t)
	r := newRoot(1, []testKey{k}, 1, []testKey{k}, 1)
	if err := r.CheckExpiry(r.Expires.Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := r.CheckExpiry(r.Expires); !errors.Is(err, ErrRootExpired) {
		t.Fatalf("at expiry: %v", err)
	}
}

// rootServer serves a manifest and root files from memory, and counts
// requests per path.
type rootServer struct {
	mu    sync.Mutex
	files map[string][]byte
	codes map[string]int
	hits  map[string]int
}

func newRootServer(t *testing.T) (*rootServer, *httptest.Server) {
	rs := &rootServer{files: map[string][]byte{}, codes: map[string]int{}, hits: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		rs.hits[r.URL.Path]++
		if c := rs.codes[r.URL.Path]; c != 0 {
			w.WriteHeader(c)
			return
		}
		b, ok := rs.files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		etag := fmt.Sprintf(`"%x"`, sha256.Sum256(b))
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		_, _ = w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return rs, srv
}

func (rs *rootServer) put(path string, b []byte) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.files[path] = b
}

func (rs *rootServer) setCode(path string, code int) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.codes[path] = code
}

func manifestVersion(v uint64) string {
	return fmt.Sprintf("schema: 1\nversion: %d\nexpires: %s\n", v, now.Add(7*24*time.Hour).Format(time.RFC3339))
}

// rootSource is a Source with a root of trust over srv.
func rootSource(t *testing.T, srv *httptest.Server, provisioned []byte, dir string) (*Source, *RootTrust) {
	t.Helper()
	rt, err := LoadRootTrust(provisioned, filepath.Join(dir, "root.json"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewFetcher(FetcherConfig{URL: srv.URL + "/m/manifest.json", Timeout: 10 * time.Second, RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return &Source{Fetcher: f, Trust: Trust{Root: rt}, Store: &FileVersionStore{Path: filepath.Join(dir, "version.json")},
		Now: func() time.Time { return now }}, rt
}

// TestSourceRootRotation: hosts apply with K1; the publisher rotates to K2
// (revoking K1) with one file; then K1's manifests are refused and K2's
// accepted, and the trusted root survives a restart. On the keys-dir code
// a revoked key kept working until every host's keys dir was edited.
func TestSourceRootRotation(t *testing.T) {
	rk, k1, k2 := newTestKey(t), newTestKey(t), newTestKey(t)
	root1 := newRoot(1, []testKey{rk}, 1, []testKey{k1}, 1)
	root2 := newRoot(2, []testKey{rk}, 1, []testKey{k2}, 1)
	rs, srv := newRootServer(t)
	dir := t.TempDir()
	src, rt := rootSource(t, srv, signRoot(t, root1, rk), dir)
	var updates []*RootUpdate
	src.OnRootUpdate = func(u *RootUpdate) { updates = append(updates, u) }
	ctx := context.Background()

	rs.put("/m/manifest.json", sign(t, manifestVersion(1), k1))
	if res, err := src.Poll(ctx); err != nil || res.Manifest.Version != 1 {
		t.Fatalf("poll with K1 under root 1: %v", err)
	}
	if rs.hits["/m/root.2.json"] != 1 {
		t.Fatalf("root.2.json fetched %d times, want 1 per poll", rs.hits["/m/root.2.json"])
	}

	rs.put("/m/root.2.json", signRoot(t, root2, rk))
	rs.put("/m/manifest.json", sign(t, manifestVersion(2), k1))
	res, err := src.Poll(ctx)
	if !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("K1 manifest after the rotation: %v", err)
	}
	if res.Manifest != nil {
		t.Fatalf("the K1 manifest stays in force after K1 was revoked: version %d", res.Manifest.Version)
	}
	if rt.Current().Version != 2 || len(updates) != 1 || !updates[0].ManifestKeysChanged {
		t.Fatalf("trusted root version %d, updates %d", rt.Current().Version, len(updates))
	}

	rs.put("/m/manifest.json", sign(t, manifestVersion(3), k2))
	if res, err := src.Poll(ctx); err != nil || res.Manifest.Version != 3 || res.Manifest.KeyIDs[0] != k2.id {
		t.Fatalf("K2 manifest: %v", err)
	}

	// A restart from the provisioned root 1 resumes at the persisted 2.
	src2, rt2 := rootSource(t, srv, signRoot(t, root1, rk), dir)
	if rt2.Current().Version != 2 {
		t.Fatalf("restarted at root version %d", rt2.Current().Version)
	}
	rs.put("/m/manifest.json", sign(t, manifestVersion(4), k1))
	if _, err := src2.Poll(ctx); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("K1 manifest after restart: %v", err)
	}
}

// TestSourceFastForwardRecovery: a manifest with version 2^64-1 signed
// with a leaked key locks hosts out of every later version; a root that
// rotates the manifest key resets the floor, explicitly and only then.
func TestSourceFastForwardRecovery(t *testing.T) {
	rk, leaked, k2 := newTestKey(t), newTestKey(t), newTestKey(t)
	root1 := newRoot(1, []testKey{rk}, 1, []testKey{leaked}, 1)
	rs, srv := newRootServer(t)
	dir := t.TempDir()
	src, _ := rootSource(t, srv, signRoot(t, root1, rk), dir)
	ctx := context.Background()

	rs.put("/m/manifest.json", sign(t, manifestVersion(math.MaxUint64), leaked))
	if _, err := src.Poll(ctx); err != nil {
		t.Fatalf("fast-forward manifest: %v", err)
	}
	rs.put("/m/manifest.json", sign(t, manifestVersion(5), leaked))
	if _, err := src.Poll(ctx); !errors.Is(err, ErrRollback) {
		t.Fatalf("normal version after the fast-forward: %v", err)
	}

	// A root rotation that keeps the manifest keys does not reset it.
	root2 := newRoot(2, []testKey{rk}, 1, []testKey{leaked}, 1)
	root2.Expires = root2.Expires.Add(time.Hour)
	rs.put("/m/root.2.json", signRoot(t, root2, rk))
	if _, err := src.Poll(ctx); !errors.Is(err, ErrRollback) {
		t.Fatalf("after a rotation that keeps the manifest keys: %v", err)
	}

	root3 := newRoot(3, []testKey{rk}, 1, []testKey{k2}, 1)
	rs.put("/m/root.3.json", signRoot(t, root3, rk))
	rs.put("/m/manifest.json", sign(t, manifestVersion(5), k2))
	res, err := src.Poll(ctx)
	if err != nil || res.Manifest.Version != 5 {
		t.Fatalf("normal version after the key rotation: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "version.json"))
	if err != nil || !strings.Contains(string(b), `"version":5`) {
		t.Fatalf("version floor %s (%v)", b, err)
	}
}

func TestSourceRootFailures(t *testing.T) {
	rk, k1, other := newTestKey(t), newTestKey(t), newTestKey(t)
	root1 := newRoot(1, []testKey{rk}, 1, []testKey{k1}, 1)
	ctx := context.Background()

	t.Run("root not signed by the trusted root keys", func(t *testing.T) {
		rs, srv := newRootServer(t)
		src, rt := rootSource(t, srv, signRoot(t, root1, rk), t.TempDir())
		rs.put("/m/manifest.json", sign(t, manifestVersion(1), other))
		rs.put("/m/root.2.json", signRoot(t, newRoot(2, []testKey{other}, 1, []testKey{other}, 1), other))
		if _, err := src.Poll(ctx); !errors.Is(err, ErrUnknownKey) || rt.Current().Version != 1 {
			t.Fatalf("forged root: %v (trusted version %d)", err, rt.Current().Version)
		}
		if rs.hits["/m/manifest.json"] != 0 {
			t.Fatal("manifest fetched after the root chain failed")
		}
	})
	t.Run("server error is not the end of the chain", func(t *testing.T) {
		rs, srv := newRootServer(t)
		src, _ := rootSource(t, srv, signRoot(t, root1, rk), t.TempDir())
		rs.put("/m/manifest.json", sign(t, manifestVersion(1), k1))
		rs.setCode("/m/root.2.json", http.StatusForbidden)
		if _, err := src.Poll(ctx); !errors.Is(err, ErrHTTPStatus) {
			t.Fatalf("403 for root.2.json: %v", err)
		}
	})
	t.Run("expired final root", func(t *testing.T) {
		rs, srv := newRootServer(t)
		old := newRoot(1, []testKey{rk}, 1, []testKey{k1}, 1)
		old.Expires = now.Add(-time.Hour)
		src, _ := rootSource(t, srv, signRoot(t, old, rk), t.TempDir())
		rs.put("/m/manifest.json", sign(t, manifestVersion(1), k1))
		if _, err := src.Poll(ctx); !errors.Is(err, ErrRootExpired) {
			t.Fatalf("expired root: %v", err)
		}
		// An expired intermediate root is fine: only the newest counts.
		rs.put("/m/root.2.json", signRoot(t, newRoot(2, []testKey{rk}, 1, []testKey{k1}, 1), rk))
		if _, err := src.Poll(ctx); err != nil {
			t.Fatalf("renewed root: %v", err)
		}
	})
	t.Run("older provisioned root does not roll back the persisted one", func(t *testing.T) {
		dir := t.TempDir()
		root2 := newRoot(2, []testKey{rk}, 1, []testKey{other}, 1)
		if err := os.WriteFile(filepath.Join(dir, "root.json"), signRoot(t, root2, rk), 0o644); err != nil {
			t.Fatal(err)
		}
		rt, err := LoadRootTrust(signRoot(t, root1, rk), filepath.Join(dir, "root.json"))
		if err != nil || rt.Current().Version != 2 {
			t.Fatalf("load: %v", err)
		}
	})
	t.Run("damaged persisted root is an error", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "root.json"), []byte("{"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadRootTrust(signRoot(t, root1, rk), filepath.Join(dir, "root.json")); err == nil {
			t.Fatal("damaged persisted root accepted")
		}
	})
	t.Run("read-only copy never persists", func(t *testing.T) {
		rs, srv := newRootServer(t)
		dir := t.TempDir()
		src, rt := rootSource(t, srv, signRoot(t, root1, rk), dir)
		src.Trust.Root = rt.ReadOnly()
		src.Store = ReadOnly(src.Store)
		rs.put("/m/root.2.json", signRoot(t, newRoot(2, []testKey{rk}, 1, []testKey{other}, 1), rk))
		rs.put("/m/manifest.json", sign(t, manifestVersion(1), other))
		if _, err := src.Poll(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "root.json")); !errors.Is(err, os.ErrNotExist) || rt.Current().Version != 1 {
			t.Fatalf("read-only walk persisted the root (%v) or moved the daemon's (%d)", err, rt.Current().Version)
		}
	})
}

// TestSourceRootExpiresUnderUnchangedManifest: a 304 does not keep a
// manifest in force past its root's expiry (the indefinite-freeze attack
// by a mirror that stops at the last root).
func TestSourceRootExpiresUnderUnchangedManifest(t *testing.T) {
	rk, k1 := newTestKey(t), newTestKey(t)
	root1 := newRoot(1, []testKey{rk}, 1, []testKey{k1}, 1)
	root1.Expires = now.Add(time.Hour)
	rs, srv := newRootServer(t)
	src, _ := rootSource(t, srv, signRoot(t, root1, rk), t.TempDir())
	clock := now
	src.Now = func() time.Time { return clock }
	rs.put("/m/manifest.json", sign(t, manifestVersion(1), k1))
	if _, err := src.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if res, err := src.Poll(context.Background()); err != nil || res.Status != http.StatusNotModified {
		t.Fatalf("unchanged poll: status %d err %v", res.Status, err)
	}
	clock = now.Add(2 * time.Hour)
	if res, err := src.Poll(context.Background()); !errors.Is(err, ErrRootExpired) || res.Status != http.StatusNotModified {
		t.Fatalf("unchanged poll after the root expired: status %d err %v", res.Status, err)
	}
}

// TestSourceRootSlowRetrieval: a server that stalls a root file cannot
// hold the poll past its deadline.
func TestSourceRootSlowRetrieval(t *testing.T) {
	rk, k1 := newTestKey(t), newTestKey(t)
	root1 := newRoot(1, []testKey{rk}, 1, []testKey{k1}, 1)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("{"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	rt, err := LoadRootTrust(signRoot(t, root1, rk), "")
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewFetcher(FetcherConfig{URL: srv.URL + "/manifest.json", Timeout: 200 * time.Millisecond, IdleTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	src := &Source{Fetcher: f, Trust: Trust{Root: rt}, Store: &MemVersionStore{}, Now: func() time.Time { return now }}
	done := make(chan error, 1)
	go func() { _, err := src.Poll(context.Background()); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("stalled root file: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a stalled root file held the poll for 30 s (deadline 200 ms)")
	}
}

// TestSourceRootHostileAnswers: whatever a server answers for the next
// root, other than a 404 or a valid successor, the poll fails, the trusted
// root stays and so does the manifest in force.
func TestSourceRootHostileAnswers(t *testing.T) {
	rk, k1 := newTestKey(t), newTestKey(t)
	root1 := newRoot(1, []testKey{rk}, 1, []testKey{k1}, 1)
	for _, code := range hostileStatuses {
		if code == http.StatusNotFound || code == http.StatusTooManyRequests || code >= 500 {
			continue // 404 ends the chain; 429 and 5xx are retried (tested by the client's tests)
		}
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			rs, srv := newRootServer(t)
			src, rt := rootSource(t, srv, signRoot(t, root1, rk), t.TempDir())
			rs.put("/m/manifest.json", sign(t, manifestVersion(1), k1))
			if _, err := src.Poll(context.Background()); err != nil {
				t.Fatal(err)
			}
			before := src.Current()
			if code == 200 {
				rs.put("/m/root.2.json", []byte(`{"payloadType":"`+RootPayloadType+`","payload":"e30=","signatures":[]}`))
			} else {
				rs.setCode("/m/root.2.json", code)
			}
			res, err := src.Poll(context.Background())
			if err == nil || src.Current() != before || res.Manifest != before || rt.Current().Version != 1 {
				t.Fatalf("root.2.json answered %d: err %v, in force %p (was %p), root version %d", code, err, src.Current(), before, rt.Current().Version)
			}
		})
	}
}

// TestRootTrustSharedFile: two sources on one state dir (a reload while the
// old configuration still polls): the rotation resets the floor once; the
// other source picks the persisted root up without a second reset, which
// would let the floor fall back under a manifest already accepted.
func TestRootTrustSharedFile(t *testing.T) {
	rk, k1, k2 := newTestKey(t), newTestKey(t), newTestKey(t)
	root1 := newRoot(1, []testKey{rk}, 1, []testKey{k1}, 1)
	rs, srv := newRootServer(t)
	dir := t.TempDir()
	a, _ := rootSource(t, srv, signRoot(t, root1, rk), dir)
	b, rtB := rootSource(t, srv, signRoot(t, root1, rk), dir)
	var resets int
	for _, s := range []*Source{a, b} {
		s.OnRootUpdate = func(u *RootUpdate) {
			if u.ManifestKeysChanged {
				resets++
			}
		}
	}
	rs.put("/m/manifest.json", sign(t, manifestVersion(1), k1))
	if _, err := b.Poll(context.Background()); err != nil || b.Current() == nil {
		t.Fatalf("second source under root 1: %v", err)
	}
	rs.put("/m/root.2.json", signRoot(t, newRoot(2, []testKey{rk}, 1, []testKey{k2}, 1), rk))
	rs.put("/m/manifest.json", sign(t, manifestVersion(9), k2))
	if res, err := a.Poll(context.Background()); err != nil || res.Manifest.Version != 9 {
		t.Fatalf("first source: %v", err)
	}
	rs.put("/m/manifest.json", sign(t, manifestVersion(8), k2))
	if res, err := b.Poll(context.Background()); !errors.Is(err, ErrRollback) || res.Manifest != nil {
		t.Fatalf("second source accepted version 8 after 9 (%v) or kept the K1 manifest in force (%+v)", err, res.Manifest)
	}
	if resets != 1 || rtB.Current().Version != 2 {
		t.Fatalf("%d floor resets, second source at root version %d", resets, rtB.Current().Version)
	}
}
