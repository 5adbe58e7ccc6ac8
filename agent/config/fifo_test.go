package config

import (
	"errors"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/limitfile"
)

// A FIFO where the configuration file belongs is refused at once, not
// waited on (the old code's os.ReadFile blocked for ever).
func TestLoadRefusesFIFO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := Load(p); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, limitfile.ErrNotRegular) {
			t.Fatalf("Load of a FIFO: %v, want ErrNotRegular", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Load of a FIFO blocked")
	}
}
