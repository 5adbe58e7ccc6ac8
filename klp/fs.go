package klp

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// FS is the slice of the filesystem klp reads and writes: sysfs and procfs
// under a root. The real one is OSFS; tests use a simulated kernel that
// obeys the livepatch rules (klp/klptest).
type FS interface {
	ReadFile(name string) ([]byte, error)
	// WriteFile writes to an existing attribute; it never creates files.
	WriteFile(name string, data []byte) error
	ReadDir(name string) ([]fs.DirEntry, error)
}

// OSFS is the real filesystem under Root ("/" on a host).
type OSFS struct{ Root string }

func (o OSFS) path(name string) string { return filepath.Join(o.Root, name) }

// ReadFile implements FS.
func (o OSFS) ReadFile(name string) ([]byte, error) { return os.ReadFile(o.path(name)) }

// ReadDir implements FS.
func (o OSFS) ReadDir(name string) ([]fs.DirEntry, error) { return os.ReadDir(o.path(name)) }

// WriteFile implements FS: one write(2) of the whole value, which is what
// sysfs attributes expect, and the errno comes back unwrapped enough for
// errors.Is(err, syscall.EBUSY).
func (o OSFS) WriteFile(name string, data []byte) error {
	f, err := os.OpenFile(o.path(name), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if werr != nil {
		return werr
	}
	return cerr
}

// readTrim reads a small attribute and trims the newline.
func readTrim(fsys FS, name string) (string, error) {
	b, err := fsys.ReadFile(name)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// readBool reads a 0/1 attribute.
func readBool(fsys FS, name string) (bool, error) {
	s, err := readTrim(fsys, name)
	if err != nil {
		return false, err
	}
	switch s {
	case "0":
		return false, nil
	case "1":
		return true, nil
	}
	return false, fmt.Errorf("%s: unexpected value %q", name, s)
}

// notExist: a sysfs attribute of a kobject being removed (a patch freed
// after its disable or replace) reads ENODEV rather than ENOENT.
func notExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV)
}
