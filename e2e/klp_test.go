//go:build e2e

package e2e

import (
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestKLPRealKernel drives klp/ through the agent binary on the real Debian
// kernel in qemu: refusals, install+enable, upgrades by atomic replace, a
// step back, disable, the kpatch-patch layout, a stalled transition
// reversed with its blocker named, EBUSY retried, and the bare
// rpm -U && insmod && wait floor for comparison.
func TestKLPRealKernel(t *testing.T) {
	env := kernelEnv(t)
	work := t.TempDir()
	bin := buildAgent(t, work)
	rpms := filepath.Join(work, "rpms")
	buildRPMs(t, rpms)
	files := append(rpmFiles(t, work), bin+":/usr/bin/klp-agent", rpms+":/rpms")
	kos := []string{filepath.Join(rpms, "ko", "klp_victim.ko")}
	markers, log := bootScenario(t, work, filepath.Join(repoDir(t), "e2e/guest/scenarios/klp-agent.sh"), 300*time.Second, files, kos)
	t.Logf("kernel %s", env["KLP_E2E_KREL"])

	got := map[string]marker{}
	times := map[string]string{}
	for _, m := range markers {
		if m.status == "TIME" {
			times[m.name] = m.detail
			continue
		}
		got[m.name] = m
	}
	want := []string{"refuse-kernel", "refuse-notlp", "enable-1", "upgrade-2", "upgrade-3", "stepback-2", "stepback-rpm",
		"disable", "kpatch", "stall", "ebusy", "list-foreign"}
	for _, name := range want {
		t.Run(name, func(t *testing.T) {
			m, ok := got[name]
			switch {
			case !ok:
				t.Fatalf("scenario never reported; serial log tail:\n%s", tail(log, 40))
			case m.status != "PASS":
				t.Fatalf("%s", m.detail)
			}
			t.Logf("%s", m.detail)
		})
	}
	// Failures outside the listed scenarios (set-up steps) count too.
	for _, m := range markers {
		if m.status == "FAIL" && !slices.Contains(want, m.name) {
			t.Errorf("guest reported %s FAIL: %s", m.name, m.detail)
		}
	}
	// Timings: RPM verified -> transition 0 through the agent, against the
	// bare floor in the same guest.
	for _, pair := range [][2]string{{"enable-1", "bare-1"}, {"upgrade-2", "bare-2"}, {"upgrade-3", "bare-3"}} {
		t.Logf("%-10s agent %-10s bare rpm -U && insmod && wait %s", pair[0], times[pair[0]], times[pair[1]])
		if times[pair[0]] == "" || times[pair[1]] == "" {
			t.Errorf("missing timing for %v", pair)
		}
	}
}
