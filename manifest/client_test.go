package manifest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// trustServer writes srv's certificate as a CA bundle.
func trustServer(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestClientRedirects(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("plain")) }))
	defer plain.Close()
	var tlsURL string
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/down":
			http.Redirect(w, r, plain.URL+"/x", http.StatusFound)
		case "/same":
			http.Redirect(w, r, tlsURL+"/target", http.StatusFound)
		case "/loop":
			http.Redirect(w, r, tlsURL+"/loop", http.StatusFound)
		default:
			w.Write([]byte("tls"))
		}
	}))
	defer tlsSrv.Close()
	tlsURL = tlsSrv.URL
	c, err := NewClient(ClientConfig{CABundle: trustServer(t, tlsSrv), RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Both ways of reading a body refuse the step down from https.
	if _, err := c.Fetch(ctx, tlsSrv.URL+"/down", Validators{}, 1024); !errors.Is(err, ErrInsecureRedirect) {
		t.Fatalf("fetch through an https->http redirect: %v", err)
	}
	var buf bytes.Buffer
	if _, err := c.Download(ctx, tlsSrv.URL+"/down", &buf, 1024); !errors.Is(err, ErrInsecureRedirect) || buf.Len() != 0 {
		t.Fatalf("download through an https->http redirect: %v (%q)", err, buf.String())
	}
	if n, err := c.Download(ctx, tlsSrv.URL+"/same", &buf, 1024); err != nil || buf.String() != "tls" || n != 3 {
		t.Fatalf("https->https redirect: %d %v %q", n, err, buf.String())
	}
	if _, err := c.Download(ctx, tlsSrv.URL+"/loop", &bytes.Buffer{}, 1024); err == nil || !strings.Contains(err.Error(), "redirects") {
		t.Fatalf("redirect loop: %v", err)
	}
	// http->https is an upgrade and fine.
	up := httptest.NewServer(http.RedirectHandler(tlsSrv.URL+"/target", http.StatusMovedPermanently))
	defer up.Close()
	if r, err := c.Fetch(ctx, up.URL, Validators{}, 1024); err != nil || string(r.Body) != "tls" {
		t.Fatalf("http->https redirect: %v", err)
	}
}

// A body that stops half-way is abandoned after the idle timeout, not
// after the whole deadline; one that trickles is not.
func TestClientIdleTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stall":
			w.Header().Set("Content-Length", "1000")
			w.Write(make([]byte, 100))
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/noheaders":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/trickle":
			for range 6 {
				w.Write([]byte("x"))
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond)
			}
		}
	}))
	defer srv.Close()
	c, err := NewClient(ClientConfig{IdleTimeout: 200 * time.Millisecond, RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/stall", "/noheaders"} {
		start := time.Now()
		var buf bytes.Buffer
		_, err := c.Download(context.Background(), srv.URL+path, &buf, 1<<20)
		if err == nil {
			t.Fatalf("%s: no error", path)
		}
		if path == "/stall" && !errors.Is(err, ErrIdle) {
			t.Fatalf("%s: %v, want ErrIdle", path, err)
		}
		// Loose bound: the idle timeout is 0.2 s, the test's own limit 10x.
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("%s: gave up after %s", path, d)
		}
	}
	var buf bytes.Buffer
	if n, err := c.Download(context.Background(), srv.URL+"/trickle", &buf, 1<<20); err != nil || n != 6 {
		t.Fatalf("trickle (each byte within the idle timeout): %d %v", n, err)
	}
	// Cancelling the caller's context stops a stalled download at once.
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := c.Download(ctx, srv.URL+"/stall", &bytes.Buffer{}, 1<<20); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled download: %v", err)
	}
}

func TestClientDownloadLimits(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Write(make([]byte, 5000))
		case "/chunked":
			for range 5 {
				w.Write(make([]byte, 1000))
				w.(http.Flusher).Flush()
			}
		case "/gone":
			http.Error(w, "gone", http.StatusGone)
		default:
			w.Write([]byte("rpm"))
		}
	}))
	defer srv.Close()
	c, err := NewClient(ClientConfig{RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/big", "/chunked"} {
		if _, err := c.Download(context.Background(), srv.URL+p, &bytes.Buffer{}, 4096); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("%s: %v, want ErrTooLarge", p, err)
		}
	}
	if _, err := c.Download(context.Background(), srv.URL+"/gone", &bytes.Buffer{}, 4096); !errors.Is(err, ErrHTTPStatus) || !strings.Contains(err.Error(), "410") {
		t.Fatalf("410: %v", err)
	}
	// Credentials in a URL never reach an error message.
	u := strings.Replace(srv.URL, "http://", "http://user:s3cret@", 1) + "/gone"
	if _, err := c.Download(context.Background(), u, &bytes.Buffer{}, 4096); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error shows the password: %v", err)
	}
}

// A 304 to a host that has no manifest (it sent no validators) is an error,
// not a crash.
func TestSourceNotModifiedWithoutCache(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotModified) }))
	defer srv.Close()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	f, err := NewFetcher(FetcherConfig{URL: srv.URL + "/m.json"})
	if err != nil {
		t.Fatal(err)
	}
	s := &Source{Fetcher: f, Trust: Trust{Keys: Keyring{KeyID(pub): pub}, Threshold: 1}, Store: &MemVersionStore{}}
	res, err := s.Poll(context.Background())
	if !errors.Is(err, ErrNoCache) || res.Manifest != nil {
		t.Fatalf("poll: %+v %v", res, err)
	}
}
