// Package atomicfile writes files so that a crash or power loss at any
// point leaves either the old or the new content, never a torn file.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// tempName picks the temporary file's name beside path: random, so no one
// can plant something at it ahead of time (a variable for tests).
var tempName = func(path string) string {
	var b [8]byte
	rand.Read(b[:])
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+hex.EncodeToString(b[:])+".tmp")
}

// tempAttempts bounds retries when a random name is taken.
const tempAttempts = 10

// WriteFile replaces path with data: temp file in the same directory,
// fsync, rename, then fsync of the directory so the rename itself is
// durable. A symlink at path is replaced, never written through.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	f, err := createTemp(path, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	if err := fill(f, data, perm); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// createTemp creates a new temporary file for path. O_EXCL|O_NOFOLLOW:
// whatever already sits at the name (a file, a planted symlink) is never
// opened; another random name is tried instead.
func createTemp(path string, perm os.FileMode) (*os.File, error) {
	for range tempAttempts {
		f, err := os.OpenFile(tempName(path), os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, perm&0o600)
		if !errors.Is(err, fs.ErrExist) && !errors.Is(err, syscall.ELOOP) {
			return f, err
		}
	}
	return nil, fmt.Errorf("no free temporary name after %d attempts", tempAttempts)
}

// fill writes data, sets perm (past the umask) and syncs, then closes f.
func fill(f *os.File, data []byte, perm os.FileMode) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// SyncDir fsyncs a directory so that entries created or renamed in it
// survive power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
