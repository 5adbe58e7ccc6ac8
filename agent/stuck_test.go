package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/manifest"
)

// stuck is a source step that, the first time, blocks until the test
// ends, whatever its context says: a syscall that cancellation cannot
// reach (open(2) of a FIFO, a hard NFS mount). Later calls fail at once.
type stuck struct {
	hit, release chan struct{}
	once         sync.Once
	calls        int
	mu           sync.Mutex
}

func newStuck(t *testing.T) *stuck {
	s := &stuck{hit: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(s.unblock)
	return s
}

// unblock lets the stuck call return.
func (s *stuck) unblock() { s.once.Do(func() { close(s.release) }) }

// block is the stuck call: true for the first, which returns only at the
// test's end.
func (s *stuck) block() bool {
	s.mu.Lock()
	s.calls++
	first := s.calls == 1
	s.mu.Unlock()
	if first {
		close(s.hit)
		<-s.release
	}
	return first
}

// stuckDownloader is an RPM download stuck for ever.
type stuckDownloader struct{ *stuck }

func (s stuckDownloader) Download(context.Context, string, io.Writer, int64) (int64, error) {
	s.block()
	return 0, errors.New("mirror down")
}

// stuckStore is a poll stuck for ever, in the version check.
type stuckStore struct {
	*stuck
	manifest.MemVersionStore
}

func (s *stuckStore) Check(v uint64, sum string) error {
	if s.block() {
		return errors.New("released")
	}
	return s.MemVersionStore.Check(v, sum)
}

// signed is a signed manifest offering levels, its RPMs named relative to it.
func (h *host) signed(key ed25519.PrivateKey, levels ...int) []byte {
	h.t.Helper()
	payload, err := manifest.Marshal(h.manifest(levels).Manifest)
	if err != nil {
		h.t.Fatal(err)
	}
	env, err := manifest.SignPayload(context.Background(), payload, manifest.NewSigner(key))
	if err != nil {
		h.t.Fatal(err)
	}
	return env
}

// A health event and its rollback never wait on a poll or a download,
// whatever the transport and however stuck it is: the stuck job is
// dropped, its ending discarded. On the old code the loop cancelled the
// job and waited for it to return, so each of these held the oops's
// rollback for ever (this test then fails on its 5 s bound, not hangs).
func TestRollbackNeverWaitsOnAStuckJob(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	trust := manifest.Trust{Keys: manifest.Keyring{manifest.KeyID(pub): pub}, Threshold: 1}
	for _, tt := range []struct {
		name string
		// setup gives the agent its source; a stuck one is returned.
		setup func(t *testing.T, h *host) *stuck
	}{
		{"poll ignoring its context", func(t *testing.T, h *host) *stuck {
			h.publish(priv, 1, []int{1})
			h.polls(pub)
			s := &stuckStore{stuck: newStuck(t)}
			h.source.Store = s
			return s.stuck
		}},
		{"download ignoring its context", func(t *testing.T, h *host) *stuck {
			h.publish(priv, 1, []int{1, 2})
			h.polls(pub)
			s := stuckDownloader{newStuck(t)}
			h.agent.d.Downloader = s
			return s.stuck
		}},
		{"FIFO as the manifest of a directory source", func(t *testing.T, h *host) *stuck {
			dir := t.TempDir()
			if err := syscall.Mkfifo(filepath.Join(dir, manifest.DirManifest), 0o644); err != nil {
				t.Fatal(err)
			}
			h.dirSource(dir, trust)
			return nil
		}},
		{"FIFO as an RPM of a directory source", func(t *testing.T, h *host) *stuck {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, manifest.DirManifest), h.signed(priv, 1, 2), 0o644)
			if err := syscall.Mkfifo(filepath.Join(dir, h.patches[2].URL), 0o644); err != nil {
				t.Fatal(err)
			}
			h.dirSource(dir, trust)
			return nil
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHost(t, 1, 2)
			h.converge([]int{1})
			h.soak()
			s := tt.setup(t, h)
			events := make(chan health.Event, 1)
			d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}, Events: events}
			stop := runLoopBounded(t, d)
			if s != nil {
				select {
				case <-s.hit:
				case <-time.After(10 * time.Second):
					t.Fatal("the job never started")
				}
			} else {
				// The FIFO: refused at once now; the old code sat in open(2).
				waitUpTo(5*time.Second, func() bool {
					return strings.Contains(h.rec.String(), "error") || strings.Contains(h.rec.String(), "ok=false")
				})
			}
			events <- health.Event{Kind: health.KindOops, Header: "BUG: kernel NULL pointer dereference, address: 0000000000000000",
				Lines: []string{"Oops: 0000 [#1] PREEMPT SMP NOPTI"}, RIP: health.Frame{Func: "cmdline_proc_show", Module: "klp_cmdline_1"}}
			deadline := time.Now().Add(5 * time.Second) // it takes milliseconds
			for h.kernel.Patched("cmdline_proc_show") != "" {
				if time.Now().After(deadline) {
					t.Fatal("the oops was not rolled back within 5 s: the loop waits on the stuck job")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if s != nil {
				// The dropped job ends at last: what it returns is
				// discarded, and polling goes on.
				polls := func() int { return strings.Count(h.rec.String(), "poll ") }
				n := polls()
				s.unblock()
				waitFor(t, "a poll after the dropped job ended", func() bool { return polls() > n })
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			k := h.agent.State().Kernels[krel]
			if !k.IsBlocked("klp_cmdline_1", 1, h.patches[1].SHA256) || k.Current != nil || k.Target != nil || k.Phase != state.PhaseNone {
				t.Fatalf("after the rollback: phase %s, current %v, target %v, blocked %+v", k.Phase, k.Current, k.Target, k.Blocked)
			}
		})
	}
}

// dirSource gives the agent a directory source at dir.
func (h *host) dirSource(dir string, trust manifest.Trust) {
	h.t.Helper()
	f, err := manifest.NewFetcher(manifest.FetcherConfig{URL: dir, Timeout: time.Hour})
	if err != nil {
		h.t.Fatal(err)
	}
	h.source = &manifest.Source{Fetcher: f, Trust: trust, Store: &manifest.MemVersionStore{}, Now: func() time.Time { return h.now }}
	h.restart()
}

// waitUpTo waits for cond, at most d; it does not fail.
func waitUpTo(d time.Duration, cond func() bool) {
	for end := time.Now().Add(d); !cond() && time.Now().Before(end); {
		time.Sleep(5 * time.Millisecond)
	}
}

// runLoopBounded is runLoop whose stop gives up after 10 s (the old loop
// waited on a stuck job at its stop too): the test fails, it does not hang.
func runLoopBounded(t *testing.T, d *Loop) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = errors.New("the loop did not stop within 10 s")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return stop
}
