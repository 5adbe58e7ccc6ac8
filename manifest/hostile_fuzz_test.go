package manifest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// hostileResp is one scripted answer of a hostile server. Its fuzz
// encoding is fixed-layout (see decodeScript) so seeds are easy to write.
type hostileResp struct {
	status, flags, body byte
	contentLength       uint16
	etag, lastMod, loc  string
	raw                 string
}

// Flags of a scripted answer.
const (
	hETag byte = 1 << iota
	hLastMod
	hContentLength // a Content-Length that may lie
	hLocation
	hRetryAfter
)

// Body choices; anything else is the raw bytes from the input.
const (
	bodyRaw byte = iota
	bodyNewer
	bodyOlder
	bodyCached
	bodyTruncated
	bodyChoices
)

var hostileStatuses = []int{200, 304, 301, 302, 303, 307, 308, 204, 206, 404, 429, 500, 503}

// code maps the status byte to a status: the interesting ones, else any
// final status (a 1xx is informational, not an answer).
func (r hostileResp) code() int {
	if int(r.status) < len(hostileStatuses) {
		return hostileStatuses[r.status]
	}
	return 200 + int(r.status)*13%400
}

// encode is decodeScript's inverse, for seeds.
func encodeScript(cached bool, rs ...hostileResp) []byte {
	var b []byte
	if cached {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	for _, r := range rs {
		b = append(b, r.status, r.flags, r.body)
		b = binary.BigEndian.AppendUint16(b, r.contentLength)
		for _, s := range []string{r.etag, r.lastMod, r.loc, r.raw} {
			b = append(b, byte(len(s)))
			b = append(b, s...)
		}
	}
	return b
}

// maxHostileResps bounds one input's answers (and so its cost).
const maxHostileResps = 8

func decodeScript(b []byte) (cached bool, rs []hostileResp) {
	in := &cursor{b: b}
	cached = in.byte()&1 == 1
	for len(in.b) > 0 && len(rs) < maxHostileResps {
		r := hostileResp{status: in.byte(), flags: in.byte(), body: in.byte()}
		r.contentLength = uint16(in.byte())<<8 | uint16(in.byte())
		r.etag, r.lastMod, r.loc, r.raw = in.str(), in.str(), in.str(), in.str()
		rs = append(rs, r)
	}
	return cached, rs
}

type cursor struct{ b []byte }

func (c *cursor) byte() byte {
	if len(c.b) == 0 {
		return 0
	}
	v := c.b[0]
	c.b = c.b[1:]
	return v
}

func (c *cursor) str() string {
	n := min(int(c.byte()), len(c.b))
	s := string(c.b[:n])
	c.b = c.b[n:]
	return s
}

// hostileServer answers each request with the next scripted answer; when
// the script runs out, 503.
type hostileServer struct {
	mu     sync.Mutex
	script []hostileResp
	bodies [bodyChoices][]byte
}

func (h *hostileServer) load(rs []hostileResp) {
	h.mu.Lock()
	h.script = rs
	h.mu.Unlock()
}

func (h *hostileServer) next() (hostileResp, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.script) == 0 {
		return hostileResp{}, false
	}
	r := h.script[0]
	h.script = h.script[1:]
	return r, true
}

func (h *hostileServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	r, ok := h.next()
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	body := []byte(r.raw)
	if c := r.body % bodyChoices; c != bodyRaw {
		body = h.bodies[c]
	}
	hd := w.Header()
	set := func(flag byte, k, v string) {
		if r.flags&flag != 0 {
			hd.Set(k, v)
		}
	}
	set(hETag, "ETag", r.etag)
	set(hLastMod, "Last-Modified", r.lastMod)
	set(hContentLength, "Content-Length", strconv.Itoa(int(r.contentLength)))
	// Only paths on this server: the fuzzer must not send the client to
	// another host (a DNS lookup, a hang).
	set(hLocation, "Location", "/"+strings.TrimLeft(r.loc, `/\`))
	set(hRetryAfter, "Retry-After", r.etag) // the ETag's bytes, as any string
	w.WriteHeader(r.code())
	w.Write(body) //nolint:errcheck // the client may be gone; that is the point
}

// hostileEnv is what every input shares: one server, the genuine signed
// manifests it may serve, and one client, as the daemon has one.
type hostileEnv struct {
	hs     *hostileServer
	url    string
	client *Client
	key    testKey
	now    time.Time
}

func newHostileEnv(tb testing.TB) *hostileEnv {
	e := &hostileEnv{hs: &hostileServer{}, key: newTestKey(tb), now: time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)}
	payload := func(v int) string {
		return strings.Replace(validPayload(), "version: 7", "version: "+strconv.Itoa(v), 1)
	}
	b := &e.hs.bodies
	b[bodyCached], b[bodyNewer], b[bodyOlder] = sign(tb, payload(5), e.key), sign(tb, payload(6), e.key), sign(tb, payload(4), e.key)
	b[bodyTruncated] = b[bodyNewer][:len(b[bodyNewer])/2]
	srv := httptest.NewUnstartedServer(e.hs)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	tb.Cleanup(srv.Close)
	e.url = srv.URL
	// Short timeouts so a stalled answer fails fast; no retries (their
	// backoff is time).
	c, err := NewClient(ClientConfig{IdleTimeout: 500 * time.Millisecond, RetryWait: time.Millisecond})
	if err != nil {
		tb.Fatal(err)
	}
	e.client = c
	return e
}

// run plays one input: a source (with the version 5 manifest cached, or
// nothing), two polls and a download; it returns the source.
func (e *hostileEnv) run(t *testing.T, in []byte) *Source {
	cached, script := decodeScript(in)
	e.hs.load(script)
	dir := t.TempDir()
	cache := CacheFiles{Envelope: filepath.Join(dir, "manifest.dsse.json"), Validators: filepath.Join(dir, "validators.json")}
	fetcher, err := NewFetcher(FetcherConfig{URL: e.url + "/manifest.json", Timeout: 2 * time.Second, Client: e.client})
	if err != nil {
		t.Fatal(err)
	}
	s := &Source{Fetcher: fetcher, Trust: Trust{Keys: keyring(e.key), Threshold: 1}, Store: &MemVersionStore{}, Cache: cache,
		Now: func() time.Time { return e.now }}
	if cached {
		os.WriteFile(cache.Envelope, e.hs.bodies[bodyCached], 0o644)
		os.WriteFile(cache.Validators, []byte(`{"etag":"\"5\""}`), 0o644)
		if err := s.LoadCache(); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		pollOnce(t, s, e.hs)
	}
	download(t, e.client, e.url+"/rpm")
	return s
}

// hostileSeeds are shapes worth starting from.
var hostileSeeds = [][]byte{
	// 304 to a host with no cache (once a nil dereference).
	encodeScript(false, hostileResp{status: 1, flags: hETag, etag: `"x"`}),
	// unchanged, then a newer genuine manifest with validators.
	encodeScript(true, hostileResp{status: 1}, hostileResp{status: 0, body: bodyNewer, flags: hETag | hLastMod, etag: `"6"`, lastMod: "Mon, 30 Nov 2026 00:00:00 GMT"}),
	// a redirect to an older genuine manifest (rollback).
	encodeScript(true, hostileResp{status: 3, flags: hLocation, loc: "m2"}, hostileResp{status: 0, body: bodyOlder}),
	// a truncated body, and a Content-Length that promises more than comes.
	encodeScript(true, hostileResp{status: 0, body: bodyTruncated}, hostileResp{status: 0, flags: hContentLength, contentLength: 65535, raw: "short"}),
	// a redirect aimed off the server (kept on it), then the manifest.
	encodeScript(false, hostileResp{status: 6, flags: hLocation, loc: "//evil.example/x"}, hostileResp{status: 0, body: bodyCached}),
	// 429 with a huge Retry-After, then a forged body.
	encodeScript(true, hostileResp{status: 10, flags: hRetryAfter, etag: "99999"}, hostileResp{status: 200, raw: "{}"}),
}

// FuzzHostilePoll: whatever a server (or anything on the path) answers,
// in whatever order (statuses, validators, lying Content-Length, redirects
// on the same server, bodies forged, truncated, older or newer), polling
// and downloading neither panic nor hang, and a failed poll leaves the
// verified manifest in force and its cache files untouched.
func FuzzHostilePoll(f *testing.F) {
	e := newHostileEnv(f)
	for _, s := range hostileSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) { e.run(t, in) })
}

// The harness can accept: a genuine newer manifest replaces the cached one
// (else the fuzz target would only ever see failures).
func TestHostileHarnessAccepts(t *testing.T) {
	e := newHostileEnv(t)
	if s := e.run(t, hostileSeeds[1]); s.Current() == nil || s.Current().Version != 6 {
		t.Fatalf("in force: %+v", s.Current())
	}
	if s := e.run(t, hostileSeeds[0]); s.Current() != nil {
		t.Fatalf("in force after a 304 with no cache: %+v", s.Current())
	}
}

// pollOnce polls and checks what a poll may leave behind.
func pollOnce(t *testing.T, s *Source, hs *hostileServer) {
	before := s.Current()
	envBefore, _ := os.ReadFile(s.Cache.Envelope)
	valBefore, _ := os.ReadFile(s.Cache.Validators)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := s.Poll(ctx)
	if ctx.Err() != nil {
		t.Fatalf("poll hung until the test's deadline: %v", err)
	}
	envAfter, _ := os.ReadFile(s.Cache.Envelope)
	if err != nil {
		valAfter, _ := os.ReadFile(s.Cache.Validators)
		if s.Current() != before || res.Manifest != before || !bytes.Equal(envBefore, envAfter) || !bytes.Equal(valBefore, valAfter) {
			t.Fatalf("failed poll (%v) replaced the manifest in force or its cache", err)
		}
		return
	}
	cur := s.Current()
	if cur == nil || res.Manifest != cur {
		t.Fatalf("successful poll with no manifest in force: %+v", res)
	}
	if cur == before {
		return
	}
	// A new manifest in force can only be a genuine one, cached byte for
	// byte, and never older than the one it replaced.
	if !genuine(envAfter, hs) {
		t.Fatalf("accepted a body that is no signed manifest: %q", envAfter)
	}
	if before != nil && cur.Version < before.Version {
		t.Fatalf("version went back from %d to %d", before.Version, cur.Version)
	}
}

// genuine reports whether env is one of the signed manifests served.
func genuine(env []byte, hs *hostileServer) bool {
	for _, c := range []byte{bodyCached, bodyNewer, bodyOlder} {
		if bytes.Equal(env, hs.bodies[c]) {
			return true
		}
	}
	return false
}

// download fetches with a small limit: never more than the limit written,
// never a hang.
func download(t *testing.T, c *Client, url string) {
	const limit = 64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var buf bytes.Buffer
	n, err := c.Download(ctx, url, &buf, limit)
	if ctx.Err() != nil {
		t.Fatalf("download hung until the test's deadline: %v", err)
	}
	if int64(buf.Len()) != n || (err == nil && n > limit) {
		t.Fatalf("download wrote %d bytes, reported %d, limit %d, err %v", buf.Len(), n, limit, err)
	}
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("download: %v", err)
	}
}
