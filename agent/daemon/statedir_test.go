package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klp-agent/klp-agent/manifest"
)

// A state directory another user could write to, or a symlink to one, is
// refused before anything is read from it.
func TestCheckStateDir(t *testing.T) {
	uid := os.Getuid()
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, dir string) string
		uid   int
		ok    bool
	}{
		{"private", func(t *testing.T, d string) string { return mkdir(t, d, 0o700) }, uid, true},
		{"created when missing", func(t *testing.T, d string) string { return filepath.Join(d, "new", "state") }, uid, true},
		{"group-writable", func(t *testing.T, d string) string { return mkdir(t, d, 0o770) }, uid, false},
		{"world-writable", func(t *testing.T, d string) string { return mkdir(t, d, 0o757) }, uid, false},
		{"another owner", func(t *testing.T, d string) string { return mkdir(t, d, 0o700) }, uid + 1, false},
		{"symlink", func(t *testing.T, d string) string {
			link := filepath.Join(d, "link")
			if err := os.Symlink(mkdir(t, d, 0o700), link); err != nil {
				t.Fatal(err)
			}
			return link
		}, uid, false},
		{"a file", func(t *testing.T, d string) string {
			f := filepath.Join(d, "f")
			os.WriteFile(f, nil, 0o600)
			return f
		}, uid, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.setup(t, t.TempDir())
			err := checkStateDir(dir, tt.uid)
			if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrUntrustedStateDir)) {
				t.Fatalf("checkStateDir: %v", err)
			}
		})
	}
}

func mkdir(t *testing.T, parent string, mode os.FileMode) string {
	t.Helper()
	d := filepath.Join(parent, "state")
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return d
}

// The daemon refuses to start on an untrusted state directory, saying which
// and why.
func TestRunRefusesUntrustedStateDir(t *testing.T) {
	root, keys := hostRoot(t), t.TempDir()
	stateDir := mkdir(t, t.TempDir(), 0o777)
	_, pub, _, _ := manifest.GenerateKey()
	os.WriteFile(filepath.Join(keys, "k.pub"), pub, 0o644)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	writeConfig(t, cfg, "trust:\n  keys_dir: "+keys+"\npaths:\n  root: "+root+"\n  state_dir: "+stateDir+"\n")
	_, stop := runDaemon(t, cfg)
	if err := stop(); !errors.Is(err, ErrUntrustedStateDir) {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "lock")); err == nil {
		t.Fatal("the lock was taken in an untrusted state dir")
	}
}

// Every ancestor of the state directory must be one only root can change
// (sticky /tmp-like ones excepted): a user who can rename entries in a
// parent swaps the whole state tree. The old code checked the state
// directory alone.
func TestCheckStateDirAncestors(t *testing.T) {
	const nobody = 65534
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, parent string)
		ok    bool
	}{
		{"root's 0755", func(t *testing.T, p string) { os.Chmod(p, 0o755) }, true},
		{"sticky and world-writable, root's", func(t *testing.T, p string) { os.Chmod(p, os.ModeSticky|0o777) }, true},
		{"world-writable", func(t *testing.T, p string) { os.Chmod(p, 0o777) }, false},
		{"group-writable", func(t *testing.T, p string) { os.Chmod(p, 0o775) }, false},
		{"another user's", func(t *testing.T, p string) { os.Chmod(p, 0o755); os.Chown(p, nobody, nobody) }, false},
		{"sticky but another user's", func(t *testing.T, p string) { os.Chmod(p, os.ModeSticky|0o777); os.Chown(p, nobody, nobody) }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			parent := filepath.Join(t.TempDir(), "var", "lib")
			if err := os.MkdirAll(parent, 0o755); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, filepath.Dir(parent)) // "var": the grandparent
			dir := mkdir(t, parent, 0o700)
			for name, err := range map[string]error{
				"checkStateDir":   checkStateDir(dir, 0),
				"inspectStateDir": inspectStateDir(dir, 0, true),
				"missing":         inspectStateDir(filepath.Join(parent, "missing"), 0, true),
			} {
				if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrUntrustedStateDir)) {
					t.Errorf("%s: %v", name, err)
				}
			}
		})
	}
	// Through a symlink: the directory it resolves to is checked too.
	base := t.TempDir()
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o777)
	os.Mkdir(filepath.Join(open, "lib"), 0o755)
	os.Symlink(open, filepath.Join(base, "var"))
	dir := mkdir(t, filepath.Join(base, "var", "lib"), 0o700)
	if err := checkStateDir(dir, 0); !errors.Is(err, ErrUntrustedStateDir) || !strings.Contains(err.Error(), "mode 0777") {
		t.Errorf("under a symlink to a world-writable directory: %v", err)
	}
}
