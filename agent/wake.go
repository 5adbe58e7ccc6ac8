package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/klp-agent/klp-agent/agent/state"
)

// watchRequests wakes the daemon when a rollback or control request lands in dir, so
// it needs no timer for operators. WriteRequest renames the file in
// (IN_MOVED_TO); a plain write is seen when closed (IN_CLOSE_WRITE).
// The channel has room for one wake-up; more while one waits add nothing.
func watchRequests(ctx context.Context, l state.Layout) (<-chan struct{}, error) {
	dir := l.Dir
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, &os.SyscallError{Syscall: "inotify_init1", Err: err}
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "inotify_add_watch", Path: dir, Err: err}
	}
	// A non-blocking fd goes to Go's poller: Read parks the goroutine
	// without a thread, and Close wakes it.
	f := os.NewFile(uintptr(fd), "inotify:"+dir)
	rollback := filepath.Base(l.RollbackRequest())
	want := func(name string) bool { return name == rollback || state.ControlRequestID(name) != "" }
	wake := make(chan struct{}, 1)
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	go func() {
		buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
		for {
			n, err := f.Read(buf)
			if err != nil {
				if !errors.Is(err, os.ErrClosed) {
					// Not expected; requests still must not wait forever,
					// so look for one every second from here on.
					pollRequests(ctx, wake)
				}
				return
			}
			if requestIn(buf[:n], want) {
				poke(wake)
			}
		}
	}()
	return wake, nil
}

// requestIn reports whether a batch of inotify events names a request
// file (or overflowed, when anything may have happened).
func requestIn(b []byte, want func(name string) bool) bool {
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		end := unix.SizeofInotifyEvent + int(ev.Len)
		if end > len(b) {
			return true // cut short: check anyway
		}
		if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
			return true
		}
		name := strings.TrimRight(string(b[unix.SizeofInotifyEvent:end]), "\x00")
		if want(name) {
			return true
		}
		b = b[end:]
	}
	return false
}

// pollRequests wakes the daemon every second until ctx ends.
func pollRequests(ctx context.Context, wake chan<- struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			poke(wake)
		}
	}
}

// poke leaves one wake-up waiting; one already waiting is enough.
func poke(wake chan<- struct{}) {
	select {
	case wake <- struct{}{}:
	default:
	}
}
