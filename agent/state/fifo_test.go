package state

import (
	"errors"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/limitfile"
)

// A FIFO where state.json belongs is refused at once: opening it would
// wait for a writer for ever, and the daemon with it (the old code's
// os.ReadFile blocked).
func TestLoadRefusesFIFO(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	if err := syscall.Mkfifo(s.Path(), 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := s.Load(); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, limitfile.ErrNotRegular) {
			t.Fatalf("Load of a FIFO: %v, want ErrNotRegular", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Load of a FIFO at %s blocked", filepath.Base(s.Path()))
	}
}
