// Package limitfile reads whole files that must stay small (manifests,
// roots, modules): a file over the limit is refused, never read whole.
// Every open is typed before it can block: a FIFO (or a device) where a
// file is expected is refused at once instead of holding the reader for
// ever, whoever planted it.
package limitfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// ErrTooLarge is a file over the caller's limit.
var ErrTooLarge = errors.New("file too large")

// ErrNotRegular is a FIFO, device, socket or directory where a regular
// file is expected.
var ErrNotRegular = errors.New("not a regular file")

// openFlags open without blocking: open(2) of a FIFO with O_NONBLOCK
// returns at once (no writer needed), and the fstat after it tells what
// was opened before anything reads from it. On a regular file O_NONBLOCK
// changes nothing (reads of regular files never return EAGAIN).
const openFlags = os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC | syscall.O_NOCTTY

// Open opens path for reading if it is a regular file, without blocking
// on whatever else it may be; the FileInfo is the open file's.
func Open(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, openFlags, 0)
	if err != nil {
		return nil, nil, err
	}
	return regular(f, path)
}

// OpenIn is Open for name inside root: a symlink (or "..") that leads out
// of root's tree is refused (os.Root).
func OpenIn(root *os.Root, name string) (*os.File, os.FileInfo, error) {
	f, err := root.OpenFile(name, openFlags, 0)
	if err != nil {
		return nil, nil, err
	}
	return regular(f, name)
}

func regular(f *os.File, name string) (*os.File, os.FileInfo, error) {
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w (%s)", name, ErrNotRegular, kind(fi.Mode()))
	}
	return f, fi, nil
}

// kind names a non-regular file's type for messages.
func kind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return m.Type().String()
}

// Read returns path's contents, or ErrTooLarge when it holds more than
// limit bytes (only limit+1 of them are read), or ErrNotRegular.
func Read(path string, limit int64) ([]byte, error) {
	f, _, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAll(f, path, limit)
}

// ReadIn is Read for name inside root (see OpenIn).
func ReadIn(root *os.Root, name string, limit int64) ([]byte, error) {
	f, _, err := OpenIn(root, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readAll(f, name, limit)
}

func readAll(f *os.File, name string, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: %w: over %d bytes", name, ErrTooLarge, limit)
	}
	return b, nil
}
