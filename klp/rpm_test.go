package klp_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
