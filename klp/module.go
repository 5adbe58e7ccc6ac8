package klp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Modules loads and unloads kernel modules.
type Modules interface {
	// Load loads the module file with finit_module(2).
	Load(path string) error
	// Unload removes a module with delete_module(2), without waiting.
	Unload(name string) error
}

// KernelModules is the real implementation.
type KernelModules struct{}

// Load implements Modules.
func (KernelModules) Load(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil {
		return fmt.Errorf("load %s: %w", path, err)
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

// LoadRetry loads path, retrying while the kernel answers EBUSY because
// another livepatch is still transitioning. It returns how many EBUSY
// answers it saw.
func LoadRetry(ctx context.Context, m Modules, path string, b Backoff) (busy int, err error) {
	wait := b.First
	for attempt := 1; ; attempt++ {
		err = m.Load(path)
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
			return busy, fmt.Errorf("load %s: %w", path, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, b.Max)
	}
}
