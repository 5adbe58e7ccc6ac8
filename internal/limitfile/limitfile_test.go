package limitfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("12345"), 0o600)
	for _, tt := range []struct {
		limit int64
		want  error
	}{{5, nil}, {4, ErrTooLarge}} {
		b, err := Read(p, tt.limit)
		if !errors.Is(err, tt.want) || (err == nil && string(b) != "12345") {
			t.Errorf("limit %d: %q, %v; want %v", tt.limit, b, err, tt.want)
		}
	}
	if _, err := Read(p+"x", 5); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
