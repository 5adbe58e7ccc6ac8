package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileReplacesAndLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	for _, content := range []string{"first", "second, longer content"} {
		if err := WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != content {
			t.Fatalf("got %q, want %q", got, content)
		}
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the target (temp files left behind?)", len(ents))
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	if err := WriteFile(filepath.Join(t.TempDir(), "nope", "x"), []byte("x"), 0o600); err == nil {
		t.Fatal("want error for missing directory")
	}
}

// Something planted at the temporary name (a symlink to a victim, or a
// file) is never opened: another name is taken, and the victim is
// unchanged. A symlink at the target itself is replaced, not followed.
func TestWriteFileDoesNotFollowPlanted(t *testing.T) {
	for _, tt := range []struct {
		name       string
		plantAtTmp bool // else at the target
		link       bool
	}{
		{"symlink at the temporary name", true, true},
		{"file at the temporary name", true, false},
		{"symlink at the target", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir, victim := t.TempDir(), filepath.Join(t.TempDir(), "victim")
			os.WriteFile(victim, []byte("precious"), 0o644)
			p := filepath.Join(dir, "state.json")
			planted := p
			if tt.plantAtTmp {
				planted = filepath.Join(dir, ".planted")
				names := []string{planted, filepath.Join(dir, ".fresh")}
				orig := tempName
				tempName = func(string) string { n := names[0]; names = names[1:]; return n }
				t.Cleanup(func() { tempName = orig })
			}
			var err error
			if tt.link {
				err = os.Symlink(victim, planted)
			} else {
				err = os.WriteFile(planted, []byte("planted"), 0o600)
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := WriteFile(p, []byte("new"), 0o600); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(victim); string(b) != "precious" {
				t.Fatalf("victim: %q", b)
			}
			if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("target: %v %v", fi, err)
			}
			if b, _ := os.ReadFile(p); string(b) != "new" {
				t.Fatalf("target: %q", b)
			}
		})
	}
}

// The mode asked for is the mode set, whatever the umask.
func TestWriteFileMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m")
	if err := WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode: %v %v", fi, err)
	}
}
