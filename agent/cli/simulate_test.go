package cli

import (
	"strings"
	"testing"
)

func TestSimulate(t *testing.T) {
	out := run(t, t0, "simulate", "--hosts", "5000")
	for _, want := range []string{"fleet: 5000 hosts", "patched: 50% after", "99% after", "reboots: 45 days"} {
		if !strings.Contains(out, want) {
			t.Errorf("good patch: no %q in\n%s", want, out)
		}
	}
	out = run(t, t0, "simulate", "--hosts", "5000", "--crash-rate", "0.05", "--canary", "0.05")
	for _, want := range []string{"budget exceeded after", "revoked at", "exposed:"} {
		if !strings.Contains(out, want) {
			t.Errorf("bad patch: no %q in\n%s", want, out)
		}
	}
	if _, code := runCode(t, t0, "simulate", "--jitter", "1.5"); code != 2 {
		t.Errorf("bad jitter: exit %d, want 2", code)
	}
}
