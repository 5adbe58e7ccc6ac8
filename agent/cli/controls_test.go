package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/state"
)

// With no daemon running the controls change the state directly (the
// daemon reads it at start); status shows them.
func TestControlsWithoutDaemon(t *testing.T) {
	root, stateDir, keys := t.TempDir(), t.TempDir(), t.TempDir()
	writeHostRoot(t, root, testKernel, "0123456789abcdef0123456789abcdef")
	os.WriteFile(filepath.Join(root, "proc/cmdline"), []byte("ro\n"), 0o644)
	sha := func(i int) string { return fmt.Sprintf("%064x", i) }
	st := &state.State{Kernels: map[string]*state.Kernel{testKernel: {Phase: state.PhaseNone,
		Blocked: []state.Blocked{{PatchRecord: state.PatchRecord{Name: "klp_cmdline_3", Level: 3, SHA256: sha(3), Size: 10}, Reason: "false positive", At: t0}}}}}
	if err := (&state.Store{Dir: stateDir}).Save(st); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte("trust:\n  keys_dir: "+keys+"\npaths:\n  root: "+root+"\n  state_dir: "+stateDir+"\n  status_file: "+filepath.Join(stateDir, "none.json")+"\n"), 0o644)
	t.Setenv("SUDO_USER", "alice")

	if out := run(t, t0, "hold", "--config", cfg, "--until", "2h", "--reason", "change freeze"); !strings.Contains(out, "held: no new levels until 2026-11-25T14:00:00Z") {
		t.Fatalf("hold: %s", out)
	}
	if out := run(t, t0, "pin", "--config", cfg, "2"); !strings.Contains(out, "pinned kernel "+testKernel+" at level 2") {
		t.Fatalf("pin: %s", out)
	}
	if out := run(t, t0, "unblock", "--config", cfg, "klp_cmdline_3@3"); !strings.Contains(out, "unblocked klp_cmdline_3@3") {
		t.Fatalf("unblock: %s", out)
	}
	var s agent.Status
	if err := json.Unmarshal([]byte(run(t, t0.Add(time.Hour), "status", "--config", cfg, "--json")), &s); err != nil {
		t.Fatal(err)
	}
	h := s.Controls.Hold
	if h == nil || h.By != fmt.Sprintf("alice via sudo (uid %d)", os.Getuid()) || h.Reason != "change freeze" || !h.Until.Equal(t0.Add(2*time.Hour)) ||
		s.Controls.Pin == nil || s.Controls.Pin.Level != 2 || len(s.Blocked) != 0 || s.Configured {
		t.Fatalf("status after hold, pin, unblock: %+v", s)
	}
	// The hold ends by itself.
	s = agent.Status{}
	if err := json.Unmarshal([]byte(run(t, t0.Add(3*time.Hour), "status", "--config", cfg, "--json")), &s); err != nil || s.Controls.Hold != nil {
		t.Fatalf("hold after its end: %+v %v", s.Controls.Hold, err)
	}
	for _, tt := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"unblock", "klp_cmdline_3@3"}, 1, "is not blocked"},
		{[]string{"unblock", "klp_cmdline_3"}, 2, "NAME@LEVEL"},
		{[]string{"pin", "zero"}, 2, "LEVEL"},
		{[]string{"hold", "--until", "soon"}, 2, "--until"},
		{[]string{"hold", "--until", "2026-11-25T11:00:00Z"}, 2, "not in the future"},
		{[]string{"poll"}, 1, "manifest.url is not set"},
		{[]string{"rollback"}, 1, "klp-agent rollback: rollback: no patch applied\n"},
		{[]string{"hold", "--until", "2027-01-01"}, 0, "held: no new levels until 2027-01-01T00:00:00Z; health watching and rollbacks go on\n"},
		{[]string{"pin", "--clear"}, 0, "pin cleared"},
		{[]string{"resume"}, 0, "resumed"},
		{[]string{"resume"}, 0, "not held"},
	} {
		out, code := runCode(t, t0, append([]string{tt.args[0], "--config", cfg}, tt.args[1:]...)...)
		if code != tt.code || !strings.Contains(out, tt.out) {
			t.Errorf("%v: exit %d, want %d with %q:\n%s", tt.args, code, tt.code, tt.out, out)
		}
	}
}
