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

// TestStatus reads a recorded state and a sysfs tree (plain files under a
// test root) and reports both, including a livepatch the agent did not load.
func TestStatus(t *testing.T) {
	root, stateDir, keys := t.TempDir(), t.TempDir(), t.TempDir()
	writeHostRoot(t, root, testKernel, "0123456789abcdef0123456789abcdef")
	for _, lp := range []struct{ name, enabled string }{{"klp_cmdline_2", "1"}, {"vendor_fix", "1"}} {
		d := filepath.Join(root, "sys/kernel/livepatch", lp.name)
		os.MkdirAll(filepath.Join(d, "vmlinux"), 0o755)
		os.WriteFile(filepath.Join(d, "enabled"), []byte(lp.enabled+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "transition"), []byte("0\n"), 0o644)
	}
	sha := func(i int) string { return fmt.Sprintf("%064x", i) }
	cur := state.PatchRecord{Name: "klp_cmdline_2", Level: 2, SHA256: sha(2), Size: 10, Applied: t0}
	st := &state.State{Kernels: map[string]*state.Kernel{testKernel: {
		Phase: state.PhaseSoaking, Current: &cur, SoakUntil: t0.Add(30 * time.Minute),
		Good: []state.PatchRecord{{Name: "klp_cmdline_1", Level: 1, SHA256: sha(1), Size: 10}},
		Blocked: []state.Blocked{{PatchRecord: state.PatchRecord{Name: "klp_cmdline_3", Level: 3, SHA256: sha(3), Size: 10}, Reason: "oops attributed to klp_cmdline_3", At: t0,
			Evidence: []string{"BUG: kernel NULL pointer dereference", "Oops: 0002 [#1] PREEMPT SMP NOPTI", "RIP: 0010:klp_fault+0x5/0x10 [klp_cmdline_3]", "Call Trace:", "l5", "l6", "l7"}}},
	}}, LastPoll: &state.Poll{At: t0, OK: true, ManifestVersion: 7},
		Events: []state.Event{{At: t0, Kind: "warning", Source: "taint", Header: "kernel taint W appeared", Patch: "klp_cmdline_2"},
			{At: t0, Kind: "oops", Source: "kmsg", Header: "BUG: kernel NULL pointer dereference", Patch: "klp_cmdline_3", Attributed: true, RolledBack: true}}}
	if err := (&state.Store{Dir: stateDir}).Save(st); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte("trust:\n  keys_dir: "+keys+"\npaths:\n  root: "+root+"\n  state_dir: "+stateDir+"\n"), 0o644)

	out := run(t, t0.Add(10*time.Minute), "status", "--config", cfg, "--json")
	var s agent.Status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if s.Phase != state.PhaseSoaking || s.Applied == nil || s.Applied.Level != 2 || s.SoakLeft != "20m0s" ||
		len(s.Blocked) != 1 || len(s.Livepatches) != 2 || s.LastPoll.ManifestVersion != 7 || len(s.Events) != 2 {
		t.Fatalf("status: %+v", s)
	}
	owners := map[string]string{}
	for _, l := range s.Livepatches {
		owners[l.Name] = l.Owner
	}
	if owners["klp_cmdline_2"] != "klp-agent" || owners["vendor_fix"] != "foreign" {
		t.Fatalf("owners %v", owners)
	}
	text := run(t, t0.Add(10*time.Minute), "status", "--config", cfg)
	for _, want := range []string{"state:      soaking (soak ends in 20m0s)", "applied:    klp_cmdline_2 level 2", "klp_cmdline_3@3", "oops attributed", "vendor_fix", "foreign", "good:       klp_cmdline_1@1",
		"    RIP: 0010:klp_fault", "... 3 more evidence lines in status --json",
		"health events (last 2):", "taint/warning (while klp_cmdline_2 applied): kernel taint W appeared",
		"kmsg/oops (rolled back klp_cmdline_3): BUG: kernel NULL pointer dereference"} {
		if !strings.Contains(text, want) {
			t.Errorf("status text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "l5") || len(s.Blocked[0].Evidence) != 7 {
		t.Errorf("evidence: the human status shows the head, --json all of it:\n%s", text)
	}
	// The recorded patch missing from the kernel is called out.
	os.WriteFile(filepath.Join(root, "sys/kernel/livepatch/klp_cmdline_2/enabled"), []byte("0\n"), 0o644)
	if text := run(t, t0, "status", "--config", cfg); !strings.Contains(text, "problem:    recorded patch klp_cmdline_2@2 is not enabled") {
		t.Errorf("status does not flag the disabled patch:\n%s", text)
	}
	// An enabled kpatch.service with modules for this kernel would load them
	// at boot behind the agent's back.
	os.MkdirAll(filepath.Join(root, "etc/systemd/system/multi-user.target.wants"), 0o755)
	os.Symlink("/usr/lib/systemd/system/kpatch.service", filepath.Join(root, "etc/systemd/system/multi-user.target.wants/kpatch.service"))
	if text := run(t, t0, "status", "--config", cfg); strings.Contains(text, "kpatch.service") {
		t.Errorf("kpatch.service without modules is no problem:\n%s", text)
	}
	os.MkdirAll(filepath.Join(root, "var/lib/kpatch", testKernel), 0o755)
	os.WriteFile(filepath.Join(root, "var/lib/kpatch", testKernel, "kpatch-3.ko"), []byte("x"), 0o644)
	if text := run(t, t0, "status", "--config", cfg); !strings.Contains(text, "problem:    kpatch.service is enabled and loads 1 module(s) at boot") ||
		!strings.Contains(text, "/var/lib/kpatch/"+testKernel+"/kpatch-3.ko") {
		t.Errorf("status does not flag kpatch.service:\n%s", text)
	}
}
