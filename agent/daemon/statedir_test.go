package daemon

import (
	"errors"
	"os"
	"path/filepath"
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
