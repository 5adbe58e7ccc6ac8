package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/state"
)

// The state lock's holder is read from /proc/locks by the lock file's
// device and inode: a waiter ("->") or another file's lock is no holder.
func TestLockHolder(t *testing.T) {
	dir := t.TempDir()
	l := state.Layout{Dir: dir}
	if err := os.WriteFile(l.LockFile(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(l.LockFile())
	st := fi.Sys().(*syscall.Stat_t)
	id := fmt.Sprintf("%02x:%02x:%d", major(uint64(st.Dev)), minor(uint64(st.Dev)), st.Ino)
	other := fmt.Sprintf("%02x:%02x:%d", major(uint64(st.Dev)), minor(uint64(st.Dev)), st.Ino+1)
	snap := &agent.DaemonInfo{PID: 4242}
	for _, tt := range []struct {
		name, locks string
		snap        *agent.DaemonInfo
		running     bool
		pid         int
	}{
		{"held", "1: POSIX  ADVISORY  WRITE 7 " + other + " 0 EOF\n2: FLOCK  ADVISORY  WRITE 4242 " + id + " 0 EOF\n", snap, true, 4242},
		{"held, no snapshot", "2: FLOCK  ADVISORY  WRITE 4242 " + id + " 0 EOF\n", nil, true, 4242},
		{"only a waiter", "2: -> FLOCK  ADVISORY  WRITE 99 " + id + " 0 EOF\n", snap, false, 4242},
		{"another file's lock", "1: FLOCK  ADVISORY  WRITE 4242 " + other + " 0 EOF\n", snap, false, 4242},
		{"nothing held, no snapshot", "", nil, false, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			procLocks = filepath.Join(t.TempDir(), "locks")
			t.Cleanup(func() { procLocks = "/proc/locks" })
			os.WriteFile(procLocks, []byte(tt.locks), 0o444)
			d := Liveness(l, tt.snap)
			if tt.pid == 0 {
				if d != nil {
					t.Fatalf("daemon %+v, want none", d)
				}
				return
			}
			if d == nil || d.Running != tt.running || d.PID != tt.pid {
				t.Fatalf("daemon %+v, want pid %d running %v", d, tt.pid, tt.running)
			}
		})
	}
	// Without /proc/locks the snapshot is all there is.
	procLocks = filepath.Join(dir, "missing")
	t.Cleanup(func() { procLocks = "/proc/locks" })
	if d := Liveness(l, snap); d != snap {
		t.Fatalf("lock not in view: %+v, want the snapshot's", d)
	}
}
