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

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/daemon"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/agent/window"
	"github.com/klp-agent/klp-agent/manifest"
)

// goldenStatus is a status with every part filled in: a running daemon, a
// manifest with annotations, an applied patch with what it fixes, a wanted
// one held back by a hold, a pin and a closed window.
func goldenStatus() *agent.Status {
	sha := func(i int) string { return fmt.Sprintf("%064x", i) }
	p1 := manifest.Patch{Kernel: testKernel, Name: "klp_cmdline_1", Level: 1, URL: "rpms/klp-cmdline-1.rpm", SHA256: sha(1), Size: 10,
		Description: "cmdline_proc_show reads past saved_command_line", CVEs: []string{"CVE-2026-12345"}, Advisory: "DSA-5999-1",
		Annotations: map[string]string{"risk": "low"}}
	p2 := manifest.Patch{Kernel: testKernel, Name: "klp_cmdline_2", Level: 2, URL: "rpms/klp-cmdline-2.rpm", SHA256: sha(2), Size: 10,
		CVEs: []string{"CVE-2026-20001", "CVE-2026-20002"}}
	op := state.Operator{By: "alice via sudo (uid 0)", At: t0.Add(-time.Hour), Reason: "change freeze"}
	age := int64(26 * 3600)
	s := &agent.Status{
		Schema: agent.StatusSchema, At: t0.Add(time.Minute),
		Kernel: testKernel, Phase: state.PhaseGood,
		Applied:      &state.PatchRecord{Name: p1.Name, Level: 1, SHA256: sha(1), Size: 10, Applied: t0.Add(-48 * time.Hour)},
		AppliedEntry: &p1,
		Wanted:       &p2, WantedReason: "chosen: highest eligible level (host bucket 3.00 < rollout 100.00%)",
		Good:        []state.PatchRecord{{Name: p1.Name, Level: 1, SHA256: sha(1), Size: 10}},
		Blocked:     []state.Blocked{},
		LastPoll:    &state.Poll{At: t0, OK: true, ManifestVersion: 9, Next: t0.Add(15 * time.Minute), LastOK: t0},
		Livepatches: []agent.LivepatchRow{},
		Events:      []state.Event{},
		Manifest: &agent.ManifestInfo{Version: 9, Expires: t0.Add(14 * 24 * time.Hour), Accepted: t0.Add(-26 * time.Hour), Age: "26h0m0s", AgeSeconds: &age,
			Annotations: map[string]string{"publisher": "kernel-team@example"}},
		Controls: agent.Controls{Hold: &state.Hold{Operator: op, Until: t0.Add(24 * time.Hour)}, Pin: &state.Pin{Operator: op, Level: 3},
			Windows: "tue,thu 02:00-04:00 UTC", NextWindow: t0.Add(14 * time.Hour),
			MaintenanceWindows: []window.Spec{{Days: []string{"tue", "thu"}, Start: "02:00", End: "04:00", Timezone: "UTC"}},
			Waiting:            "held by alice via sudo (uid 0) (change freeze) until 2026-11-26T12:00:00Z"},
		Configured:          true,
		Daemon:              &agent.DaemonInfo{PID: 4242, Since: t0.Add(-72 * time.Hour), Version: "1.4.0", Written: t0, Running: true, LockHolder: 4242},
		PollIntervalSeconds: 900, PollJitter: 0.2,
	}
	s.Finish()
	return s
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs (UPDATE_GOLDEN=1 to accept):\n%s", path, got)
	}
}

func TestStatusGolden(t *testing.T) {
	var buf bytes.Buffer
	writeStatus(&Env{Stdout: &buf}, goldenStatus())
	golden(t, "status.golden.txt", buf.Bytes())
	b, err := daemon.MarshalStatus(goldenStatus())
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "status.golden.json", b)
}

// Without a readable configuration (a non-root user, or none installed)
// status reads the daemon's snapshot; without that either, --check says
// "not configured" with code 3.
func TestStatusFromSnapshotAndCheckCodes(t *testing.T) {
	dir := t.TempDir()
	snap := filepath.Join(dir, "status.json")
	noConfig := filepath.Join(dir, "missing.yaml")
	out, code := runCode(t, t0, "status", "--config", noConfig, "--snapshot", snap, "--check")
	if code != agent.CheckNotConfigured || !strings.HasPrefix(out, "not configured: ") {
		t.Fatalf("no config, no snapshot: exit %d\n%s", code, out)
	}
	s := goldenStatus()
	s.Daemon.PID = os.Getpid() // alive
	b, _ := json.Marshal(s)
	os.WriteFile(snap, b, 0o644)
	out, code = runCode(t, t0, "status", "--config", noConfig, "--snapshot", snap, "--check")
	if code != agent.CheckPending || !strings.Contains(out, "update pending: klp_cmdline_2@2 wanted, level 1 applied; held by alice") {
		t.Fatalf("held: exit %d\n%s", code, out)
	}
	out = run(t, t0, "status", "--config", noConfig, "--snapshot", snap)
	if !strings.Contains(out, fmt.Sprintf("daemon:     running, pid %d", os.Getpid())) || !strings.Contains(out, "from the daemon's snapshot") {
		t.Fatalf("status from the snapshot:\n%s", out)
	}
	s.Blocked = []state.Blocked{{PatchRecord: state.PatchRecord{Name: "klp_cmdline_2", Level: 2}, Reason: "oops"}}
	b, _ = json.Marshal(s)
	os.WriteFile(snap, b, 0o644)
	if out, code = runCode(t, t0, "status", "--config", noConfig, "--snapshot", snap, "--check"); code != agent.CheckDegraded {
		t.Fatalf("blocked: exit %d\n%s", code, out)
	}
}

// explain shows the manifest's annotations and what each entry fixes.
func TestExplainGolden(t *testing.T) {
	s := goldenStatus()
	m := &manifest.Manifest{Schema: 1, Version: 9, Expires: t0.Add(14 * 24 * time.Hour), Patches: []manifest.Patch{*s.AppliedEntry, *s.Wanted},
		Annotations: map[string]string{"publisher": "kernel-team@example"}}
	v := &manifest.Verified{Manifest: m, KeyIDs: []string{"k1"}}
	d := manifest.Select(m, manifest.Host{ID: "host-1", Kernel: testKernel}, t0, nil)
	var buf bytes.Buffer
	writeDecision(&Env{Stdout: &buf}, "https://mirror.example/manifest.json", v, d)
	golden(t, "explain.golden.txt", buf.Bytes())
}

// Every field of the status JSON is listed in docs/status-json.md: a
// record's or an entry's fields under record. and entry.
func TestStatusJSONDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/status-json.md")
	if err != nil {
		t.Fatal(err)
	}
	b, err := daemon.MarshalStatus(goldenStatus())
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	alias := map[string]string{"applied": "record", "good[]": "record", "blocked[]": "record", "wanted": "entry", "applied_entry": "entry"}
	var walk func(v any, path string)
	walk = func(v any, path string) {
		if path != "" && !strings.HasSuffix(path, "[]") && !strings.Contains(string(doc), "`"+path+"`") {
			t.Errorf("docs/status-json.md does not list `%s`", path)
		}
		switch v := v.(type) {
		case map[string]any:
			if strings.HasSuffix(path, "annotations") {
				return // the publisher's own keys
			}
			for k, x := range v {
				p := k
				if path != "" {
					p = path + "." + k
				}
				if a, ok := alias[path]; ok {
					p = a + "." + k
				}
				walk(x, p)
			}
		case []any:
			for _, x := range v {
				if _, ok := x.(map[string]any); ok { // a list of strings is its field
					walk(x, path+"[]")
				}
			}
		}
	}
	walk(v, "")
}
