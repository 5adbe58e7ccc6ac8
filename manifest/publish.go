package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// ErrOutsidePublishDir is an RPM that is not under the directory the
// manifest is published from: no relative URL reaches it.
var ErrOutsidePublishDir = errors.New("RPM is outside the directory the manifest is published from")

// RelativeURL is the URL, relative to a manifest published from dir, of
// the file rpm under it: what a host resolves against the manifest's URL.
func RelativeURL(dir, rpm string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	f, err := filepath.Abs(rpm)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(d, f)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%w: %s is not under %s", ErrOutsidePublishDir, f, d)
	}
	// A first segment with a colon would read as a scheme: URL adds "./".
	return (&url.URL{Path: filepath.ToSlash(rel)}).String(), nil
}

// FileURL is the file URL of a local manifest, the base its relative URLs
// resolve against.
func FileURL(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}).String(), nil
}

// CheckFiles checks the RPMs of a manifest published from the local file
// manifestPath: each patch URL resolved against it as a host resolves it,
// and, where that is a local file (a relative URL, or a file URL), the
// file there must exist with the pinned size and sha256. An http(s) URL
// is resolved only: its server is not this file system. Each problem
// names the patch and the resolved path.
func CheckFiles(m *Manifest, manifestPath string) []string {
	base, err := FileURL(manifestPath)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", manifestPath, err)}
	}
	var problems []string
	for i := range m.Patches {
		p := &m.Patches[i]
		u, err := ResolveURL(base, p)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		path, ok, err := filePath(u)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: %v", p.ID(), err))
			continue
		case !ok:
			continue
		}
		if err := checkFile(path, p.Size, p.SHA256); err != nil {
			problems = append(problems, fmt.Sprintf("%s: url %s resolves to %s: %v", p.ID(), p.URL, path, err))
		}
	}
	return problems
}

func checkFile(path string, size int64, sum string) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errors.New("no such file")
		}
		return err
	}
	defer f.Close()
	h := sha256.New()
	// One byte more than pinned tells a longer file from the pinned one
	// without reading a huge file whole.
	n, err := io.Copy(h, io.LimitReader(f, size+1))
	if err != nil {
		return err
	}
	if n != size {
		if n > size {
			return fmt.Errorf("more than the pinned %d bytes", size)
		}
		return fmt.Errorf("%d bytes, the manifest pins %d", n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("sha256 %s, the manifest pins %s", got, sum)
	}
	return nil
}
