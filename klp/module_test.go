package klp_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/klp/klptest"
)

// fdLoader is a Modules that notes what finit_module would get: the
// descriptor's inode, its offset, and the sha256 of the bytes read
// through it.
type fdLoader struct {
	calls  int
	ino    uint64
	offset int64
	sum    string
}

func (l *fdLoader) Load(m *klp.Module) error {
	l.calls++
	var st unix.Stat_t
	if err := unix.Fstat(int(m.Fd()), &st); err != nil {
		return err
	}
	off, err := unix.Seek(int(m.Fd()), 0, io.SeekCurrent)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(m.Content())
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	l.ino, l.offset, l.sum = st.Ino, off, hex.EncodeToString(sum[:])
	return nil
}

func (l *fdLoader) Unload(string) error { return nil }

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Every load opens the file itself (no symlink, no FIFO, root's, not
// group/world-writable), hashes the open descriptor against the sha256
// recorded when the RPM was verified, and hands that descriptor, at
// offset 0, to finit_module. Anything else is refused before the loader
// is called. (The old loader opened any path, followed symlinks, blocked
// on a FIFO and loaded whatever bytes were there.)
func TestLoadOnlyVerifiedBytes(t *testing.T) {
	good := []byte("\x7fELF verified module bytes")
	for _, tt := range []struct {
		name string
		// make puts the module file at p and returns the sha256 to check.
		make func(t *testing.T, p string) string
		want error
	}{
		{"verified file", func(t *testing.T, p string) string {
			write(t, p, good, 0o644)
			return sha(good)
		}, nil},
		{"read-only for all", func(t *testing.T, p string) string {
			write(t, p, good, 0o400)
			return sha(good)
		}, nil},
		{"rewritten after it was verified", func(t *testing.T, p string) string {
			write(t, p, []byte("\x7fELF other module bytes"), 0o600)
			return sha(good)
		}, klp.ErrModuleTampered},
		{"no recorded sha256", func(t *testing.T, p string) string {
			write(t, p, good, 0o600)
			return ""
		}, klp.ErrModuleUnsafe},
		{"symlink to a verified file", func(t *testing.T, p string) string {
			write(t, p+".real", good, 0o600)
			if err := os.Symlink(p+".real", p); err != nil {
				t.Fatal(err)
			}
			return sha(good)
		}, klp.ErrModuleUnsafe},
		{"FIFO", func(t *testing.T, p string) string {
			if err := unix.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			return sha(good)
		}, klp.ErrModuleUnsafe},
		{"directory", func(t *testing.T, p string) string {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
			return sha(good)
		}, klp.ErrModuleUnsafe},
		{"owned by nobody", func(t *testing.T, p string) string {
			write(t, p, good, 0o644)
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return sha(good)
		}, klp.ErrModuleUnsafe},
		{"world-writable", func(t *testing.T, p string) string {
			write(t, p, good, 0o666)
			return sha(good)
		}, klp.ErrModuleUnsafe},
		{"group-writable", func(t *testing.T, p string) string {
			write(t, p, good, 0o620)
			return sha(good)
		}, klp.ErrModuleUnsafe},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Skip("needs root: the file must be root's")
			}
			p := filepath.Join(t.TempDir(), "klp_test.ko")
			sum := tt.make(t, p)
			l := &fdLoader{}
			done := make(chan error, 1)
			go func() {
				_, err := klp.LoadRetry(context.Background(), l, klp.ModuleFile{Path: p, SHA256: sum}, klp.DefaultLoadBackoff)
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("load still blocked after 10 s")
			}
			if tt.want != nil {
				if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), p) || l.calls != 0 {
					t.Fatalf("err = %v, %d loads; want %v naming %s and no load", err, l.calls, tt.want, p)
				}
				if errors.Is(err, klp.ErrModuleTampered) && !strings.Contains(err.Error(), sha([]byte("\x7fELF other module bytes"))+", verified "+sum) {
					t.Fatalf("tampered error does not name both hashes: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Stat(p, &st); err != nil {
				t.Fatal(err)
			}
			if l.calls != 1 || l.ino != st.Ino || l.offset != 0 || l.sum != sum {
				t.Fatalf("loader got %+v; want one load of inode %d at offset 0 with sha256 %s", l, st.Ino, sum)
			}
		})
	}
}

// A file refused before loading is not the kernel's refusal (a
// deterministic RefusedError would block the level), and the simulated
// kernel reads the verified bytes through the descriptor it is handed.
func TestLoadRefusedFileIsNotAKernelRefusal(t *testing.T) {
	k, c := newSim(t)
	f := simFile(t, "klp_cmdline_1")
	if err := os.Chmod(f.Path, 0o666); err != nil {
		t.Fatal(err)
	}
	_, err := c.Enable(context.Background(), f, "klp_cmdline_1", klp.EnableOptions{})
	var refused *klp.RefusedError
	if !errors.Is(err, klp.ErrModuleUnsafe) || errors.As(err, &refused) || len(k.Loads) != 0 {
		t.Fatalf("err = %v (refusal %v), loads %v; want ErrModuleUnsafe, no RefusedError, nothing loaded", err, refused != nil, k.Loads)
	}
	if err := os.Chmod(f.Path, 0o644); err != nil {
		t.Fatal(err)
	}
	enable(t, c, "klp_cmdline_1")
	if len(k.LoadedSHA256) != 1 || k.LoadedSHA256[0] != f.SHA256 {
		t.Fatalf("the simulated kernel read %v through the descriptor, want %s", k.LoadedSHA256, f.SHA256)
	}
}

func write(t *testing.T, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// A module rpm installed and something rewrote before the load (here in
// the installer's hook, just after rpm -U) is refused: nothing is loaded,
// the kernel keeps the previous level and rpm's database names it again.
// The old code loaded whatever the installed path held.
func TestApplyRefusesAModuleRewrittenAfterInstall(t *testing.T) {
	s := newShapes(t)
	s.add("cmdline", "klp_cmdline_1", 1, klptest.Module{Replace: true}, nil)
	s.add("cmdline", "klp_cmdline_2", 2, klptest.Module{Replace: true}, nil)
	if err := s.apply("klp_cmdline_1", "", ""); err != nil {
		t.Fatal(err)
	}
	installed := filepath.Join(s.root, "usr/lib/klp-agent/livepatches", krel, "klp_cmdline_2.ko")
	s.in.Hook = func(step string) {
		if step == "installed" {
			if err := os.WriteFile(installed, []byte("\x7fELF other bytes"), 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	loads := len(s.k.Loads)
	err := s.apply("klp_cmdline_2", "klp_cmdline_1", "klp-cmdline")
	if !errors.Is(err, klp.ErrModuleTampered) || !strings.Contains(err.Error(), installed) {
		t.Fatalf("err = %v, want ErrModuleTampered naming %s", err, installed)
	}
	if len(s.k.Loads) != loads {
		t.Fatalf("loaded %v after the refusal", s.k.Loads[loads:])
	}
	s.expect("klp_cmdline_1", "klp-cmdline", "1-1")
}
