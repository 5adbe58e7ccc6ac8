package manifest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
