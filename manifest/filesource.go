package manifest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/klp-agent/klp-agent/internal/limitfile"
)

// File sources serve air-gapped sites: the signed manifest and the RPMs on
// a local or mounted file system (a DVD, an NFS export, a directory
// rsynced from a mirror). Everything else is as over HTTP: the manifest
// must be signed and the RPMs' sha256 and size match its pins; RPM URLs
// relative to the manifest resolve to files beside it.

// DirManifest is the manifest's file name in a directory source.
const DirManifest = "manifest.json"

// ErrNotLocalFile is a file URL naming another host.
var ErrNotLocalFile = errors.New("file URL must name a local path")

// Location is the URL for a manifest location: an http(s) or file URL as
// it is; an absolute path as a file URL. A path (or file URL) that ends in
// "/" or names an existing directory means the DirManifest in it.
func Location(raw string) (string, error) {
	if strings.HasPrefix(raw, "/") {
		raw = (&url.URL{Scheme: "file", Path: raw}).String()
	}
	u, err := parseURL(raw)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return "", fmt.Errorf("%s: no host", redact(raw))
		}
		return raw, nil
	case "file":
		p, err := localPath(u)
		if err != nil {
			return "", err
		}
		if fi, err := os.Stat(p); strings.HasSuffix(u.Path, "/") || (err == nil && fi.IsDir()) {
			u.Path = filepath.Join(p, DirManifest)
		}
		return u.String(), nil
	}
	return "", fmt.Errorf("%s: an http(s) URL, a file:// URL or an absolute path is required", redact(raw))
}

// localPath is a file URL's path, which must be absolute and local.
func localPath(u *url.URL) (string, error) {
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("%w: %s", ErrNotLocalFile, redact(u.String()))
	}
	if !filepath.IsAbs(u.Path) {
		return "", fmt.Errorf("%w: %s is not absolute", ErrNotLocalFile, redact(u.String()))
	}
	return filepath.Clean(u.Path), nil
}

// filePath is the local path of a file URL; ok false for any other URL.
func filePath(raw string) (path string, ok bool, err error) {
	u, err := parseURL(raw)
	if err != nil || u.Scheme != "file" {
		return "", false, nil
	}
	p, err := localPath(u)
	return p, true, err
}

// fileValidators stand in for ETag: size and modification time, so an
// unchanged file is a "not modified" poll, as over HTTP.
func fileValidators(fi os.FileInfo) Validators {
	return Validators{ETag: fmt.Sprintf(`"file-%x-%x"`, fi.Size(), fi.ModTime().UnixNano())}
}

// openBeneath opens a file source's file for reading: inside the
// directory that holds it (a symlink there may name a file beside it, as
// "manifest.json -> manifest.v42.json"; one that leads out of the tree is
// refused, so a planted link cannot make root read /etc/shadow into an
// error message), without blocking (a FIFO or device is refused before a
// read could wait on it: see limitfile.Open), a regular file only.
func openBeneath(path string) (*os.File, os.FileInfo, error) {
	root, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, nil, err
	}
	defer root.Close()
	return limitfile.OpenIn(root, filepath.Base(path))
}

// fetchFile is Fetch for a file: the whole file, or NotModified when its
// size and mtime are those of prev. ctx ending stops it between reads.
func fetchFile(ctx context.Context, raw, path string, prev Validators, maxSize int64) (*FetchResult, error) {
	f, fi, err := openBeneath(path)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", redact(raw), err)
	}
	defer f.Close()
	v := fileValidators(fi)
	if prev.ETag != "" && prev.ETag == v.ETag {
		return &FetchResult{NotModified: true, Validators: prev, Status: 304}, nil
	}
	if fi.Size() > maxSize {
		return nil, fmt.Errorf("fetch %s: %w: %d bytes (limit %d)", redact(raw), ErrTooLarge, fi.Size(), maxSize)
	}
	body, err := io.ReadAll(io.LimitReader(ctxReader{ctx, f}, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: read: %w", redact(raw), err)
	}
	if int64(len(body)) > maxSize {
		return nil, fmt.Errorf("fetch %s: %w: over %d bytes", redact(raw), ErrTooLarge, maxSize)
	}
	return &FetchResult{Body: body, Validators: v, Status: 200}, nil
}

// downloadFile is Download for a file, under the same limit; ctx ending
// stops the copy between reads.
func downloadFile(ctx context.Context, raw, path string, w io.Writer, limit int64) (int64, error) {
	f, fi, err := openBeneath(path)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", redact(raw), err)
	}
	defer f.Close()
	if fi.Size() > limit {
		return 0, fmt.Errorf("GET %s: %w: %d bytes (limit %d)", redact(raw), ErrTooLarge, fi.Size(), limit)
	}
	n, err := io.Copy(w, io.LimitReader(ctxReader{ctx, f}, limit+1))
	if err != nil {
		return n, fmt.Errorf("GET %s: after %d bytes: %w", redact(raw), n, err)
	}
	if n > limit {
		return n, fmt.Errorf("GET %s: %w: over %d bytes", redact(raw), ErrTooLarge, limit)
	}
	return n, nil
}

// ctxReader stops reading once ctx ends (a rollback cancels a download).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
