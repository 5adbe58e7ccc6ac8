package cli

import (
	"strings"
	"testing"
)

func TestSimulate(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"good patch", []string{"--hosts", "5000"}, 0, []string{"fleet: 5000 hosts", "patched: 50% after", "99% after", "reboots: 45 days, 15x slower"}},
		{"bad patch", []string{"--hosts", "5000", "--crash-rate", "0.05", "--canary", "0.05"}, 0,
			[]string{"budget exceeded after", "revoked at", "revocation reached 99%", "exposed:"}},
		{"the brief's flag names", []string{"--hosts", "5000", "--crash-prob", "0.05", "--revoke-per-1000", "2", "--canary", "0.05"}, 0,
			[]string{"pull back above 2.0 per 1000", "revoked at"}},
		{"rare crashes", []string{"--hosts", "5000", "--crash-rate", "1e-9"}, 0, []string{"never revoked"}},
		{"bad jitter", []string{"--jitter", "1.5"}, 2, []string{"jitter"}},
		{"stray argument", []string{"now"}, 2, []string{"unexpected arguments"}},
	}
	for _, tt := range tests {
		out, code := runCode(t, t0, append([]string{"simulate"}, tt.args...)...)
		if code != tt.code {
			t.Errorf("%s: exit %d, want %d\n%s", tt.name, code, tt.code, out)
		}
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: no %q in\n%s", tt.name, w, out)
			}
		}
	}
}
