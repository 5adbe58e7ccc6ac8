//go:build e2e

package e2e

import (
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"
)

// TestKLPRealKernel drives klp/ through the agent binary on each real Debian
// 12 kernel line in qemu (TestKLPRealKernel/6.1, TestKLPRealKernel/6.12;
// select one with -run 'TestKLPRealKernel/6.1$'): refusals, install+enable,
// upgrades by atomic replace, a step back, disable, the kpatch-patch layout,
// a stalled transition reversed with its blocker named, EBUSY retried, and
// the bare rpm -U && insmod && wait floor for comparison. Each line builds
// its RPMs against its own headers and boots its own kernel.
func TestKLPRealKernel(t *testing.T) {
	bin := buildAgent(t, t.TempDir())
	for _, line := range kernelLines {
		t.Run(line, func(t *testing.T) { testKLPRealKernel(t, line, bin) })
	}
}

// sysfsWant is what /sys/kernel/livepatch/<patch>/ shows on each line:
// replace since 6.11, stack_order since 6.14.
var sysfsWant = map[string]struct{ replace, stackOrder bool }{
	"6.1":  {replace: false, stackOrder: false},
	"6.12": {replace: true, stackOrder: false},
}

func testKLPRealKernel(t *testing.T, line, bin string) {
	start := time.Now()
	env := kernelEnvFor(t, line)
	t.Logf("kernel %s (line %s)", env["KLP_E2E_KREL"], line)
	work := t.TempDir()
	rpms := filepath.Join(work, "rpms")
	buildRPMsFor(t, rpms, line)
	files := append(rpmFiles(t, work), bin+":/usr/bin/klp-agent", rpms+":/rpms")
	kos := []string{filepath.Join(rpms, "ko", "klp_victim.ko")}
	markers, log := boot(t, work, guest{name: "klp", line: line, timeout: 300 * time.Second,
		scenario: filepath.Join(repoDir(t), "e2e/guest/scenarios/klp-agent.sh"), files: files, kos: kos})

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
		"disable", "kpatch", "stall", "ebusy", "list-foreign", "sysfs-attrs"}
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
			if name == "sysfs-attrs" {
				checkSysfsAttrs(t, line, m.detail)
			}
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
		t.Logf("%s %-10s agent %-10s bare rpm -U && insmod && wait %s", line, pair[0], times[pair[0]], times[pair[1]])
		if times[pair[0]] == "" || times[pair[1]] == "" {
			t.Errorf("missing timing for %v", pair)
		}
	}
	t.Logf("line %s: build, boot and scenario in %.1fs", line, time.Since(start).Seconds())
}

// checkSysfsAttrs holds the sysfs-attrs marker ("klp_cmdline_1 replace=1
// stack_order=absent files=...; klp_stall replace=1 stack_order=absent") to
// what the line's kernel must show: two replace=true patches read 1 where
// replace exists. (replace=0 on 6.12 is TestShapesRealKernel's
// non-cumulative patch, refused by that reading.)
func checkSysfsAttrs(t *testing.T, line, detail string) {
	t.Helper()
	w, ok := sysfsWant[line]
	if !ok {
		t.Fatalf("no sysfs expectations for line %s", line)
	}
	for _, p := range []struct {
		patch, replace string
	}{{"klp_cmdline_1", "1"}, {"klp_stall", "1"}} {
		m := regexp.MustCompile(p.patch + ` replace=(\S+) stack_order=(\S+)`).FindStringSubmatch(detail)
		if m == nil {
			t.Errorf("%s: no attributes for %s in %q", line, p.patch, detail)
			continue
		}
		wantReplace := "absent"
		if w.replace {
			wantReplace = p.replace
		}
		if m[1] != wantReplace {
			t.Errorf("%s: %s replace=%s, want %s", line, p.patch, m[1], wantReplace)
		}
		if (m[2] != "absent") != w.stackOrder {
			t.Errorf("%s: %s stack_order=%s, want present=%t", line, p.patch, m[2], w.stackOrder)
		}
	}
	t.Logf("%s sysfs: replace present %t, stack_order present %t, as expected", line, w.replace, w.stackOrder)
}
