package klp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Modules loads and unloads kernel modules.
type Modules interface {
	// Load loads an opened, checked module with finit_module(2). A
	// *Module only comes from the one opener below, so nothing but bytes
	// whose hash matched reaches the kernel.
	Load(m *Module) error
	// Unload removes a module with delete_module(2), without waiting.
	Unload(name string) error
}

// ModuleFile is a module file to load and the sha256 its bytes must have:
// what the RPM's payload held when the RPM was verified.
type ModuleFile struct {
	Path   string
	SHA256 string
}

// Sentinel errors for a module file refused before loading.
var (
	// ErrModuleTampered is a module file whose bytes are not the ones
	// recorded when its RPM was verified.
	ErrModuleTampered = errors.New("module file does not hash to its verified sha256")
	// ErrModuleUnsafe is a module file that is a symlink, not a regular
	// file, not root's, or writable by others than root.
	ErrModuleUnsafe = errors.New("module file unsafe to load")
)

// Module is a module file opened for loading: checked (regular, root's,
// not group/world-writable, not a symlink) and hashed through the same
// descriptor that goes to finit_module. Only openModule makes one.
type Module struct {
	f    *os.File
	path string
	sha  string
	size int64
}

// Path is the file the module was opened from, for messages.
func (m *Module) Path() string { return m.path }

// SHA256 is the verified hash of the module's bytes.
func (m *Module) SHA256() string { return m.sha }

// Fd is the open descriptor finit_module gets.
func (m *Module) Fd() uintptr { return m.f.Fd() }

// Content reads the bytes that were hashed, through the same descriptor,
// without moving its offset.
func (m *Module) Content() io.Reader { return io.NewSectionReader(m.f, 0, m.size) }

// openModule is the one way to a *Module. O_NOFOLLOW refuses a symlink;
// O_NONBLOCK with the type check after fstat keeps a FIFO from blocking;
// the hash is of the open descriptor, so a file swapped or rewritten after
// the check is not what is loaded (only root can write a file that passes
// the owner and mode checks).
func openModule(ko ModuleFile) (*Module, error) {
	if ko.SHA256 == "" {
		return nil, fmt.Errorf("load %s: %w: no verified sha256 to check it against", ko.Path, ErrModuleUnsafe)
	}
	fd, err := unix.Open(ko.Path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("load %s: %w: a symlink", ko.Path, ErrModuleUnsafe)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: ko.Path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fstat", Path: ko.Path, Err: err}
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		err = fmt.Errorf("not a regular file (mode %o)", st.Mode)
	case st.Uid != 0:
		err = fmt.Errorf("owned by uid %d, not root", st.Uid)
	case st.Mode&0o022 != 0:
		err = fmt.Errorf("group or world writable (mode %o)", st.Mode&0o7777)
	case st.Size > MaxModuleBytes:
		err = fmt.Errorf("%d bytes, over %d", st.Size, MaxModuleBytes)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("load %s: %w: %w", ko.Path, ErrModuleUnsafe, err)
	}
	// A regular file: blocking reads from here on, as finit_module's are.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fcntl", Path: ko.Path, Err: err}
	}
	f := os.NewFile(uintptr(fd), ko.Path)
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, MaxModuleBytes+1))
	if err == nil && n > MaxModuleBytes {
		err = fmt.Errorf("%w: over %d bytes", ErrModuleUnsafe, MaxModuleBytes)
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("load %s: %w", ko.Path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != ko.SHA256 {
		f.Close()
		return nil, fmt.Errorf("load %s: %w: sha256 %s, verified %s", ko.Path, ErrModuleTampered, got, ko.SHA256)
	}
	return &Module{f: f, path: ko.Path, sha: ko.SHA256, size: n}, nil
}

// ReadModule reads a module file through the same checks as a load: for
// copying the verified bytes (the agent's kept copy), never for loading.
func ReadModule(ko ModuleFile) ([]byte, error) {
	m, err := openModule(ko)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	return io.ReadAll(m.Content())
}

// Close closes the module's descriptor.
func (m *Module) Close() error { return m.f.Close() }

// KernelModules is the real implementation.
type KernelModules struct{}

// Load implements Modules: the descriptor that was hashed, at offset 0.
func (KernelModules) Load(m *Module) error {
	if m == nil || m.f == nil {
		return fmt.Errorf("load: %w: not opened by the verifying opener", ErrModuleUnsafe)
	}
	if _, err := m.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("load %s: %w", m.path, err)
	}
	if err := unix.FinitModule(int(m.f.Fd()), "", 0); err != nil {
		return fmt.Errorf("load %s: %w", m.path, err)
	}
	return nil
}

// Unload implements Modules. O_NONBLOCK: fail with EWOULDBLOCK/EBUSY
// rather than wait inside the kernel for the refcount.
func (KernelModules) Unload(name string) error {
	if err := unix.DeleteModule(name, unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("unload %s: %w", name, err)
	}
	return nil
}

// ErrModuleLoaded means a module of that name is already in the kernel.
var ErrModuleLoaded = errors.New("module already loaded")

// Backoff is a bounded retry schedule.
type Backoff struct {
	Attempts int
	First    time.Duration
	Max      time.Duration
}

// DefaultLoadBackoff retries EBUSY (another transition running) for about
// 20 s in all, like kpatch's 5 tries every 2 s but starting faster.
var DefaultLoadBackoff = Backoff{Attempts: 8, First: 100 * time.Millisecond, Max: 5 * time.Second}

// LoadRetry opens and checks ko once (openModule) and loads it, retrying
// while the kernel answers EBUSY because another livepatch is still
// transitioning. It returns how many EBUSY answers it saw. This is the
// only way the agent puts a module in the kernel: at apply, at rollback
// from the kept copy, and at boot.
func LoadRetry(ctx context.Context, m Modules, ko ModuleFile, b Backoff) (busy int, err error) {
	mod, err := openModule(ko)
	if err != nil {
		return 0, err
	}
	defer mod.Close()
	wait := b.First
	for attempt := 1; ; attempt++ {
		err = m.Load(mod)
		switch {
		case err == nil:
			return busy, nil
		case errors.Is(err, syscall.EEXIST):
			return busy, fmt.Errorf("%w: %w", ErrModuleLoaded, err)
		case !errors.Is(err, syscall.EBUSY) || attempt >= b.Attempts:
			if errors.Is(err, syscall.EBUSY) {
				err = fmt.Errorf("%w (after %d attempts): %w", ErrBusy, attempt, err)
			}
			return busy, err
		}
		busy++
		select {
		case <-ctx.Done():
			return busy, fmt.Errorf("load %s: %w", ko.Path, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, b.Max)
	}
}
