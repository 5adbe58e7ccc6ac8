package metrics

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
)

// afterBind, for tests, runs as soon as the socket exists at path: where
// an attacker who can write the directory would swap it.
var afterBind func(path string)

// umaskMu serialises the fallback's process-wide umask change.
var umaskMu sync.Mutex

// bindUnix creates a listening unix socket at path whose inode has mode
// from the moment bind(2) creates it, with no chmod by name afterwards (a
// chmod by name follows whatever an attacker swapped in at path between
// bind and chmod: a symlink to /etc/shadow). bind creates the inode with
// the socket's own mode (set by fchmod on the fd) less the umask. The
// umask is the process's, so the bind runs on a thread of its own that
// unshares its filesystem attributes (CLONE_FS): its umask is changed for
// that thread alone, and the thread is discarded after. Where unshare is
// refused (a seccomp filter), the umask is lowered process-wide for the
// bind alone, under a mutex, and only by the bits mode needs (umask &^
// mode): a file another goroutine creates in that instant keeps at most
// the mode it asked for.
func bindUnix(path string, mode os.FileMode) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Not unlocked: the thread, with its unshared umask, exits with
		// this goroutine instead of going back to the pool.
		runtime.LockOSThread()
		private := syscall.Unshare(syscall.CLONE_FS) == nil
		ln, err := bindOnThread(path, mode, private)
		done <- result{ln, err}
	}()
	r := <-done
	return r.ln, r.err
}

func bindOnThread(path string, mode os.FileMode, private bool) (net.Listener, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("metrics socket %s: %w", path, os.NewSyscallError("socket", err))
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // FileListener holds its own copy
	if err := syscall.Fchmod(fd, uint32(mode.Perm())); err != nil {
		return nil, fmt.Errorf("metrics socket %s: %w", path, os.NewSyscallError("fchmod", err))
	}
	if !private {
		umaskMu.Lock()
	}
	// Reading the umask sets it: to 0 on the private thread, to the most
	// restrictive value (safe for anyone else for that instant) otherwise.
	var old int
	if private {
		old = syscall.Umask(0)
	} else {
		old = syscall.Umask(0o777)
		syscall.Umask(old &^ int(mode.Perm()))
	}
	err = syscall.Bind(fd, &syscall.SockaddrUnix{Name: path})
	syscall.Umask(old)
	if !private {
		umaskMu.Unlock()
	}
	if err == nil && afterBind != nil {
		afterBind(path)
	}
	if err != nil {
		return nil, fmt.Errorf("metrics socket %s: %w", path, os.NewSyscallError("bind", err))
	}
	if err := syscall.Listen(fd, syscall.SOMAXCONN); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("metrics socket %s: %w", path, os.NewSyscallError("listen", err))
	}
	ln, err := net.FileListener(f)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("metrics socket %s: %w", path, err)
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(true) // as net.Listen's own socket is
	}
	return ln, nil
}
