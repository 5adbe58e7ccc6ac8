//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
)

// TestSystemRealKernel is the whole system as an operator runs it, and what
// `make demo` shows: the Debian rootfs boots under systemd in qemu, installs
// the agent's own RPM with rpm, and the unit polls signed manifests served by
// nginx on the host. Level 1 goes in, `systemctl reload` moves it to a
// manifest with level 2, then to one with a faulty level 3 that oopses when
// used and is rolled back to 2 and blocked; after a reboot the unit
// re-applies 2 before its first poll; `klp-agent history` lists those steps;
// `rpm -e klp-agent` alone is refused, and `klp-agent uninstall` takes the
// kernel to no patch and erases klp-cmdline and klp-agent together.
// KLP_DEMO_OUT=DIR keeps what the guest saved and a summary there.
func TestSystemRealKernel(t *testing.T) {
	kernelEnv(t)
	start := time.Now()
	work := t.TempDir()
	pub := newPublisher(t, work)
	t.Logf("progress host +%.0fs: agent binary, keys and livepatch RPMs built", time.Since(start).Seconds())
	runCmd(t, repoDir(t), nil, "make", "-s", "rpm", "RPM_RELEASE=e2e")
	t.Logf("progress host +%.0fs: the agent's own RPM built", time.Since(start).Seconds())
	agentRPM := filepath.Join(repoDir(t), "bin", "klp-agent-0.1.0-e2e.x86_64.rpm")
	www, keys, cli := pub.www, pub.keys, pub.cli
	// Three manifest versions, as a publisher releases them: 1; 1+2; 1+2+faulty 3.
	src := filepath.Join(work, "manifest.yaml")
	for i, f := range []string{"klp-cmdline-1-1.x86_64.rpm", "klp-cmdline-2-1.x86_64.rpm", "klp-cmdline-3-1.oops.x86_64.rpm"} {
		cli("manifest", "add", "--manifest", src, "--rpm", pub.stage(f), "--url", "rpms/"+f)
		cli("manifest", "sign", "--in", src, "--key", filepath.Join(keys, "release.key"),
			"--out", filepath.Join(www, fmt.Sprintf("manifest-%d.json", i+1)))
	}
	srv := nginxtest.Start(t, www)
	baseURL := "http://10.0.2.2:" + srv.URL[strings.LastIndex(srv.URL, ":")+1:]

	// The image: the RPM to install, the release key, and site config as an
	// operator's configuration management would drop it in.
	ov := filepath.Join(work, "overlay")
	write := func(path, content string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(ov, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	read := func(path string) string {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	write("root/klp-agent.rpm", read(agentRPM), 0o644)
	write("etc/klp-agent/keys/release.pub", read(filepath.Join(keys, "release.pub")), 0o644)
	write("etc/klp-e2e/base-url", baseURL, 0o644)
	// Boot A is followed by a boot with the kill switch on (phase K).
	write("etc/klp-e2e/killswitch", "", 0o644)
	write("etc/klp-e2e/scenario", read(filepath.Join(repoDir(t), "e2e/guest/scenarios/system.sh")), 0o755)
	write("etc/klp-agent/config.d/50-site.yaml", `# The test fleet: fast polls and a short soak, so the demo takes minutes.
manifest:
  url: `+baseURL+`/manifest-1.json
  poll_interval: 10s
  poll_jitter: 0
  timeout: 20s
  retries: 1
host:
  id: e2e-system-1
apply:
  soak: 10s
  # The unit's ProtectHome hides Debian's default rpm database (~/.rpmdb).
  rpm_dbpath: /var/lib/rpm
metrics:
  textfile: /var/lib/prometheus/node-exporter/klp-agent.prom
`, 0o644)
	write("var/lib/prometheus/node-exporter/.keep", "", 0o644)
	// A watchdog ping every 3 s, so the test sees pings within seconds.
	write("etc/systemd/system/klp-agent.service.d/50-e2e.conf", "[Service]\nWatchdogSec=6s\n", 0o644)

	img := filepath.Join(work, "rootfs.img")
	runCmd(t, repoDir(t), nil, "e2e/guest/mkrootfs.sh", "-o", img, "-O", ov)
	initrd := filepath.Join(work, "rootfs.cpio.gz")
	runCmd(t, repoDir(t), nil, "e2e/guest/mkinitramfs.sh", "-o", initrd, "-r")
	t.Logf("progress host +%.0fs: guest disk image ready; booting it (boot A)", time.Since(start).Seconds())

	timings := map[string]string{}
	check := func(ms []marker, log string, want ...string) {
		t.Helper()
		maps.Copy(timings, checkMarkers(t, ms, log, want...))
	}
	ms, log := bootRootfs(t, work, initrd, img, "systemA", 420*time.Second)
	check(ms, log, "agent-installed", "enabled", "not-started", "unconfigured-calm", "enrolled-held", "ready", "rollback-refused", "enrolled-resumed", "applied-1", "watchdog", "upgraded-2", "reload", "up-to-date", "held", "poll-held",
		"check-held", "resumed", "applied-3", "rolled-back-2", "check-blocked")
	if t.Failed() {
		return
	}
	// The kill switch: klp_agent.enable=0 on the command line.
	ms, log = bootWith(t, work, "systemK", []string{"-i", initrd, "-d", img, "-n", "-t", "240", "-a", "klp_agent.enable=0"}, false)
	check(ms, log, "ready-k", "killswitch-cmdline", "killswitch-nothing-applied", "check-killswitch", "killswitch-status")
	ms, log = bootRootfs(t, work, initrd, img, "systemB", 300*time.Second)
	check(ms, log, "reapplied-2", "active-after-boot", "good-2", "history", "erase-refused", "check-stopped", "agent-erased", "erase-stops", "rpm-kernel-agree")

	out := filepath.Join(work, "out")
	runCmd(t, work, nil, "debugfs", "-R", "rdump /var/lib/klp-e2e/out "+work, img)
	outs := func(name string) string { return read(filepath.Join(out, name)) }

	// Boot A's journal: every transition once, with its MESSAGE_ID and fields.
	ja := journal(t, outs("journal-A.json"))
	wantEntry(t, ja, agent.MsgApplied, "klp_cmdline_1", "1")
	wantEntry(t, ja, agent.MsgGood, "klp_cmdline_1", "1")
	wantEntry(t, ja, agent.MsgApplied, "klp_cmdline_2", "2")
	wantEntry(t, ja, agent.MsgGood, "klp_cmdline_2", "2")
	wantEntry(t, ja, agent.MsgApplied, "klp_oops_3", "3")
	rb := wantEntry(t, ja, agent.MsgRolledBack, "klp_oops_3", "3")
	if r := rb["KLP_ROLLBACK_REASON"]; !strings.Contains(r, "attributed to klp_oops_3") {
		t.Errorf("rollback reason %q, want the oops attributed to klp_oops_3", r)
	}
	wantEntry(t, ja, agent.MsgBlocked, "klp_oops_3", "3")
	// The hold and the resume, each with who took it.
	controls := map[string]string{}
	for _, e := range ja {
		if e["MESSAGE_ID"] == agent.MsgControl {
			controls[e["KLP_CONTROL"]] = e["KLP_OPERATOR"]
		}
	}
	if !strings.Contains(controls["hold"], "uid 0") || !strings.Contains(controls["resume"], "uid 0") {
		t.Errorf("host controls in the journal: %v, want hold and resume by uid 0", controls)
	}
	for _, e := range ja {
		if e["MESSAGE_ID"] == agent.MsgApplied && e["KLP_PATCH"] == "klp_cmdline_1" && e["_SYSTEMD_UNIT"] != "klp-agent.service" {
			t.Errorf("applied entry from unit %q, want klp-agent.service", e["_SYSTEMD_UNIT"])
		}
	}
	// The health event itself: kmsg, attributed, rolled back.
	var he map[string]string
	for _, e := range ja {
		if e["MESSAGE_ID"] == agent.MsgHealthEvent && e["KLP_PATCH"] == "klp_oops_3" && e["KLP_EVENT_SOURCE"] == "kmsg" {
			he = e
		}
	}
	if he == nil || he["KLP_ATTRIBUTED"] != "true" || he["KLP_ROLLBACK"] != "true" || he["KLP_EVENT_KIND"] != "oops" {
		t.Errorf("health event entry: %v", he)
	}
	// What node_exporter's textfile collector would export.
	prom := outs("metrics-A.prom")
	for _, want := range []string{
		`klp_agent_patch_info{kernel="` + kernelEnv(t)["KLP_E2E_KREL"] + `",level="2",patch="klp_cmdline_2",state="good"} 1`,
		`klp_agent_applies_total{result="ok"} 3`,
		`klp_agent_rollbacks_total{reason="health"} 1`,
		`klp_agent_crashes_total{patch="klp_oops_3",source="kmsg"} 1`,
		`klp_agent_health_events_total{attributed="true",kind="oops",source="kmsg"} 1`,
		`klp_agent_blocked_patches 1`,
		`klp_agent_manifest_version 3`,
	} {
		if !strings.Contains(prom, want) {
			t.Errorf("metrics textfile lacks %s:\n%s", want, prom)
		}
	}
	// status --json agrees with the journal.
	var st struct {
		Kernel  string `json:"kernel"`
		Current *struct {
			Name  string `json:"name"`
			Level int    `json:"level"`
		} `json:"applied"`
		Phase   string `json:"phase"`
		Blocked []struct {
			Name   string `json:"name"`
			Level  int    `json:"level"`
			Reason string `json:"reason"`
		} `json:"blocked"`
		Events []struct {
			Kind       string `json:"kind"`
			Source     string `json:"source"`
			Patch      string `json:"patch"`
			RolledBack bool   `json:"rolled_back"`
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(outs("status-A.json")), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, outs("status-A.json"))
	}
	if st.Current == nil || st.Current.Name != "klp_cmdline_2" || st.Current.Level != 2 || st.Phase != "good" {
		t.Errorf("status after the rollback: %s", outs("status-A.json"))
	}
	if len(st.Blocked) != 1 || st.Blocked[0].Name != "klp_oops_3" || st.Blocked[0].Level != 3 {
		t.Errorf("blocked: %+v, want klp_oops_3 level 3", st.Blocked)
	}
	rolled := false
	for _, e := range st.Events {
		rolled = rolled || (e.Kind == "oops" && e.Source == "kmsg" && e.Patch == "klp_oops_3" && e.RolledBack)
	}
	if !rolled {
		t.Errorf("status events %+v: no kmsg oops that rolled klp_oops_3 back", st.Events)
	}
	for _, f := range []string{"cmdline-A", "cmdline-B"} {
		if !strings.HasSuffix(strings.TrimSpace(outs(f)), "klp_level=2") {
			t.Errorf("%s: %q, want level 2's text", f, outs(f))
		}
	}
	// After klp-agent uninstall the kernel runs no patch (rpm has none either:
	// the guest's rpm-kernel-agree).
	if c := outs("cmdline-after-erase"); strings.Contains(c, "klp_level=") {
		t.Errorf("cmdline-after-erase: %q, want the unpatched text", c)
	}
	// The history, as JSON: the rollback with its cause and destination.
	var hist struct {
		Events []struct{ Kind, Patch, Cause, To string } `json:"events"`
	}
	if err := json.Unmarshal([]byte(outs("history.json")), &hist); err != nil {
		t.Errorf("history --json: %v\n%s", err, outs("history.json"))
	}
	rolledBack := false
	for _, e := range hist.Events {
		rolledBack = rolledBack || (e.Kind == "rollback" && e.Patch == "klp_oops_3" && e.Cause == "health" && e.To == "klp_cmdline_2@2")
	}
	if !rolledBack {
		t.Errorf("history has no health rollback of klp_oops_3 to klp_cmdline_2@2: %+v", hist.Events)
	}

	// Boot B: level 2 back from the state dir before the first poll result.
	jb := journal(t, outs("journal-B.json"))
	re := -1
	firstPoll := -1
	for i, e := range jb {
		if e["MESSAGE_ID"] == agent.MsgReapplied && e["KLP_PATCH"] == "klp_cmdline_2" && re < 0 {
			re = i
		}
		if m := e["MESSAGE"]; firstPoll < 0 && (strings.HasPrefix(m, "manifest version") || strings.HasPrefix(m, "manifest poll failed")) {
			firstPoll = i
		}
	}
	switch {
	case re < 0:
		t.Errorf("boot B: no re-applied entry for klp_cmdline_2")
	case firstPoll >= 0 && firstPoll < re:
		t.Errorf("boot B: the first poll (%q) came before the re-apply", jb[firstPoll]["MESSAGE"])
	}
	if d := os.Getenv("KLP_DEMO_OUT"); d != "" {
		demoSummary(t, d, out, timings, time.Since(start))
	}
}

// bootRootfs boots the systemd image once; its scenario powers it off.
func bootRootfs(t *testing.T, work, initrd, img, name string, timeout time.Duration) ([]marker, string) {
	t.Helper()
	return bootWith(t, work, name, []string{"-i", initrd, "-d", img, "-n", "-t", fmt.Sprint(int(timeout.Seconds()))}, false)
}

// journal parses `journalctl -o json` output.
func journal(t *testing.T, s string) []map[string]string {
	t.Helper()
	var out []map[string]string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		raw := map[string]any{}
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			t.Fatalf("journal line %q: %v", sc.Text(), err)
		}
		e := map[string]string{}
		for k, v := range raw {
			if s, ok := v.(string); ok {
				e[k] = s
			}
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		t.Fatal("empty journal")
	}
	return out
}

// wantEntry finds exactly one entry with the MESSAGE_ID for patch at level.
func wantEntry(t *testing.T, j []map[string]string, id, patch, level string) map[string]string {
	t.Helper()
	var found []map[string]string
	for _, e := range j {
		if e["MESSAGE_ID"] == id && e["KLP_PATCH"] == patch {
			found = append(found, e)
		}
	}
	if len(found) != 1 {
		t.Errorf("MESSAGE_ID=%s KLP_PATCH=%s: %d entries, want 1", id, patch, len(found))
		return map[string]string{}
	}
	if found[0]["KLP_LEVEL"] != level || len(found[0]["KLP_SHA256"]) != 64 {
		t.Errorf("MESSAGE_ID=%s KLP_PATCH=%s: level %q sha256 %q", id, patch, found[0]["KLP_LEVEL"], found[0]["KLP_SHA256"])
	}
	return found[0]
}

// demoSummary keeps the guest's outputs and writes what `make demo` prints.
func demoSummary(t *testing.T, dir, out string, timings map[string]string, total time.Duration) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	runCmd(t, out, nil, "cp", "-r", ".", dir)
	var b strings.Builder
	fmt.Fprintf(&b, "klp-agent demo: a Debian guest under systemd, the agent installed with rpm, manifests from nginx\n\n")
	for _, s := range []struct{ step, what string }{
		{"agent-installed", "rpm -i klp-agent (the unit enabled by its preset)"},
		{"not-started", "the install started nothing"},
		{"unconfigured-calm", "unconfigured: systemctl start exits 78, not restarted"},
		{"ready", "unit active: READY=1 after start-up, once configured (enrolled held)"},
		{"rollback-refused", "klp-agent rollback, nothing applied: the daemon refuses, exit 1"},
		{"applied-1", "level 1 applied and soaked"},
		{"upgraded-2", "systemctl reload, new manifest: upgraded to 2"},
		{"up-to-date", "klp-agent status --check: exit 0"},
		{"held", "klp-agent hold"},
		{"poll-held", "new manifest, klp-agent poll: level 3 waits (held)"},
		{"check-held", "klp-agent status --check: exit 1 (update pending, held)"},
		{"resumed", "klp-agent resume"},
		{"applied-3", "faulty level 3 applied"},
		{"rolled-back-2", "its oops seen on /dev/kmsg, rolled back to 2, 3 blocked"},
		{"check-blocked", "klp-agent status --check: exit 2 (degraded, 3 blocked)"},
		{"killswitch-nothing-applied", "reboot with klp_agent.enable=0: nothing applied"},
		{"reapplied-2", "after a reboot: 2 re-applied by the unit"},
		{"history", "klp-agent history: applies, rollback, block, hold, kill switch"},
		{"erase-refused", "rpm -e klp-agent alone: refused (klp-cmdline would stay)"},
		{"check-stopped", "daemon stopped: klp-agent status --check: exit 4"},
		{"agent-erased", "klp-agent uninstall: klp-cmdline and klp-agent erased"},
		{"rpm-kernel-agree", "rpm and the kernel agree: no patch"},
	} {
		fmt.Fprintf(&b, "  %-14s %-58s %s\n", s.step, s.what, timings[s.step])
	}
	fmt.Fprintf(&b, "\ntotal %.0fs; guest outputs in %s\n", total.Seconds(), dir)
	if err := os.WriteFile(filepath.Join(dir, "summary.txt"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
