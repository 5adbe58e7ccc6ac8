//go:build e2e

package e2e

import (
	"path/filepath"
	"testing"
	"time"
)

// TestShapesRealKernel applies livepatches shaped as others ship them
// through `klp-agent klp apply` on the real kernel (e2e/guest/scenarios/
// shapes.sh): a non-cumulative patch backed out, klp_state v1 -> v2 and
// the downgrade the kernel refuses, a failing pre-patch callback, Meta's
// klp-<krel>/hotfixN packaging and Red Hat's kpatch-patch with scriptlets
// that must not run; rpm -qa checked after every step. A second boot with
// module.sig_enforce=1 refuses the unsigned patch with the kernel's line.
func TestShapesRealKernel(t *testing.T) {
	env := kernelEnv(t)
	work := t.TempDir()
	bin := buildAgent(t, work)
	rpms := filepath.Join(work, "rpms")
	buildRPMs(t, rpms)
	files := append(rpmFiles(t, work), bin+":/usr/bin/klp-agent", rpms+":/rpms")
	scenario := filepath.Join(repoDir(t), "e2e/guest/scenarios/shapes.sh")
	t.Logf("kernel %s", env["KLP_E2E_KREL"])

	ms, log := boot(t, work, guest{scenario: scenario, files: files, timeout: 300 * time.Second, name: "shapes"})
	checkMarkers(t, ms, log, "base", "nonreplace", "prefail", "state-1", "state-2", "state-downgrade", "state-off",
		"meta-1", "meta-2", "meta-back", "kpatch")

	ms, log = boot(t, work, guest{scenario: scenario, files: files, timeout: 120 * time.Second, name: "sigenforce",
		append: []string{"module.sig_enforce=1"}})
	checkMarkers(t, ms, log, "sig-refused")
}
