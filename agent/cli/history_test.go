package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent/history"
	"github.com/klp-agent/klp-agent/agent/state"
)

// goldenHistory has one event of every kind.
func goldenHistory() []history.Event {
	sha := fmt.Sprintf("%064x", 2)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	op := "alice via sudo (uid 0)"
	return []history.Event{
		{Time: at(0), Kind: history.KindApply, Kernel: testKernel, Patch: "klp_cmdline_1", Level: 1, SHA256: sha, Duration: 1840 * time.Millisecond},
		{Time: at(30), Kind: history.KindGood, Kernel: testKernel, Patch: "klp_cmdline_1", Level: 1, Duration: 30 * time.Minute},
		{Time: at(40), Kind: history.KindStall, Kernel: testKernel, Patch: "klp_cmdline_2", Level: 2, Duration: time.Minute, Reason: "transition stalled: pid 42 (fio)"},
		{Time: at(60), Kind: history.KindApply, Kernel: testKernel, Patch: "klp_cmdline_2", Level: 2, Duration: 2 * time.Second},
		{Time: at(65), Kind: history.KindBlock, Kernel: testKernel, Patch: "klp_cmdline_2", Level: 2, Cause: "health", Reason: "oops attributed to klp_cmdline_2",
			Evidence: []string{"BUG: kernel NULL pointer dereference, address: 0000000000000000", "RIP: cmdline_proc_show+0x1a/0x40 [klp_cmdline_2]"}},
		{Time: at(65), Kind: history.KindRollback, Kernel: testKernel, Patch: "klp_cmdline_2", Level: 2, Cause: "health", Reason: "oops attributed to klp_cmdline_2",
			To: "klp_cmdline_1@1", Duration: 412 * time.Millisecond},
		{Time: at(90), Kind: history.KindUnblock, Kernel: testKernel, Patch: "klp_cmdline_2", Level: 2, Operator: op, Reason: "false positive:\x1b[31m fixed"},
		{Time: at(91), Kind: history.KindHold, Kernel: testKernel, Operator: op, Reason: "change freeze", Until: at(91 + 24*60)},
		{Time: at(92), Kind: history.KindPin, Kernel: testKernel, Level: 1, Operator: op, Reason: "requested with klp-agent pin"},
		{Time: at(93), Kind: history.KindUnpin, Kernel: testKernel, Operator: op},
		{Time: at(94), Kind: history.KindResume, Kernel: testKernel, Operator: op},
		{Time: at(120), Kind: history.KindKillSwitch, Kernel: testKernel, Patch: "klp_cmdline_1", Level: 1, Reason: "klp_agent.enable=0 on the kernel command line"},
		{Time: at(180), Kind: history.KindReapply, Kernel: testKernel, Patch: "klp_cmdline_1", Level: 1, Duration: 950 * time.Millisecond},
		{Time: at(200), Kind: history.KindUninstall, Kernel: testKernel, Patch: "klp_cmdline_1", Level: 1, Operator: op, To: "no patch"},
	}
}

func TestHistoryGolden(t *testing.T) {
	var buf bytes.Buffer
	writeHistory(&buf, goldenHistory(), 1)
	golden(t, "history.golden.txt", buf.Bytes())
	buf.Reset()
	if err := writeHistoryJSON(&buf, goldenHistory(), 1); err != nil {
		t.Fatal(err)
	}
	golden(t, "history.golden.json", buf.Bytes())
}

// `klp-agent history` reads the state directory's history (a control taken
// without a daemon is in it), --since narrows it, --json parses.
func TestHistoryCommand(t *testing.T) {
	root, stateDir, keys := t.TempDir(), t.TempDir(), t.TempDir()
	writeHostRoot(t, root, testKernel, "0123456789abcdef0123456789abcdef")
	os.WriteFile(filepath.Join(root, "proc/cmdline"), []byte("ro\n"), 0o644)
	if err := (&state.Store{Dir: stateDir}).Save(&state.State{}); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte("trust:\n  keys_dir: "+keys+"\npaths:\n  root: "+root+"\n  state_dir: "+stateDir+"\n  status_file: "+filepath.Join(stateDir, "none.json")+"\n"), 0o644)
	if out := run(t, t0, "history", "--config", cfg); out != "no events recorded\n" {
		t.Fatalf("empty history: %q", out)
	}
	// The controls taken without a daemon record the agent's own (wall) time.
	run(t, t0, "hold", "--config", cfg, "--reason", "change freeze")
	run(t, t0, "resume", "--config", cfg)
	now := time.Now()
	out := run(t, now, "history", "--config", cfg)
	if !strings.Contains(out, "  "+testKernel+"  hold    -      until resumed; by ") || !strings.Contains(out, "; change freeze\n") ||
		!strings.Contains(out, "  resume  -      by ") {
		t.Fatalf("history:\n%s", out)
	}
	for _, tt := range []struct {
		since string
		n     int
	}{{"1h", 2}, {now.Add(time.Hour).UTC().Format(time.RFC3339), 0}} {
		var got historyJSON
		if err := json.Unmarshal([]byte(run(t, now, "history", "--config", cfg, "--json", "--since", tt.since)), &got); err != nil {
			t.Fatal(err)
		}
		if len(got.Events) != tt.n || (tt.n > 0 && got.Events[1].Kind != history.KindResume) {
			t.Fatalf("--since %s: %+v", tt.since, got)
		}
	}
	if _, code := runCode(t, t0, "history", "--config", cfg, "--since", "soon"); code != 2 {
		t.Fatalf("--since soon: exit %d", code)
	}
}
