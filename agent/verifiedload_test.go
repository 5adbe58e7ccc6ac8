package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/agent/state"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A kept module copy rewritten after it was kept never reaches the kernel,
// at a rollback while the host runs nor at one after a crashed boot: it is
// refused (MsgModuleRefused, naming both hashes), and the good level comes
// from its verified RPM instead. The copy here is rewritten with the bad
// level's own module, the worst case: the old code loaded it, so the
// rollback put the bad patch back (or failed with it still in).
func TestRollbackRefusesARewrittenKeptModule(t *testing.T) {
	live := func(h *host) error {
		return h.agent.Rollback(context.Background(), state.CauseHealth, "oops attributed to klp_cmdline_2", nil, true)
	}
	boot := func(h *host) error {
		h.reboot() // no clean stop: the boot rolls level 2 back
		return nil
	}
	for _, tt := range []struct {
		name     string
		tamper   bool
		rollback func(h *host) error
	}{
		{"live rollback", true, live},
		{"rollback at boot after a crash", true, boot},
		{"untouched copy, live", false, live},
		{"untouched copy, at boot", false, boot},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHost(t, 1, 2)
			core, logs := observer.New(zapcore.DebugLevel)
			h.log = zap.New(core)
			h.restart()
			if err := h.converge([]int{1}); err != nil {
				t.Fatal(err)
			}
			h.soak()
			if err := h.converge([]int{1, 2}); err != nil {
				t.Fatal(err)
			}
			ko, err := state.Layout{Dir: h.stateDir}.Module(h.patches[1].SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if sum := sha256.Sum256(h.kos[1]); h.agent.State().Kernels[krel].Good[0].ModuleSHA256 != hex.EncodeToString(sum[:]) {
				t.Fatalf("good level 1 records module sha256 %q", h.agent.State().Kernels[krel].Good[0].ModuleSHA256)
			}
			if tt.tamper {
				if err := os.WriteFile(ko, h.kos[2], 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := tt.rollback(h); err != nil {
				t.Fatal(err)
			}
			h.expect(state.PhaseGood, 1)
			var refused []string
			for _, e := range logs.FilterField(logging.MessageID(MsgModuleRefused)).All() {
				refused = append(refused, e.Message)
			}
			if !tt.tamper {
				// Loaded from the copy: rpm's copy of level 1 is gone.
				if len(refused) != 0 {
					t.Fatalf("untouched copy refused: %q", refused)
				}
				return
			}
			if len(refused) != 1 || !strings.Contains(refused[0], "kept copy of klp_cmdline_1@1's module refused, not loaded") ||
				!strings.Contains(refused[0], "does not hash to its verified sha256") {
				t.Fatalf("journal says %q, want one refusal of the kept copy", refused)
			}
			// The copy is the verified bytes again, for the next rollback.
			if b, err := os.ReadFile(ko); err != nil || string(b) != string(h.kos[1]) {
				t.Fatalf("kept copy not restored: %v", err)
			}
		})
	}
}
