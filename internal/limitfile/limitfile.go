// Package limitfile reads whole files that must stay small (manifests,
// roots, modules): a file over the limit is refused, never read whole.
package limitfile

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrTooLarge is a file over the caller's limit.
var ErrTooLarge = errors.New("file too large")

// Read returns path's contents, or ErrTooLarge when it holds more than
// limit bytes (only limit+1 of them are read).
func Read(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: %w: over %d bytes", path, ErrTooLarge, limit)
	}
	return b, nil
}
