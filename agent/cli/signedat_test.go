package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/manifest"
)

// manifest sign --signed-at records the signing time in the payload;
// without it the payload is what agents without signed_at read.
func TestSignSignedAt(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 500, time.UTC)
	dir := t.TempDir()
	run(t, now, "manifest", "keygen", "--out", filepath.Join(dir, "k"))
	src := filepath.Join(dir, "m.yaml")
	if err := os.WriteFile(src, []byte("schema: 1\nversion: 1\nexpires: 2026-12-10T00:00:00Z\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		flag bool
		want string
	}{{true, `"signed_at":"2026-11-30T12:00:00Z"`}, {false, ""}} {
		out := filepath.Join(dir, "signed.json")
		args := []string{"manifest", "sign", "--in", src, "--key", filepath.Join(dir, "k.key"), "--out", out}
		if tc.flag {
			args = append(args, "--signed-at")
		}
		run(t, now, args...)
		p, err := manifest.EnvelopePayload(readFile(t, out))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(string(p), "signed_at"); got != tc.flag || (tc.flag && !strings.Contains(string(p), tc.want)) {
			t.Fatalf("--signed-at=%v: payload %s", tc.flag, p)
		}
	}
	if out, code := runCode(t, now, "manifest", "sign", "--in", src, "--key", filepath.Join(dir, "k.key"), "--out", filepath.Join(dir, "y.json"), "--format", "yaml", "--signed-at"); code != 2 {
		t.Fatalf("--signed-at with yaml: exit %d\n%s", code, out)
	}
}
