package cli

import (
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// reload signals the daemon only for a configuration the daemon accepts.
func TestReload(t *testing.T) {
	dir, keys, cfg := hostConfig(t, "")
	run(t, t0, "manifest", "keygen", "--out", filepath.Join(keys, "release"))

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	self := strconv.Itoa(os.Getpid())
	got := func() bool {
		select {
		case <-hup:
			return true
		case <-time.After(500 * time.Millisecond):
			return false
		}
	}

	if out := run(t, t0, "reload", "--config", cfg, "--pid", self); !strings.Contains(out, "reloading") || !got() {
		t.Fatalf("valid config: no SIGHUP (%s)", out)
	}
	os.MkdirAll(filepath.Join(dir, "config.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "config.d", "10-typo.yaml"), []byte("health:\n  policy:\n    attributed: [opps]\n"), 0o644)
	out, code := runCode(t, t0, "reload", "--config", cfg, "--pid", self)
	if code != 1 || !strings.Contains(out, "keeps its current one") || !strings.Contains(out, "opps") {
		t.Fatalf("bad config: exit %d\n%s", code, out)
	}
	if got() {
		t.Fatal("a refused configuration still signalled the daemon")
	}
	if _, code := runCode(t, t0, "reload", "--config", cfg); code != 2 {
		t.Fatalf("no --pid: exit %d, want 2", code)
	}
}
