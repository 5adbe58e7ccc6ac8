//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
)

// TestPowerCutRealKernel cuts a fresh host's power (sysrq b: no sync, no
// unmount) at each step of its first apply, then boots it again and checks
// the state on its disk, rpm's database and the kernel's level. The agent
// binary is a klp_crashpoint build: it cuts the power itself at the step
// named on the guest's command line. A cut before the module is in the
// kernel (download, rpm) is not the patch's doing: the next boot applies
// it. A cut once it is (loaded, in its transition, soaking) blocks it, and
// the host runs no patch with no livepatch package left in rpm.
func TestPowerCutRealKernel(t *testing.T) {
	kernelEnv(t)
	work := t.TempDir()
	pub := newPublisher(t, work)
	pub.bin = buildAgent(t, filepath.Join(work, "cut"), "klp_crashpoint")
	krel := kernelEnv(t)["KLP_E2E_KREL"]
	for _, tc := range []struct {
		cut, rpm, module string
		phase            state.Phase // on the disk after the cut
		reason           string      // of the block; "": applied at the next boot
		resumed          string      // the next boot's log says so
	}{
		{cut: "apply:downloading", rpm: "klp-cmdline-1-1.x86_64.rpm", module: "klp_cmdline_1", phase: state.PhaseDownloading,
			resumed: "was interrupted during its download; the next poll starts it again"},
		{cut: "installed", rpm: "klp-cmdline-1-1.x86_64.rpm", module: "klp_cmdline_1", phase: state.PhaseInstalling,
			resumed: "resuming an apply interrupted before its module was loaded"},
		{cut: "loaded", rpm: "klp-cmdline-1-1.x86_64.rpm", module: "klp_cmdline_1", phase: state.PhaseEnabling,
			reason: "previous boot crashed while it was being enabled"},
		{cut: "in-transition", rpm: "klp-stall-1-1.x86_64.rpm", module: "klp_stall", phase: state.PhaseEnabling,
			reason: "previous boot crashed while it was being enabled"},
		{cut: "apply:soaking", rpm: "klp-cmdline-1-1.x86_64.rpm", module: "klp_cmdline_1", phase: state.PhaseSoaking,
			reason: "previous boot crashed while it was soaking"},
	} {
		name := strings.ReplaceAll(tc.cut, ":", "-")
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(work, name)
			os.MkdirAll(dir, 0o755)
			p := *pub
			p.work, p.www, p.t = dir, filepath.Join(dir, "www"), t
			os.MkdirAll(filepath.Join(p.www, "rpms"), 0o755)
			p.publish(filepath.Join(dir, "manifest.yaml"), tc.rpm)
			srv := nginxtest.Start(t, p.www)
			port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
			cfg := filepath.Join(dir, "config.yaml")
			os.WriteFile(cfg, []byte(agentConfig(port, "1h", "")), 0o644)
			disk := filepath.Join(dir, "disk.img")
			runCmd(t, dir, nil, "mke2fs", "-q", "-t", "ext4", "-F", disk, "64M")
			files := append(rpmFiles(t, dir), p.bin+":/usr/bin/klp-agent", cfg+":/etc/klp-agent/config.yaml",
				filepath.Join(p.keys, "release.pub")+":/etc/klp-agent/keys/release.pub",
				filepath.Join(repoDir(t), "e2e/guest/scenarios/agent-lib.sh")+":/lib/agent-lib.sh")
			kmods := []string{"virtio_pci", "virtio_blk", "virtio_net", "ext4", "crc32c_generic"}
			scenario := filepath.Join(repoDir(t), "e2e/guest/scenarios/powercut.sh")

			_, log := boot(t, dir, guest{name: "cut", scenario: scenario, files: files, kmods: kmods, disk: disk, net: true,
				kos:     []string{filepath.Join(p.rpms, "ko", "klp_victim.ko")},
				timeout: 200 * time.Second, crashes: true, append: []string{"klp_e2e.cut=" + tc.cut}})
			if !strings.Contains(log, "klp-agent: power cut at "+tc.cut) {
				t.Fatalf("no power cut at %s:\n%s", tc.cut, tail(log, 40))
			}
			// What survived the cut: the unreplayed journal first, as the
			// next boot's mount would.
			fsck(t, disk)
			st := diskState(t, disk)
			k := st.Kernels[krel]
			if k == nil || k.Phase != tc.phase {
				t.Fatalf("state after the cut at %s: want phase %s, got %+v", tc.cut, tc.phase, k)
			}
			t.Logf("cut at %s: phase %s on the disk", tc.cut, k.Phase)

			expect := "soaking"
			if tc.reason != "" {
				expect = "blocked"
			}
			ms, log := boot(t, dir, guest{name: "next", scenario: scenario, files: files, kmods: kmods, disk: disk, net: true,
				timeout: 200 * time.Second, append: []string{"klp_e2e.expect=" + expect}})
			d := checkMarkers(t, ms, log, expect, "level", "rpm-qa")
			st = diskState(t, disk)
			k = st.Kernels[krel]
			if k == nil {
				t.Fatalf("no state for %s after the next boot", krel)
			}
			rpms := strings.Fields(debugfsCat(t, disk, "/rpm-qa.txt"))
			if tc.reason == "" {
				if k.Current == nil || k.Current.Name != tc.module || len(k.Blocked) != 0 {
					t.Errorf("after a cut at %s the next boot must apply %s again: current %+v, blocked %+v", tc.cut, tc.module, k.Current, k.Blocked)
				}
				if !strings.Contains(log, tc.resumed) {
					t.Errorf("the next boot's log does not say %q", tc.resumed)
				}
				if want := strings.TrimSuffix(tc.rpm, ".rpm"); len(rpms) != 1 || rpms[0] != want {
					t.Errorf("rpm -qa 'klp-*' = %q, want [%s]", rpms, want)
				}
				if tc.module == "klp_cmdline_1" && d["level"] != "1" {
					t.Errorf("level %q after the next boot, want 1", d["level"])
				}
				return
			}
			if k.Current != nil || len(k.Blocked) != 1 || k.Blocked[0].Name != tc.module ||
				k.Blocked[0].Cause != state.CauseBootCrash || k.Blocked[0].Reason != tc.reason {
				t.Errorf("after a cut at %s the next boot must block %s (%s) and run no patch: current %+v, blocked %+v",
					tc.cut, tc.module, tc.reason, k.Current, k.Blocked)
			}
			if len(rpms) != 0 {
				t.Errorf("rpm -qa 'klp-*' = %q, want none (the kernel runs no patch)", rpms)
			}
			if d["level"] != "none" {
				t.Errorf("level %q after the next boot, want none", d["level"])
			}
		})
	}
}

// fsck replays the journal a power cut left (exit 1: corrected).
func fsck(t *testing.T, disk string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fy", disk).CombinedOutput(); err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() > 1 {
			t.Fatalf("e2fsck: %v\n%s", err, out)
		}
	}
}

func debugfsCat(t *testing.T, disk, path string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, disk).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return string(out)
}

// diskState is the agent's state.json on the guest's disk.
func diskState(t *testing.T, disk string) *state.State {
	t.Helper()
	var st state.State
	if b := debugfsCat(t, disk, "/klp-agent/state.json"); json.Unmarshal([]byte(b), &st) != nil {
		t.Fatalf("state.json on the disk:\n%s", b)
	}
	return &st
}
