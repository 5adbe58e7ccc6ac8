package limitfile

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A FIFO, a directory or a symlink out of the tree where a file is
// expected is refused at once: nothing blocks waiting for a writer.
func TestOpenRefusesWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("s3cret"), 0o600)
	os.WriteFile(filepath.Join(dir, "real"), []byte("ok"), 0o644)
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	os.Symlink("real", filepath.Join(dir, "inside"))
	os.Symlink(outside, filepath.Join(dir, "escape"))
	os.Symlink("../"+filepath.Base(filepath.Dir(outside))+"/secret", filepath.Join(dir, "escape-rel"))
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, tt := range []struct {
		name string
		in   bool // through the root
		want error
	}{
		{"real", false, nil},
		{"real", true, nil},
		{"inside", true, nil},
		{"fifo", false, ErrNotRegular},
		{"fifo", true, ErrNotRegular},
		{"sub", false, ErrNotRegular},
		{"escape", true, nil}, // any error: out of the tree
		{"escape-rel", true, nil},
	} {
		done := make(chan error, 1)
		go func() {
			var b []byte
			var err error
			if tt.in {
				b, err = ReadIn(root, tt.name, 100)
			} else {
				b, err = Read(filepath.Join(dir, tt.name), 100)
			}
			if err == nil && string(b) != "ok" {
				err = errors.New("read " + string(b))
			}
			done <- err
		}()
		select {
		case err := <-done:
			escape := tt.name == "escape" || tt.name == "escape-rel"
			switch {
			case escape && err == nil:
				t.Errorf("%s: followed out of the tree", tt.name)
			case !escape && !errors.Is(err, tt.want):
				t.Errorf("%s (in root %v): %v, want %v", tt.name, tt.in, err, tt.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: blocked", tt.name)
		}
	}
}
