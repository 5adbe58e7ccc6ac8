package klp_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/klp"
)

// TestRPMInstallUpgradeDowngradeErase drives the real rpm against a test
// root: level 1, upgrade to 2, step back to 1, erase.
func TestRPMInstallUpgradeDowngradeErase(t *testing.T) {
	dir := t.TempDir()
	root := t.TempDir()
	r := &klp.RPM{Runner: klp.ExecRunner{}, Root: root}
	ctx := context.Background()
	rpms := map[int]string{}
	for lvl := 1; lvl <= 2; lvl++ {
		rpms[lvl] = rpmtest.Build(t, dir, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_" + string(rune('0'+lvl)), Level: lvl, KernelRelease: "6.1.0-28-amd64"})
	}
	ko := func(lvl int) string {
		return filepath.Join(root, "usr/lib/klp-agent/livepatches/6.1.0-28-amd64/klp_cmdline_"+string(rune('0'+lvl))+".ko")
	}
	steps := []struct {
		level   int
		version string
	}{{1, "1-1"}, {2, "2-1"}, {1, "1-1"}, {1, "1-1"}}
	for _, s := range steps {
		if err := r.Install(ctx, rpms[s.level]); err != nil {
			t.Fatalf("install level %d: %v", s.level, err)
		}
		v, err := r.Installed(ctx, "klp-cmdline")
		if err != nil || v != s.version {
			t.Fatalf("after level %d installed version %q, %v", s.level, v, err)
		}
		if _, err := os.Stat(ko(s.level)); err != nil {
			t.Fatalf("level %d module not on disk: %v", s.level, err)
		}
	}
	if _, err := os.Stat(ko(2)); !os.IsNotExist(err) {
		t.Fatal("stepping back left the level 2 module on disk")
	}
	if err := r.Erase(ctx, "klp-cmdline"); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Installed(ctx, "klp-cmdline"); err != nil || v != "" {
		t.Fatalf("after erase: %q %v", v, err)
	}
	if err := r.Install(ctx, filepath.Join(dir, "missing.rpm")); err == nil || !strings.Contains(err.Error(), "missing.rpm") {
		t.Fatalf("missing file: %v", err)
	}
	// rpmkeys passes an unsigned package on digests alone; CheckSig must not.
	if err := r.CheckSig(ctx, rpms[1]); !errors.Is(err, klp.ErrSignature) || !strings.Contains(err.Error(), "not signed") {
		t.Fatalf("unsigned package: %v, want ErrSignature (not signed)", err)
	}
}

// A cancelled command gets SIGTERM and the time to finish (rpm defers the
// signal to the end of its transaction); SIGKILL at once would cut rpm
// between two headers.
func TestExecRunnerCancelTerminates(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	go func() {
		for {
			if b, _ := os.ReadFile(out); strings.Contains(string(b), "started") {
				close(started)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	go func() { <-started; cancel() }()
	script := `trap 'echo term >>"$1"' TERM; echo started >"$1"; i=0; while [ $i -lt 10 ]; do sleep 0.05; i=$((i+1)); done; echo finished >>"$1"`
	_, err := klp.ExecRunner{}.Run(ctx, "sh", "-c", script, "sh", out)
	if err == nil {
		t.Fatal("a cancelled command reports no error")
	}
	b, _ := os.ReadFile(out)
	if got := strings.Fields(string(b)); !slices.Equal(got, []string{"started", "term", "finished"}) {
		t.Fatalf("the command saw %q, want started, term, finished (run error %v)", got, err)
	}
}

// rpm transactions run to their end when the agent is asked to stop.
func TestRPMTransactionsOutliveCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rec := &ctxRecorder{}
	r := &klp.RPM{Runner: rec}
	r.Install(ctx, "/x.rpm")
	r.Erase(ctx, "klp-x")
	r.Instances(ctx, "klp-x")
	if want := []string{"-U:<nil>", "-e:<nil>", "-q:context canceled"}; !slices.Equal(rec.seen, want) {
		t.Fatalf("rpm saw contexts %q, want %q", rec.seen, want)
	}
}

type ctxRecorder struct{ seen []string }

func (c *ctxRecorder) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	c.seen = append(c.seen, fmt.Sprintf("%s:%v", args[0], ctx.Err()))
	return nil, nil
}
