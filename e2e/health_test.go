//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// buildSegv builds the decoy (e2e/guest/segv.c), static for the busybox
// guest.
func buildSegv(t *testing.T, out string) string {
	t.Helper()
	bin := filepath.Join(out, "segv")
	runCmd(t, repoDir(t), nil, "gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", bin, "e2e/guest/segv.c")
	return bin
}

// guestDmesg returns the kernel log the guest printed between
// "KLP-E2E: dmesg-begin" and "KLP-E2E: dmesg-end", one "KLP-DMESG: "
// prefixed line per record line (kernel console output that interleaves
// with the dump has no prefix and is dropped). ok is false without both
// markers.
func guestDmesg(serial string) (dmesg string, ok bool) {
	var b strings.Builder
	in, begun := false, false
	for _, line := range strings.Split(strings.ReplaceAll(serial, "\r", ""), "\n") {
		switch {
		case strings.HasSuffix(line, "KLP-E2E: dmesg-begin"):
			in, begun = true, true
			b.Reset()
		case strings.HasSuffix(line, "KLP-E2E: dmesg-end"):
			return b.String(), begun
		case in:
			if rest, found := strings.CutPrefix(line, "KLP-DMESG: "); found {
				b.WriteString(rest)
				b.WriteByte('\n')
			}
		}
	}
	return b.String(), false
}

// TestCrashSamplesRealKernel proves, on the real Debian kernel in qemu,
// that the klp_crash livepatch (installed by the agent) makes the kernel
// print each crash report it is meant to (WARNING, hung task, soft lockup,
// general protection fault, divide error, BUG) from inside the module, and
// that the guest survives them all (and that the hung-task detector goes
// quiet once an oops has tainted the kernel D); then it captures the whole raw kernel
// log (busybox dmesg -r, "<prio>" prefixes) with those reports and the
// segfault/traps decoys, as a sample corpus. It asserts nothing about the
// agent's health classification.
//
// The log is kept in the temp dir (the path is logged) and, when
// KLP_E2E_DMESG_OUT names a file, copied there too.
func TestCrashSamplesRealKernel(t *testing.T) {
	env := kernelEnv(t)
	work := t.TempDir()
	bin := buildAgent(t, work)
	rpms := filepath.Join(work, "rpms")
	buildRPMs(t, rpms)
	segv := buildSegv(t, work)
	files := append(rpmFiles(t, work), bin+":/usr/bin/klp-agent", rpms+":/rpms", segv+":/usr/local/bin/segv")

	initrd := filepath.Join(work, "initrd-health.cpio.gz")
	args := []string{"-o", initrd, "-s", filepath.Join(repoDir(t), "e2e/guest/scenarios/health.sh")}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	runCmd(t, repoDir(t), nil, "e2e/guest/mkinitramfs.sh", args...)
	// log_buf_len: the default 128 KiB could wrap before the dump; the
	// reports must all be in it, with the boot's first lines.
	timeout := 900 * time.Second
	markers, log := bootWith(t, work, "health",
		[]string{"-i", initrd, "-t", strconv.Itoa(int(timeout.Seconds())), "-a", "log_buf_len=4M"}, false)
	t.Logf("kernel %s", env["KLP_E2E_KREL"])

	checkMarkers(t, markers, log, "sysctl-nopanic", "apply", "normal-reader",
		"crash-warn", "crash-hang", "crash-lockup", "crash-gpf", "crash-divide", "crash-bug", "crash-bug-die",
		"hang-silent-after-oops", "decoys")

	dmesg, ok := guestDmesg(log)
	if !ok {
		t.Fatalf("no complete dmesg dump (KLP-E2E: dmesg-begin ... dmesg-end) on the console; log tail:\n%s", tail(log, 40))
	}
	if !strings.Contains(dmesg, "Linux version ") {
		t.Errorf("the dumped kernel log lacks the boot banner: the ring buffer wrapped")
	}
	keep := filepath.Join(os.TempDir(), "klp-e2e-"+t.Name()+".dmesg-r.txt")
	if err := os.WriteFile(keep, []byte(dmesg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("raw kernel log (%d lines) kept at %s", strings.Count(dmesg, "\n"), keep)
	if out := os.Getenv("KLP_E2E_DMESG_OUT"); out != "" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(out, []byte(dmesg), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("raw kernel log copied to %s", out)
	}
}
