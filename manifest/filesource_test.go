package manifest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/limitfile"
)

func TestLocation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "m.json")
	os.WriteFile(file, []byte("{}"), 0o644)
	for _, tt := range []struct{ in, want, err string }{
		{"https://mirror.example/klp/manifest.json", "https://mirror.example/klp/manifest.json", ""},
		{"http://10.0.2.2:8080/m.json", "http://10.0.2.2:8080/m.json", ""},
		{dir, "file://" + dir + "/manifest.json", ""},
		{dir + "/", "file://" + dir + "/manifest.json", ""},
		{file, "file://" + file, ""},
		{"file://" + file, "file://" + file, ""},
		{"file://" + dir, "file://" + dir + "/manifest.json", ""},
		{"file://localhost" + file, "file://localhost" + file, ""},
		{"/not/there/yet.json", "file:///not/there/yet.json", ""},
		{"file://fileserver/srv/m.json", "", "local path"},
		{"relative/dir", "", "absolute path is required"},
		{"ftp://mirror/m.json", "", "absolute path is required"},
		{"https:///m.json", "", "no host"},
	} {
		got, err := Location(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Location(%q) = %q, %v; want an error with %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Location(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// RPM URLs resolve against a file manifest to files beside it; a manifest
// served over http(s) can never point the host at a local file.
func TestResolveURLSchemes(t *testing.T) {
	for _, tt := range []struct{ base, rpm, want string }{
		{"file:///srv/klp/manifest.json", "rpms/a.rpm", "file:///srv/klp/rpms/a.rpm"},
		{"file:///srv/klp/manifest.json", "https://mirror/a.rpm", "https://mirror/a.rpm"},
		{"https://mirror/klp/manifest.json", "rpms/a.rpm", "https://mirror/klp/rpms/a.rpm"},
		{"https://mirror/klp/manifest.json", "file:///etc/shadow", ""},
		{"file:///srv/klp/manifest.json", "file://host/a.rpm", ""},
	} {
		got, err := ResolveURL(tt.base, &Patch{Name: "p", Level: 1, URL: tt.rpm})
		if (tt.want == "") != (err != nil) || got != tt.want {
			t.Errorf("ResolveURL(%s, %s) = %q, %v; want %q", tt.base, tt.rpm, got, err, tt.want)
		}
	}
}

// A file source polls like a web server: the body, "not modified" while
// size and mtime stay, the new body after a change; limits hold.
func TestClientFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "manifest.json")
	os.WriteFile(p, []byte("one"), 0o644)
	c, err := NewClient(ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	u := "file://" + p
	r1, err := c.Fetch(ctx, u, Validators{}, 100)
	if err != nil || string(r1.Body) != "one" || r1.Validators.ETag == "" {
		t.Fatalf("first fetch: %+v %v", r1, err)
	}
	if r2, err := c.Fetch(ctx, u, r1.Validators, 100); err != nil || !r2.NotModified {
		t.Fatalf("unchanged: %+v %v", r2, err)
	}
	os.WriteFile(p, []byte("two!"), 0o644)
	later := time.Now().Add(time.Second)
	os.Chtimes(p, later, later)
	if r3, err := c.Fetch(ctx, u, r1.Validators, 100); err != nil || r3.NotModified || string(r3.Body) != "two!" {
		t.Fatalf("changed: %+v %v", r3, err)
	}
	if _, err := c.Fetch(ctx, u, Validators{}, 3); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := c.Fetch(ctx, "file://"+dir, Validators{}, 100); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a directory: %v", err)
	}
	var buf bytes.Buffer
	if n, err := c.Download(ctx, u, &buf, 4); err != nil || n != 4 || buf.String() != "two!" {
		t.Fatalf("download: %d %q %v", n, buf.String(), err)
	}
	if _, err := c.Download(ctx, u, &buf, 3); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("download over the limit: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Download(cctx, u, &buf, 4); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled download: %v", err)
	}
}

// Mutual TLS settings come in pairs and must load.
func TestClientCertConfig(t *testing.T) {
	if _, err := NewClient(ClientConfig{ClientCert: "/x.pem"}); !errors.Is(err, ErrClientCertPair) {
		t.Errorf("cert without key: %v", err)
	}
	if _, err := NewClient(ClientConfig{ClientCert: "/nonexistent.pem", ClientKey: "/nonexistent.key"}); err == nil || !strings.Contains(err.Error(), "client certificate") {
		t.Errorf("missing files: %v", err)
	}
}

// A directory that appears after the agent started (mounted later) is
// read as a directory source, not as a file of that name.
func TestFetcherDirectoryMountedLater(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mnt")
	f, err := NewFetcher(FetcherConfig{URL: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Fetch(context.Background(), Validators{}); err == nil {
		t.Fatal("fetch from a missing directory succeeded")
	}
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, DirManifest), []byte("envelope"), 0o644)
	res, err := f.Fetch(context.Background(), Validators{})
	if err != nil || string(res.Body) != "envelope" || f.URL() != "file://"+dir+"/manifest.json" {
		t.Fatalf("after the mount: %v %+v, URL %s", err, res, f.URL())
	}
}

// within runs f and fails the test if it has not returned in 5 s (the
// old code blocked for ever in open(2) of a FIFO: this fails, not hangs).
func within(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatalf("%s blocked", what)
		return nil
	}
}

// A FIFO at the manifest's, a root file's or an RPM's path in a directory
// source is refused at once: on the old code open(2) waited for a writer
// for ever, past every deadline, and the poll with it.
func TestFileSourceFIFO(t *testing.T) {
	rk, k1 := newTestKey(t), newTestKey(t)
	root1 := newRoot(1, []testKey{rk}, 1, []testKey{k1}, 1)
	for _, fifo := range []string{DirManifest, "root.2.json", "a.rpm"} {
		t.Run(fifo, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, DirManifest), sign(t, manifestVersion(1), k1), 0o644)
			os.WriteFile(filepath.Join(dir, "a.rpm"), []byte("rpm"), 0o644)
			os.Remove(filepath.Join(dir, fifo))
			if err := syscall.Mkfifo(filepath.Join(dir, fifo), 0o644); err != nil {
				t.Fatal(err)
			}
			rt, err := LoadRootTrust(signRoot(t, root1, rk), "")
			if err != nil {
				t.Fatal(err)
			}
			f, err := NewFetcher(FetcherConfig{URL: dir, Timeout: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			src := &Source{Fetcher: f, Trust: Trust{Root: rt}, Store: &MemVersionStore{}, Now: func() time.Time { return now }}
			err = within(t, "poll", func() error { _, err := src.Poll(context.Background()); return err })
			if fifo == "a.rpm" {
				if err != nil {
					t.Fatalf("poll beside a FIFO RPM: %v", err)
				}
				var buf bytes.Buffer
				err = within(t, "download", func() error {
					_, err := f.Client().Download(context.Background(), "file://"+filepath.Join(dir, "a.rpm"), &buf, 100)
					return err
				})
			}
			if !errors.Is(err, limitfile.ErrNotRegular) || !strings.Contains(err.Error(), "a FIFO") {
				t.Fatalf("got %v, want %v", err, limitfile.ErrNotRegular)
			}
		})
	}
}

// A directory source is read inside its tree: a symlink beside the
// manifest may name another file of the tree, not one outside it, and
// what such a file holds never reaches the error (status.json is
// world-readable). The old code followed the link and quoted the file.
func TestFileSourceConfinedToItsTree(t *testing.T) {
	k1 := newTestKey(t)
	secret := filepath.Join(t.TempDir(), "secret.json")
	os.WriteFile(secret, []byte(`{"payloadType":"s3cret-token","payload":"","signatures":[]}`), 0o600)
	for _, tt := range []struct{ name, link, want string }{
		{"inside", "manifest.v1.json", ""},
		{"absolute out", secret, "escapes"},
		{"relative out", "../" + filepath.Base(filepath.Dir(secret)) + "/secret.json", "escapes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(filepath.Dir(filepath.Dir(secret)), "src-"+strings.ReplaceAll(tt.name, " ", "-"))
			os.Mkdir(dir, 0o755)
			os.WriteFile(filepath.Join(dir, "manifest.v1.json"), sign(t, manifestVersion(1), k1), 0o644)
			os.Symlink(tt.link, filepath.Join(dir, DirManifest))
			f, err := NewFetcher(FetcherConfig{URL: dir})
			if err != nil {
				t.Fatal(err)
			}
			src := &Source{Fetcher: f, Trust: Trust{Keys: keyring(k1), Threshold: 1}, Store: &MemVersionStore{}, Now: func() time.Time { return now }}
			_, err = src.Poll(context.Background())
			if tt.want == "" {
				if err != nil {
					t.Fatalf("a link inside the tree: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("a link out of the tree: %v", err)
			}
		})
	}
}

// A body that fails verification is described, never quoted: the error
// reaches the journal and the world-readable status.json. The old code
// quoted member names, the payload type and key ids from the body.
func TestRejectionDoesNotQuoteTheBody(t *testing.T) {
	trust := Trust{Keys: keyring(newTestKey(t)), Threshold: 1}
	for _, tt := range []struct{ body, want string }{
		{`{"s3cretmember":1}`, "a member other than payloadType, payload and signatures (at byte offset "},
		{`{"payloadType":"s3cret","payload":"","signatures":[]}`, "another type (6 bytes)"},
		{"root:$6$s3cret:19000:0:99999:7:::", "not valid JSON (at byte offset 0)"},
		{`{"payloadType":"` + PayloadType + `","payload":"czNjcmV0","signatures":[{"keyid":"s3cret","sig":"AAAA"}]}`, "(1 malformed)"},
		{`{"signatures":{"s3cret":1}}`, "unexpected JSON { (at byte offset 14)"},
	} {
		_, err := trust.VerifyFor([]byte(tt.body), now, &MemVersionStore{}, "")
		if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v; want %q and nothing of the body", tt.body, err, tt.want)
		}
	}
}

// The host's own files on the daemon's path (the CA bundle, the client
// certificate and key, the keys dir's *.pub, the persisted root) are
// refused at once when one is a FIFO; the old code waited in open(2) for
// a writer, and the daemon's start or reload with it.
func TestLocalFilesFIFO(t *testing.T) {
	rk := newTestKey(t)
	root1 := signRoot(t, newRoot(1, []testKey{rk}, 1, []testKey{rk}, 1), rk)
	for _, tt := range []struct {
		name string
		read func(fifo string) error
	}{
		{"ca bundle", func(p string) error { _, err := NewClient(ClientConfig{CABundle: p}); return err }},
		{"client cert", func(p string) error { _, err := NewClient(ClientConfig{ClientCert: p, ClientKey: p}); return err }},
		{"keys dir", func(p string) error { _, err := LoadKeyring(filepath.Dir(p)); return err }},
		{"persisted root", func(p string) error { _, err := LoadRootTrust(root1, p); return err }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "k.pub")
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := within(t, tt.name, func() error { return tt.read(p) }); !errors.Is(err, limitfile.ErrNotRegular) {
				t.Fatalf("got %v, want %v", err, limitfile.ErrNotRegular)
			}
		})
	}
}
