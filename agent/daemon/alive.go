package daemon

import (
	"errors"
	"syscall"
)

// processAlive reports whether pid exists (EPERM: it does, another user's).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
