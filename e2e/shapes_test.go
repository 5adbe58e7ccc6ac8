//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strconv"
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
//
// It runs on each kernel line (TestShapesRealKernel/6.1, /6.12): 6.12 has
// the replace attribute, so the non-cumulative patch is caught there by it
// and on 6.1 by the previous patch still enabled.
func TestShapesRealKernel(t *testing.T) {
	bin := buildAgent(t, t.TempDir())
	for _, line := range kernelLines {
		t.Run(line, func(t *testing.T) { testShapes(t, line, bin) })
	}
}

func testShapes(t *testing.T, line, bin string) {
	env := kernelEnvFor(t, line)
	work := t.TempDir()
	rpms := filepath.Join(work, "rpms")
	buildRPMsFor(t, rpms, line)
	files := append(rpmFiles(t, work), bin+":/usr/bin/klp-agent", rpms+":/rpms")
	scenario := filepath.Join(repoDir(t), "e2e/guest/scenarios/shapes.sh")
	t.Logf("kernel %s", env["KLP_E2E_KREL"])

	ms, log := boot(t, work, guest{scenario: scenario, files: files, timeout: 300 * time.Second, name: "shapes", line: line})
	checkMarkers(t, ms, log, "base", "nonreplace", "prefail", "state-1", "state-2", "state-downgrade", "state-off",
		"meta-1", "meta-2", "meta-back", "kpatch")

	ms, log = boot(t, work, guest{scenario: scenario, files: files, timeout: 120 * time.Second, name: "sigenforce", line: line,
		append: []string{"module.sig_enforce=1"}})
	checkMarkers(t, ms, log, "sig-refused")

	// The daemon: per case level 1 is applied, then level 2, which the
	// kernel refuses, is published; the host blocks 2 with the kernel's
	// line and keeps 1.
	pub := &publisher{work: work, bin: bin, rpms: rpms, www: filepath.Join(work, "www"), keys: filepath.Join(work, "keys"), t: t}
	for _, d := range []string{filepath.Join(pub.www, "rpms"), filepath.Join(pub.www, "cases"), pub.keys} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pub.cli("manifest", "keygen", "--out", filepath.Join(pub.keys, "release"))
	for _, c := range []string{"prefail", "nonreplace"} {
		src := filepath.Join(work, c+".yaml")
		// Version 1: level 1 alone; version 2 adds the refused level 2.
		for i, f := range []string{"klp-cmdline-1-1.x86_64.rpm", "klp-cmdline-2-1." + c + ".x86_64.rpm"} {
			pub.cli("manifest", "add", "--manifest", src, "--rpm", pub.stage(f), "--url", "rpms/"+f)
			out := filepath.Join(pub.www, "cases", c+"-"+strconv.Itoa(i+1)+".json")
			pub.cli("manifest", "sign", "--in", src, "--key", filepath.Join(pub.keys, "release.key"), "--out", out)
		}
	}
	// klp_state: level 1 (state version 1), then level 2 (version 2).
	src := filepath.Join(work, "state.yaml")
	for i, f := range []string{"klp-state-1-1.x86_64.rpm", "klp-state-2-1.x86_64.rpm"} {
		pub.cli("manifest", "add", "--manifest", src, "--rpm", pub.stage(f), "--url", "rpms/"+f)
		out := filepath.Join(pub.www, "cases", "state-"+strconv.Itoa(i+1)+".json")
		pub.cli("manifest", "sign", "--in", src, "--key", filepath.Join(pub.keys, "release.key"), "--out", out)
	}
	cfg := filepath.Join(work, "config.yaml")
	os.WriteFile(cfg, []byte(`manifest:
  url: http://127.0.0.1:8080/manifest.json
  poll_interval: 10s
  poll_jitter: 0
  retries: 1
host:
  id: shapes-guest
apply:
  # Short: a host takes no new level while the current one soaks.
  soak: 3s
  rpm_dbpath: /var/lib/rpm
log:
  format: console
`), 0o644)
	dfiles := append(rpmFiles(t, work), bin+":/usr/bin/klp-agent", pub.www+":/www", cfg+":/etc/klp-agent/config.yaml",
		filepath.Join(pub.keys, "release.pub")+":/etc/klp-agent/keys/release.pub")
	ms, log = boot(t, work, guest{scenario: filepath.Join(repoDir(t), "e2e/guest/scenarios/shapes-daemon.sh"), files: dfiles,
		timeout: 400 * time.Second, name: "shapes-daemon", line: line})
	checkMarkers(t, ms, log, "daemon-prefail", "daemon-nonreplace", "daemon-state")
}
