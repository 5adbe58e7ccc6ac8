//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
)

// TestAgentRealKernel runs the daemon in a guest against a signed manifest
// served by nginx on the host: a fresh host applies level 2, upgrades to 3
// when 3's rollout starts and stops while 3 soaks; after a reboot without
// network it re-applies 3 from its state dir before its first poll, while
// a dump an unprivileged user planted in /var/crash (an oops in
// klp_cmdline_3, newer than its apply, owned by uid 65534) is named as
// untrusted and ignored; then level 4 goes in, the kernel crashes while it
// soaks, and the next boot finds kdump-tools' (root's) dump, blocks 4 and
// runs 3; last, a faulty level 4 oopses, the daemon rolls back to 3 by
// itself, and the guest's extended netconsole delivers the same report to a
// receiver here that allows only qemu's sender, 127.0.0.1.
func TestAgentRealKernel(t *testing.T) {
	kernelEnv(t)
	work := t.TempDir()
	pub := newPublisher(t, work)
	bin, rpms, www, keys, agentCLI := pub.bin, pub.rpms, pub.www, pub.keys, pub.cli
	src := filepath.Join(work, "manifest.yaml")
	pub.publish(src, "klp-cmdline-1-1.x86_64.rpm")
	pub.publish(src, "klp-cmdline-2-1.x86_64.rpm")
	srv := nginxtest.Start(t, www)
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]

	cfg := filepath.Join(work, "config.yaml")
	os.WriteFile(cfg, []byte(agentConfig(port, "15s", "")), 0o644)
	disk := filepath.Join(work, "disk.img")
	runCmd(t, work, nil, "mke2fs", "-q", "-t", "ext4", "-F", disk, "64M")
	files := append(rpmFiles(t, work), bin+":/usr/bin/klp-agent", cfg+":/etc/klp-agent/config.yaml",
		filepath.Join(keys, "release.pub")+":/etc/klp-agent/keys/release.pub",
		filepath.Join(repoDir(t), "e2e/guest/scenarios/agent-lib.sh")+":/lib/agent-lib.sh")
	kmods := []string{"virtio_pci", "virtio_blk", "virtio_net", "ext4", "crc32c_generic"}

	check := func(ms []marker, log string, want ...string) {
		t.Helper()
		checkMarkers(t, ms, log, want...)
	}
	// Level 3 is published once the guest has applied 2, its rollout
	// starting 5 s later: the daemon takes it after 2's soak and that start
	// (a timer from before the boot would race a slow boot).
	var published sync.Once
	publish3 := func(m marker) {
		if m.name == "applied-2" && m.status == "PASS" {
			published.Do(func() {
				start := time.Now().UTC().Add(5 * time.Second).Format(time.RFC3339)
				if err := pub.tryPublish(src, "klp-cmdline-3-1.x86_64.rpm", "--start", start, "--start-percent", "100"); err != nil {
					t.Errorf("publish level 3: %v", err)
				}
			})
		}
	}
	ms, log := boot(t, work, guest{name: "boot1", scenario: filepath.Join(repoDir(t), "e2e/guest/scenarios/agent-boot1.sh"),
		files: files, kmods: kmods, disk: disk, net: true, timeout: 300 * time.Second, watch: publish3})
	check(ms, log, "applied-2", "upgraded-3", "clean-stop")
	if t.Failed() {
		return
	}
	// The boot guard looks at kdump dumps only for a patch that was soaking
	// (or being enabled) when the previous boot ended: level 3 must still
	// be soaking (apply.soak 15s) when boot1 stops right after applying it.
	var st1 struct {
		Phase   string `json:"phase"`
		Applied struct {
			Name    string    `json:"name"`
			Applied time.Time `json:"applied"`
		} `json:"applied"`
	}
	out, err := exec.Command("debugfs", "-R", "cat /status-boot1.json", disk).Output()
	if err == nil {
		err = json.Unmarshal(out, &st1)
	}
	if err != nil || st1.Phase != "soaking" || st1.Applied.Name != "klp_cmdline_3" {
		t.Fatalf("boot1 must stop while level 3 soaks, so that boot2's guard examines dumps: %v, phase %q, applied %q\n%s",
			err, st1.Phase, st1.Applied.Name, out)
	}
	t.Logf("boot1 stopped with klp_cmdline_3 soaking (applied %s)", st1.Applied.Applied.Format(time.RFC3339))
	// A local user plants a dump where /var/crash is 1777: the Debian
	// layout, newer than level 3's apply, an oops in klp_cmdline_3, but the
	// directory and file are uid 65534's. boot2 must ignore it, say so, and
	// re-apply 3 (a root-owned dump like it would block 3).
	plantAt := time.Now().UTC().Truncate(time.Second)
	if after := st1.Applied.Applied.Add(10 * time.Second); plantAt.Before(after) {
		plantAt = after.Truncate(time.Second)
	}
	// kdump-tools' name with its host tag (KDUMP_HOSTTAG=ip), so the dump
	// boot3's crash leaves in the same minute gets a directory of its own.
	stamp := plantAt.Format("200601021504")
	planted := "10.0.2.15-" + stamp
	pdm := filepath.Join(work, "planted-dmesg."+stamp)
	plantedText := strings.ReplaceAll(plantedOops, "KREL", kernelEnv(t)["KLP_E2E_KREL"])
	// Were it root's, it would count: an oops attributed to klp_cmdline_3.
	evs := health.ParseDmesg(strings.NewReader(plantedText), health.SourceKdump)
	if len(evs) == 0 || evs[0].Kind != health.KindOops || !health.Attributed(evs[0], health.Suspect{Name: "klp_cmdline_3"}) {
		t.Fatalf("the planted dmesg does not begin with an oops attributed to klp_cmdline_3: %+v", evs)
	}
	os.WriteFile(pdm, []byte(plantedText), 0o644)
	os.WriteFile(cmds(work), []byte(fmt.Sprintf("sif /crash mode 041777\nmkdir /crash/%[1]s\ncd /crash/%[1]s\nwrite %[2]s dmesg.%[3]s\n"+
		"sif dmesg.%[3]s uid 65534\nsif dmesg.%[3]s gid 65534\nsif dmesg.%[3]s mtime @%[4]d\nsif /crash/%[1]s uid 65534\nsif /crash/%[1]s gid 65534\n",
		planted, pdm, stamp, plantAt.Unix())), 0o644)
	runCmd(t, work, nil, "debugfs", "-w", "-f", cmds(work), disk)
	if out, _ := exec.Command("debugfs", "-R", "stat /crash/"+planted+"/dmesg."+stamp, disk).Output(); !strings.Contains(string(out), "User: 65534") {
		t.Fatalf("planted dump not owned by 65534:\n%s", out)
	}
	ms, log = boot(t, work, guest{name: "boot2", scenario: filepath.Join(repoDir(t), "e2e/guest/scenarios/agent-boot2.sh"),
		files: files, kmods: kmods, disk: disk, timeout: 180 * time.Second})
	d := checkMarkers(t, ms, log, "reapplied-3", "before-poll", "untrusted-dump-ignored", "not-blocked-3")
	if u := d["untrusted-dump-ignored"]; u != "" && (!strings.Contains(u, "/var/crash/"+planted) || !strings.Contains(u, "uid 65534")) {
		t.Errorf("the agent's log names another dump than the planted /var/crash/%s (uid 65534): %s", planted, u)
	}
	// The state on the disk says the same as the kernel did.
	out, err = exec.Command("debugfs", "-R", "cat /klp-agent/state.json", disk).Output()
	if err != nil || !strings.Contains(string(out), `"name": "klp_cmdline_3"`) {
		t.Fatalf("state.json on the disk: %v\n%s", err, out)
	}

	// Level 4 published; the kernel crashes while it soaks.
	f4 := "klp-cmdline-4-1.warn.x86_64.rpm"
	b4, err := os.ReadFile(filepath.Join(rpms, f4))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(www, "rpms", f4), b4, 0o644)
	agentCLI("manifest", "add", "--manifest", src, "--rpm", filepath.Join(www, "rpms", f4), "--url", "rpms/"+f4)
	signed := filepath.Join(work, "signed.json")
	agentCLI("manifest", "sign", "--in", src, "--key", filepath.Join(keys, "release.key"), "--out", signed)
	if err := os.Rename(signed, filepath.Join(www, "manifest.json")); err != nil {
		t.Fatal(err)
	}
	ms, log = boot(t, work, guest{name: "boot3", scenario: filepath.Join(repoDir(t), "e2e/guest/scenarios/agent-boot3.sh"),
		files: files, kmods: kmods, disk: disk, net: true, timeout: 240 * time.Second, crashes: true})
	check(ms, log, "applied-4", "soaking-4")
	if !strings.Contains(log, "sysrq: Trigger a crash") && !strings.Contains(log, "Kernel panic") {
		t.Fatalf("the guest did not crash:\n%s", tail(log, 30))
	}
	if t.Failed() {
		return
	}
	// What kdump-tools leaves after capturing that crash: the Debian layout,
	// the kernel's own last messages (from the console) as the dmesg file.
	var crashAt time.Time
	for _, m := range ms {
		if m.name == "crash-at" {
			if sec, err := strconv.ParseInt(m.detail, 10, 64); err == nil {
				crashAt = time.Unix(sec+1, 0).UTC()
			}
		}
	}
	if crashAt.IsZero() {
		t.Fatalf("boot3 did not report its clock before the crash")
	}
	stamp = crashAt.Format("200601021504")
	var dmesg strings.Builder
	for _, l := range strings.Split(strings.ReplaceAll(log, "\r", ""), "\n") {
		if regexp.MustCompile(`^\[\s*\d+\.\d+\] `).MatchString(l) {
			dmesg.WriteString(l + "\n")
		}
	}
	dm := filepath.Join(work, "dmesg."+stamp)
	os.WriteFile(dm, []byte(dmesg.String()), 0o644)
	os.WriteFile(filepath.Join(work, "dump."+stamp), []byte("KDUMP   (makedumpfile output stands here)\n"), 0o644)
	os.WriteFile(cmds(work), []byte(fmt.Sprintf("mkdir /crash/%[1]s\ncd /crash/%[1]s\nwrite %[2]s dmesg.%[1]s\nwrite %[3]s dump.%[1]s\nsif dmesg.%[1]s mtime @%[4]d\nsif dump.%[1]s mtime @%[4]d\n",
		stamp, dm, filepath.Join(work, "dump."+stamp), crashAt.Unix())), 0o644)
	// The crash left the disk's journal unreplayed. The capture kernel's
	// mount would replay it before kdump-tools writes; debugfs does not,
	// and boot4's replay would then undo its allocations (the inode bitmap
	// no longer matches its checksum). e2fsck replays it first.
	fsck(t, disk)
	runCmd(t, work, nil, "debugfs", "-w", "-f", cmds(work), disk)
	ms, log = boot(t, work, guest{name: "boot4", scenario: filepath.Join(repoDir(t), "e2e/guest/scenarios/agent-boot4.sh"),
		files: files, kmods: kmods, disk: disk, timeout: 180 * time.Second})
	check(ms, log, "back-to-3", "blocked-4", "kdump-evidence", "journal-blocked", "stop-consistent")
	// The planted dump beside the real one is still named and ignored.
	if l, _ := exec.Command("debugfs", "-R", "cat /agent-boot4.log", disk).Output(); !strings.Contains(string(l), "kdump /var/crash/"+planted+": untrusted dump ignored") {
		ls, _ := exec.Command("debugfs", "-R", "ls -l /crash", disk).CombinedOutput()
		t.Errorf("boot4's agent log does not name the planted dump /var/crash/%s as untrusted:\n%s\n/crash on the disk:\n%s", planted, l, ls)
	} else {
		t.Logf("boot4 ignored the planted dump beside the real one: %s", regexp.MustCompile(`kdump scan failed: [^\t]*`).Find(l))
	}
	if t.Failed() {
		return
	}

	// A faulty level 4 (a different RPM, so not blocked) oopses when used:
	// the daemon must see it on /dev/kmsg and roll back to 3 by itself.
	f4 = "klp-cmdline-4-1.oops.x86_64.rpm"
	if b4, err = os.ReadFile(filepath.Join(rpms, f4)); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(www, "rpms", f4), b4, 0o644)
	agentCLI("manifest", "add", "--manifest", src, "--rpm", filepath.Join(www, "rpms", f4), "--url", "rpms/"+f4, "--replace")
	agentCLI("manifest", "sign", "--in", src, "--key", filepath.Join(keys, "release.key"), "--out", signed)
	if err := os.Rename(signed, filepath.Join(www, "manifest.json")); err != nil {
		t.Fatal(err)
	}
	// The guest's netconsole sends the same report to a receiver here:
	// extended records (boot5 sets extended=1) without the release prefix,
	// which 6.1 cannot send. qemu's user networking hands the guest's
	// datagrams to 10.0.2.2 over to the host's loopback, from 127.0.0.1:
	// that is the one sender allowed.
	nr := &health.NetconsoleReceiver{Addr: "127.0.0.1:0", Release: kernelEnv(t)["KLP_E2E_KREL"],
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, RequireRelease: false}
	if err := nr.Listen(); err != nil {
		t.Fatal(err)
	}
	ncCtx, ncStop := context.WithCancel(context.Background())
	defer ncStop()
	ncRecs := make(chan health.Record, 4096)
	go nr.Run(ncCtx, ncRecs)
	portFile := filepath.Join(work, "netconsole-port")
	os.WriteFile(portFile, []byte(strconv.Itoa(nr.LocalAddr().(*net.UDPAddr).Port)), 0o644)
	ms, log = boot(t, work, guest{name: "boot5", scenario: filepath.Join(repoDir(t), "e2e/guest/scenarios/agent-boot5.sh"),
		files: append(files, portFile+":/etc/netconsole-port"), kmods: append(kmods, "configfs", "netconsole"), disk: disk, net: true, timeout: 240 * time.Second})
	check(ms, log, "netconsole", "applied-oops-4", "auto-rollback", "blocked-oops-4", "attributed")
	var cl health.Classifier
	var ncEvents []health.Event
	senders := map[string]int{}
	for len(ncRecs) > 0 {
		r := <-ncRecs
		senders[r.Sender]++
		ncEvents = append(ncEvents, cl.Feed(r, time.Now())...)
	}
	t.Logf("netconsole records by sender: %v (receiver %+v)", senders, nr.Stats())
	if st := nr.Stats(); st.Denied > 0 || st.Plain > 0 {
		t.Errorf("netconsole receiver dropped the guest's datagrams: %d from senders not allowed, %d plain (%+v)", st.Denied, st.Plain, st)
	}
	ncEvents = append(ncEvents, cl.Flush(time.Now().Add(time.Hour))...)
	found := false
	for _, ev := range ncEvents {
		if ev.Kind == health.KindOops && health.Attributed(ev, health.Suspect{Name: "klp_oops_4"}) {
			found = true
			t.Logf("netconsole: %s report attributed to klp_oops_4, %d lines (receiver %+v)", ev.Kind, len(ev.Lines), nr.Stats())
		}
	}
	if !found {
		t.Errorf("netconsole receiver: no oops attributed to klp_oops_4 among %d events (stats %+v)", len(ncEvents), nr.Stats())
	}
	// The kmsg source has the whole report, attributed. Its latency is a
	// make bench figure (target 100 ms; tens of ms measured under TCG):
	// here it is only bounded loosely, 20x the target, because a shared
	// machine slows the emulated guest at random.
	// Read the agent's own log from the disk: on the serial console the
	// kernel's oops lines can split the agent's line.
	// The serial console copy too, in case the disk copy cannot be read.
	agentLog, _ := exec.Command("debugfs", "-R", "cat /agent-boot5.log", disk).Output()
	m := regexp.MustCompile(`kmsg oops report: .*"KLP_ATTRIBUTED": true.*"KLP_DETECT_US": (\d+)`).FindStringSubmatch(string(agentLog) + "\n" + log)
	if m == nil {
		t.Fatalf("no attributed kmsg oops report with KLP_DETECT_US in the agent's log (%d bytes from the disk):\n%s", len(agentLog), tail(log, 40))
	}
	us, _ := strconv.Atoi(m[1])
	t.Logf("kmsg detection latency: %.1f ms after the report's last record", float64(us)/1000)
	if us > 2_000_000 {
		t.Errorf("kmsg detection took %d us, the loose bound is 2 s (make bench measures it)", us)
	}
}

// cmds is the debugfs command file.
func cmds(work string) string { return filepath.Join(work, "debugfs.cmds") }

// plantedOops is the dmesg of a dump a local user plants: an oops in
// klp_cmdline_3 (KREL: the kernel release), as kdump-tools would save it.
const plantedOops = `[    0.000000] Linux version KREL (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3
[    5.229339] klp_cmdline_3: loading out-of-tree module taints kernel.
[    5.231520] livepatch: enabling patch 'klp_cmdline_3'
[    6.140210] livepatch: 'klp_cmdline_3': patching complete
[   61.200000] BUG: kernel NULL pointer dereference, address: 0000000000000000
[   61.200037] #PF: supervisor write access in kernel mode
[   61.200074] #PF: error_code(0x0002) - not-present page
[   61.200111] PGD 0 P4D 0
[   61.200148] Oops: 0002 [#1] PREEMPT SMP NOPTI
[   61.200185] CPU: 0 PID: 231 Comm: klp-trigger Tainted: G           OE K    KREL #1  Debian 6.1.192-3
[   61.200222] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[   61.200259] RIP: 0010:livepatch_cmdline_proc_show+0x2b/0x60 [klp_cmdline_3]
[   61.200296] Code: 0f 1f 44 00 00 48 8b 05 00 00 00 00 c7 04 25 00 00 00 00 00 00 00 00 c3
[   61.200333] RSP: 0018:ffffb1b8c04bfd98 EFLAGS: 00010246
[   61.200666] Call Trace:
[   61.200703]  <TASK>
[   61.200777]  seq_read_iter+0x12c/0x4b0
[   61.200814]  proc_reg_read_iter+0x51/0x90
[   61.200851]  vfs_read+0x1b6/0x2e0
[   61.200888]  ksys_read+0x6b/0xf0
[   61.200925]  do_syscall_64+0x55/0xb0
[   61.200962]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[   61.201110]  </TASK>
[   61.201147] Modules linked in: klp_cmdline_3(OEK) crc32c_generic ext4 mbcache jbd2 virtio_blk virtio_net net_failover failover
[   61.201184] CR2: 0000000000000000
[   61.201221] ---[ end trace 0000000000000000 ]---
[   61.210000] Kernel panic - not syncing: Fatal exception
[   61.210100] Kernel Offset: 0x2a000000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
`
