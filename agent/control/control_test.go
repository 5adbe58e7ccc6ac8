package control

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/state"
)

func serve(t *testing.T, dir string, h Handler) (stop func()) {
	t.Helper()
	s, err := Listen(dir, "klp-agent.sock")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx, h); close(done) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// The socket is root's alone: 0600 in a 0700 directory (a looser one is
// tightened), and it is removed when the server stops.
func TestListenModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "control")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stop := serve(t, dir, func(context.Context, agent.ControlRequest) (agent.ControlResult, error) {
		return agent.ControlResult{OK: true}, nil
	})
	for p, want := range map[string]os.FileMode{dir: os.ModeDir | 0o700, filepath.Join(dir, "klp-agent.sock"): os.ModeSocket | 0o600} {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v %v, want %v", p, fi.Mode(), err, want)
		}
	}
	stop()
	if _, err := os.Lstat(filepath.Join(dir, "klp-agent.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after stop: %v", err)
	}
}

// Listen never goes through a planted symlink, and replaces only a
// socket (a daemon killed before it removed its own).
func TestListenRefusesUnsafePaths(t *testing.T) {
	base := t.TempDir()
	elsewhere := t.TempDir()
	link := filepath.Join(base, "link")
	os.Symlink(elsewhere, link)
	if _, err := Listen(link, "klp-agent.sock"); !errors.Is(err, ErrUnsafe) {
		t.Errorf("symlinked directory: %v", err)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("created through the symlink: %v", ents)
	}
	dir := filepath.Join(base, "control")
	os.Mkdir(dir, 0o700)
	for name, plant := range map[string]func(p string) error{
		"file":    func(p string) error { return os.WriteFile(p, []byte("keep"), 0o600) },
		"symlink": func(p string) error { return os.Symlink(filepath.Join(elsewhere, "target"), p) },
	} {
		p := filepath.Join(dir, name)
		if err := plant(p); err != nil {
			t.Fatal(err)
		}
		if _, err := Listen(dir, name); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "is not a socket") {
			t.Errorf("%s at the socket path: %v", name, err)
		}
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s removed: %v", name, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(elsewhere, "target")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("created the symlink's target: %v", err)
	}
	// A stale socket: replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "stale"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	s, err := Listen(dir, "stale")
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	s.ln.Close()
}

// Ask tells nothing listening (nothing sent) from a request sent and not
// answered (no verdict), and returns the handler's verdict as it is.
func TestAsk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "control")
	ctx := context.Background()
	if _, err := Ask(ctx, dir, "klp-agent.sock", agent.ControlRequest{Op: agent.OpHold}, time.Second); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("no directory: %v", err)
	}
	release := make(chan struct{})
	stop := serve(t, dir, func(ctx context.Context, req agent.ControlRequest) (agent.ControlResult, error) {
		switch req.Op {
		case agent.OpHold:
			return agent.ControlResult{OK: false, Message: "refused: " + req.By}, nil
		case agent.OpPoll:
			<-release
			return agent.ControlResult{}, errors.New("stopping")
		}
		<-ctx.Done()
		return agent.ControlResult{}, ctx.Err()
	})
	res, err := Ask(ctx, dir, "klp-agent.sock", agent.ControlRequest{Op: agent.OpHold, Operator: state.Operator{By: "bob"}}, time.Second)
	if err != nil || res.OK || res.Message != "refused: bob" {
		t.Fatalf("verdict: %+v %v", res, err)
	}
	close(release)
	if res, err := Ask(ctx, dir, "klp-agent.sock", agent.ControlRequest{Op: agent.OpPoll}, 10*time.Second); !errors.Is(err, ErrNoAnswer) || res.OK {
		t.Fatalf("handler without a verdict: %+v %v", res, err)
	}
	if _, err := Ask(ctx, dir, "klp-agent.sock", agent.ControlRequest{Op: agent.OpRollback}, 50*time.Millisecond); !errors.Is(err, ErrNoAnswer) ||
		!strings.Contains(err.Error(), "within 50ms") {
		t.Fatalf("no answer in time: %v", err)
	}
	stop()
	if _, err := Ask(ctx, dir, "klp-agent.sock", agent.ControlRequest{Op: agent.OpHold}, time.Second); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("after stop: %v", err)
	}
}
