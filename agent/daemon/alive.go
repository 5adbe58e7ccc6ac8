package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/state"
)

// processAlive reports whether pid exists (EPERM: it does, another user's).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// procLocks lists the kernel's file locks; a variable for tests.
var procLocks = "/proc/locks"

// lockHolder is the pid holding the flock on lockFile, read from
// /proc/locks without taking the lock (status must never race a starting
// daemon for it). known is false when it cannot be told: the lock file
// cannot be looked at (not root) or /proc/locks cannot be read. A lock
// file that does not exist is known and unheld: the daemon creates it.
func lockHolder(lockFile string) (pid int, known bool) {
	fi, err := os.Lstat(lockFile)
	if errors.Is(err, os.ErrNotExist) {
		if _, derr := os.Stat(lockFileDir(lockFile)); derr == nil {
			return 0, true
		}
		return 0, false
	}
	if err != nil {
		return 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	f, err := os.Open(procLocks)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", major(uint64(st.Dev)), minor(uint64(st.Dev)), st.Ino)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF"; "1: -> FLOCK
		// ..." is a waiter, not the holder.
		fl := strings.Fields(sc.Text())
		if len(fl) < 6 || fl[1] != "FLOCK" || fl[5] != want {
			continue
		}
		if p, err := strconv.Atoi(fl[4]); err == nil && p > 0 {
			return p, true
		}
	}
	if sc.Err() != nil {
		return 0, false
	}
	return 0, true
}

func lockFileDir(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return "."
}

// major and minor split a Linux dev_t as the kernel prints it in
// /proc/locks.
func major(dev uint64) uint64 { return (dev>>8)&0xfff | (dev>>32)&^uint64(0xfff) }
func minor(dev uint64) uint64 { return dev&0xff | (dev>>12)&^uint64(0xff) }

// Liveness is the daemon as a reader sees it: its snapshot's record (nil:
// none), corrected by the state lock where it can be seen (root): the
// lock's holder runs, whatever the snapshot says; without a holder no
// daemon runs. Without the lock in view, the snapshot's pid alive and no
// clean stop is all there is to go by.
func Liveness(l state.Layout, snap *agent.DaemonInfo) *agent.DaemonInfo {
	pid, known := lockHolder(l.LockFile())
	if !known {
		return snap
	}
	switch {
	case pid == 0 && snap == nil:
		return nil
	case pid == 0:
		d := *snap
		d.Running, d.LockHolder = false, 0
		return &d
	case snap == nil || snap.PID != pid:
		// No snapshot, or one left by an earlier daemon: the holder runs,
		// and nothing says it writes its snapshot.
		return &agent.DaemonInfo{PID: pid, Running: true, LockHolder: pid}
	}
	d := *snap
	d.Running, d.LockHolder = true, pid
	return &d
}
