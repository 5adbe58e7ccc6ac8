package manifest

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestRelativeURL(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		rpm, want string
		err       error
	}{
		{"rpms/x.rpm", "rpms/x.rpm", nil},
		{"..x.rpm", "..x.rpm", nil}, // a name starting with dots is still under dir
		{"a b/x#1.rpm", "a%20b/x%231.rpm", nil},
		{"a:b.rpm", "./a:b.rpm", nil}, // not a scheme
		{"../x.rpm", "", ErrOutsidePublishDir},
		{"../" + filepath.Base(dir) + "x/y.rpm", "", ErrOutsidePublishDir},
	} {
		got, err := RelativeURL(dir, filepath.Join(dir, tt.rpm))
		if got != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("RelativeURL(%q) = %q, %v; want %q, %v", tt.rpm, got, err, tt.want, tt.err)
		}
	}
}
