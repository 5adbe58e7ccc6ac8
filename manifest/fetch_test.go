package manifest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestFetcherStatusAndLimits(t *testing.T) {
	var calls atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Last-Modified", "Wed, 25 Nov 2026 10:00:00 GMT")
		w.Write([]byte("body"))
	})
	mux.HandleFunc("/flaky", func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) < 3 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("finally"))
	})
	mux.HandleFunc("/missing", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { w.Write(make([]byte, 5000)) })
	mux.HandleFunc("/bigchunked", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 5; i++ {
			w.Write(make([]byte, 1000))
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	newF := func(path string) *Fetcher {
		f, err := NewFetcher(FetcherConfig{URL: srv.URL + path, Retries: 3, RetryWait: time.Millisecond, MaxSize: 4096, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	ctx := context.Background()

	r, err := newF("/ok").Fetch(ctx, Validators{})
	if err != nil || string(r.Body) != "body" || r.Validators.ETag != `"v1"` || r.Validators.LastModified == "" {
		t.Fatalf("200: %+v %v", r, err)
	}
	r, err = newF("/ok").Fetch(ctx, r.Validators)
	if err != nil || !r.NotModified || r.Validators.ETag != `"v1"` {
		t.Fatalf("304: %+v %v", r, err)
	}
	r, err = newF("/flaky").Fetch(ctx, Validators{})
	if err != nil || string(r.Body) != "finally" || calls.Load() != 3 {
		t.Fatalf("retries: %+v %v after %d calls", r, err, calls.Load())
	}
	if _, err = newF("/missing").Fetch(ctx, Validators{}); !errors.Is(err, ErrHTTPStatus) || !strings.Contains(err.Error(), "404") {
		t.Fatalf("404: %v", err)
	}
	for _, p := range []string{"/big", "/bigchunked"} {
		if _, err = newF(p).Fetch(ctx, Validators{}); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("%s: %v, want ErrTooLarge", p, err)
		}
	}
	f, _ := NewFetcher(FetcherConfig{URL: srv.URL + "/slow", Timeout: 100 * time.Millisecond})
	if _, err = f.Fetch(ctx, Validators{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow server: %v, want deadline exceeded", err)
	}
	if _, err := NewFetcher(FetcherConfig{URL: "ftp://x/y"}); err == nil {
		t.Fatal("ftp URL accepted")
	}
	if _, err := NewFetcher(FetcherConfig{URL: srv.URL, CABundle: "/nonexistent.pem"}); err == nil {
		t.Fatal("missing CA bundle accepted")
	}
}

func TestFetcherCABundle(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("tls")) }))
	defer srv.Close()
	// Without the test CA the certificate is not trusted.
	f, _ := NewFetcher(FetcherConfig{URL: srv.URL, Timeout: 2 * time.Second})
	if _, err := f.Fetch(context.Background(), Validators{}); err == nil {
		t.Fatal("untrusted certificate accepted")
	}
	bundle := writeCert(t, srv)
	f, err := NewFetcher(FetcherConfig{URL: srv.URL, CABundle: bundle, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := f.Fetch(context.Background(), Validators{}); err != nil || string(r.Body) != "tls" {
		t.Fatalf("with CA bundle: %v", err)
	}
}

func TestNextInterval(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	lo, hi := time.Hour, time.Duration(0)
	for i := 0; i < 1000; i++ {
		d := NextInterval(10*time.Minute, 0.2, r)
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 8*time.Minute || hi > 12*time.Minute || hi-lo < 3*time.Minute {
		t.Fatalf("jittered range [%v,%v], want spread within [8m,12m]", lo, hi)
	}
	if NextInterval(time.Minute, 0, r) != time.Minute {
		t.Fatal("zero jitter must give the interval")
	}
}

func TestSourcePollCacheAndReject(t *testing.T) {
	k := newTestKey(t)
	var body atomic.Value
	body.Store(sign(t, validPayload(), k))
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		b := body.Load().([]byte)
		etag := `"` + sha(len(b)) + `"`
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", etag)
		w.Write(b)
	}))
	defer srv.Close()
	dir := t.TempDir()
	store := &FileVersionStore{Path: dir + "/v.json"}
	mk := func() *Source {
		f, err := NewFetcher(FetcherConfig{URL: srv.URL + "/m.json", RetryWait: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return &Source{Fetcher: f, Trust: Trust{Keys: keyring(k), Threshold: 1}, Store: store, Cache: testCache(dir), Now: func() time.Time { return now }}
	}
	s := mk()
	ctx := context.Background()
	res, err := s.Poll(ctx)
	if err != nil || !res.Changed || res.Manifest.Version != 7 {
		t.Fatalf("first poll: %+v %v", res, err)
	}
	res, err = s.Poll(ctx)
	if err != nil || res.Changed || res.Status != http.StatusNotModified || res.Manifest.Version != 7 {
		t.Fatalf("second poll: %+v %v", res, err)
	}
	// A tampered body is rejected and the manifest in force stays.
	tampered := mutateEnvelope(t, sign(t, validPayload(), k), func(m map[string]any) { m["payload"] = m["payload"].(string)[:8] + "AAAA" + m["payload"].(string)[12:] })
	body.Store(tampered)
	res, err = s.Poll(ctx)
	if err == nil || res.Manifest == nil || res.Manifest.Version != 7 {
		t.Fatalf("tampered poll: %+v %v", res, err)
	}
	// A restarted agent loads the cache offline and polls conditionally.
	body.Store(sign(t, validPayload(), k))
	s2 := mk()
	if err := s2.LoadCache(); err != nil || s2.Current() == nil {
		t.Fatalf("LoadCache: %v", err)
	}
	res, err = s2.Poll(ctx)
	if err != nil || res.Status != http.StatusNotModified {
		t.Fatalf("poll after restart: %+v %v", res, err)
	}
	// Expiry is noticed on 304 too.
	s2.Now = func() time.Time { return time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC) }
	if _, err := s2.Poll(ctx); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired on 304: %v", err)
	}
}

// testCache is a Source's cache in dir.
func testCache(dir string) CacheFiles {
	return CacheFiles{Envelope: filepath.Join(dir, "manifest.dsse.json"), Validators: filepath.Join(dir, "manifest.validators.json")}
}

// A manifest whose expiry is further out than Trust.MaxExpiry (against the
// host's clock at fetch time; the payload has no signing time) is a failed
// poll: the manifest in force stays, and the refused version does not
// raise the anti-rollback floor. One at exactly the limit is accepted.
func TestSourceRefusesFarExpiry(t *testing.T) {
	k := newTestKey(t)
	payload := func(version int, expires time.Time) string {
		p := strings.Replace(validPayload(), "version: 7", fmt.Sprintf("version: %d", version), 1)
		return strings.Replace(p, "expires: 2026-12-31T00:00:00Z", "expires: "+expires.UTC().Format(time.RFC3339), 1)
	}
	var body atomic.Value
	body.Store(sign(t, payload(7, now.Add(10*24*time.Hour)), k))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body.Load().([]byte)) }))
	defer srv.Close()
	f, err := NewFetcher(FetcherConfig{URL: srv.URL + "/m.json", RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	store := &FileVersionStore{Path: t.TempDir() + "/v.json"}
	s := &Source{Fetcher: f, Trust: Trust{Keys: keyring(k), Threshold: 1, MaxExpiry: 720 * time.Hour}, Store: store, Now: func() time.Time { return now }}
	ctx := context.Background()
	if res, err := s.Poll(ctx); err != nil || res.Manifest.Version != 7 {
		t.Fatalf("first poll: %+v %v", res, err)
	}
	far := now.AddDate(100, 0, 0)
	body.Store(sign(t, payload(8, far), k))
	res, err := s.Poll(ctx)
	if !errors.Is(err, ErrExpiryTooFar) {
		t.Fatalf("100-year expiry: err %v, want ErrExpiryTooFar", err)
	}
	for _, want := range []string{far.Format(time.RFC3339), now.Format(time.RFC3339), "720h0m0s", "manifest.max_expiry"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if res.Manifest == nil || res.Manifest.Version != 7 || s.Current().Version != 7 {
		t.Fatalf("manifest in force after refusal: %+v", res.Manifest)
	}
	if h, _ := store.Highest(); h != 7 {
		t.Fatalf("refused version raised the floor to %d", h)
	}
	body.Store(sign(t, payload(9, now.Add(720*time.Hour)), k))
	if res, err := s.Poll(ctx); err != nil || res.Manifest.Version != 9 {
		t.Fatalf("expiry at the limit: %+v %v", res, err)
	}
}
