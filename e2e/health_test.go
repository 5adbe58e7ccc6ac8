//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
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

// spoofDatagrams forges what a local user could send the daemon's
// netconsole port: the real kernel's general protection fault in
// klp_crash_gpf [klp_crash] from the corpus sample (this test's own earlier
// run), as extended records of the kernel's facility at their own levels,
// one datagram per line.
func spoofDatagrams(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoDir(t), "health/testdata/corpus/realkernel/debian-6.1.0-57-klp_crash.dmesg-r.txt"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^<(\d+)>\[\s*(\d+)\.(\d{6})\] (.*)$`)
	var out strings.Builder
	on := false
	for i, l := range strings.Split(string(b), "\n") {
		m := re.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if strings.HasPrefix(m[4], "general protection fault, probably for non-canonical address") {
			on = true
		}
		if !on {
			continue
		}
		fmt.Fprintf(&out, "%s,%d,%s%s,-;%s\n", m[1], 90000+i, m[2], m[3], m[4])
		if strings.HasPrefix(m[4], "---[ end trace") {
			return out.String()
		}
	}
	t.Fatalf("no general protection fault report in the corpus sample")
	return ""
}

// guestStatus is what the guest's `klp-agent status --json` printed
// between "KLP-E2E: status-begin" and "status-end" ("KLP-STATUS: " lines).
type guestStatus struct {
	Phase   string `json:"phase"`
	Applied *struct {
		Name  string `json:"name"`
		Level int    `json:"level"`
	} `json:"applied"`
	Blocked []json.RawMessage `json:"blocked"`
	Events  []struct {
		At         time.Time `json:"at"`
		Kind       string    `json:"kind"`
		Source     string    `json:"source"`
		Header     string    `json:"header"`
		Patch      string    `json:"patch"`
		Attributed bool      `json:"attributed"`
		RolledBack bool      `json:"rolled_back"`
	} `json:"events"`
}

func parseGuestStatus(serial string) (guestStatus, error) {
	var b strings.Builder
	in := false
	for _, line := range strings.Split(strings.ReplaceAll(serial, "\r", ""), "\n") {
		switch {
		case strings.HasSuffix(line, "KLP-E2E: status-begin"):
			in = true
		case strings.HasSuffix(line, "KLP-E2E: status-end"):
			in = false
		case in:
			if rest, ok := strings.CutPrefix(line, "KLP-STATUS: "); ok {
				b.WriteString(rest + "\n")
			}
		}
	}
	var st guestStatus
	if b.Len() == 0 {
		return st, fmt.Errorf("no status between the status-begin and status-end markers")
	}
	return st, json.Unmarshal([]byte(b.String()), &st)
}

// TestHealthRealKernel runs the daemon on the real Debian kernel in qemu
// with klp_crash level 1 applied from a signed manifest on nginx (see
// e2e/guest/scenarios/health.sh), in one boot:
//   - under the default health policy, unprivileged decoys (segfaults and a
//     divide-error trap under report-like names) and forged netconsole
//     datagrams (a real oops in [klp_crash], sent from inside the guest to
//     its port from 127.0.0.1, outside health.netconsole.allow) make no
//     health event at all: the patch stays applied and soaking, nothing is
//     blocked;
//   - reloaded to a policy that only observes, every klp_crash report the
//     kernel prints (WARNING, hung task, soft lockup, general protection
//     fault, divide error, BUG) is an event of its kind attributed to
//     klp_crash, one per hung-task and soft-lockup report; hang comes
//     before the oopses since 6.1's hung-task detector is silent once the
//     kernel is tainted D (checked too).
//
// It also keeps the whole raw kernel log (busybox dmesg -r, "<prio>"
// prefixes) as a sample: in the temp dir (the path is logged) and, when
// KLP_E2E_DMESG_OUT names a file, there too.
func TestHealthRealKernel(t *testing.T) {
	env := kernelEnv(t)
	work := t.TempDir()
	pub := newPublisher(t, work)
	segv := buildSegv(t, work)
	pub.publish(filepath.Join(work, "manifest.yaml"), "klp-crash-1-1.x86_64.rpm")
	srv := nginxtest.Start(t, pub.www)
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	cfg := filepath.Join(work, "config.yaml")
	// The default policy; netconsole from the host's side of qemu's user
	// network only, without the release 6.1 cannot send.
	os.WriteFile(cfg, []byte(agentConfig(port, "1h", `health:
  netconsole:
    listen: 0.0.0.0:6666
    allow: [10.0.2.2/32]
    require_release: false
`)), 0o644)

	// The forged datagrams would count from an allowed sender: a real oops,
	// attributed to klp_crash. Only the sender check keeps them out.
	spoof := spoofDatagrams(t)
	re := health.Reassembler{ExtendedOnly: true, Release: env["KLP_E2E_KREL"]}
	var cl health.Classifier
	var evs []health.Event
	now := time.Now()
	for _, d := range strings.SplitAfter(spoof, "\n") {
		if d != "" {
			for _, r := range re.Feed([]byte(d), now) {
				evs = append(evs, cl.Feed(r, now)...)
			}
		}
	}
	evs = append(evs, cl.Flush(now.Add(time.Hour))...)
	if len(evs) != 1 || evs[0].Kind != health.KindOops || !health.Attributed(evs[0], health.Suspect{Name: "klp_crash"}) {
		t.Fatalf("the forged datagrams are not one oops attributed to klp_crash: %+v", evs)
	}
	spoofFile := filepath.Join(work, "spoof.txt")
	os.WriteFile(spoofFile, []byte(spoof), 0o644)

	files := append(rpmFiles(t, work), pub.bin+":/usr/bin/klp-agent", cfg+":/etc/klp-agent/config.yaml",
		filepath.Join(pub.keys, "release.pub")+":/etc/klp-agent/keys/release.pub",
		filepath.Join(repoDir(t), "e2e/guest/scenarios/agent-lib.sh")+":/lib/agent-lib.sh",
		segv+":/usr/local/bin/segv", spoofFile+":/etc/klp-e2e/spoof.txt")
	// log_buf_len: the default 128 KiB could wrap before the dump; the
	// reports must all be in it, with the boot's first lines.
	ms, log := boot(t, work, guest{name: "health", scenario: filepath.Join(repoDir(t), "e2e/guest/scenarios/health.sh"),
		files: files, kmods: []string{"virtio_pci", "virtio_net"}, net: true, append: []string{"log_buf_len=4M"},
		timeout: 600 * time.Second})
	t.Logf("kernel %s", env["KLP_E2E_KREL"])

	checkMarkers(t, ms, log, "sysctl-nopanic", "applied", "normal-reader", "netconsole-listening",
		"decoys", "spoof-sent", "decoys-ignored", "reload-observe",
		"crash-warn", "agent-warn", "crash-hang", "agent-hang", "crash-lockup", "agent-lockup",
		"crash-gpf", "agent-gpf", "crash-divide", "agent-divide", "crash-bug", "agent-bug", "crash-bug-die",
		"hang-silent-after-oops", "clean-stop")

	st, err := parseGuestStatus(log)
	if err != nil {
		t.Errorf("the agent's status: %v", err)
	}
	for _, ev := range st.Events {
		t.Logf("event: %s %-11s %-5s attributed=%-5v patch=%s rolled_back=%v: %s", ev.At.Format("15:04:05.000"), ev.Kind, ev.Source,
			ev.Attributed, ev.Patch, ev.RolledBack, ev.Header)
		if ev.RolledBack {
			t.Errorf("an event rolled back under the observing policy: %+v", ev)
		}
	}
	if st.Phase != "soaking" || st.Applied == nil || st.Applied.Name != "klp_crash" || len(st.Blocked) != 0 {
		t.Errorf("after the reports: phase %q, applied %+v, %d blocked; want klp_crash soaking, none blocked", st.Phase, st.Applied, len(st.Blocked))
	}

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
