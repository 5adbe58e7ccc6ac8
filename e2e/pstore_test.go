//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
)

// ramoops lives in 1 MiB of guest memory the kernel is told to leave alone
// (memmap=), inside RAM that qemu maps from a file the test keeps between
// the two boots: what a panic wrote there is still there when the next
// boot's ramoops looks, as on a real machine's warm reset.
const (
	ramoopsAddr   = "0x20000000"
	ramoopsSize   = "0x100000"
	ramoopsRecord = "0x20000"
	guestMemMB    = 1024
)

// TestPstoreRealKernel: a host without kdump. The daemon applies a faulty
// livepatch (klp_oops_3); while it soaks, a read of /proc/cmdline oopses in
// it and, with panic_on_oops, the kernel panics before the daemon can see
// anything. The only record is the kernel's own, in ramoops. After the
// reset the daemon must find it in /sys/fs/pstore, block klp_oops_3 with
// the record named as the cause, and leave the kernel without a patch.
func TestPstoreRealKernel(t *testing.T) {
	env := kernelEnv(t)
	ramoops := filepath.Join(env["KLP_E2E_MODULES"], "kernel/fs/pstore/ramoops.ko")
	if _, err := os.Stat(ramoops); err != nil {
		t.Fatalf("ramoops.ko of %s (CONFIG_PSTORE_RAM=m): %v", env["KLP_E2E_KREL"], err)
	}
	work := t.TempDir()
	pub := newPublisher(t, work)
	src := filepath.Join(work, "manifest.yaml")
	pub.publish(src, "klp-cmdline-3-1.oops.x86_64.rpm")
	srv := nginxtest.Start(t, pub.www)
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]

	cfg := filepath.Join(work, "config.yaml")
	os.WriteFile(cfg, []byte(agentConfig(port, "10m", "")), 0o644)
	params := filepath.Join(work, "pstore-ramoops")
	os.WriteFile(params, []byte(ramoopsAddr+" "+ramoopsSize+" "+ramoopsRecord+"\n"), 0o644)
	disk := filepath.Join(work, "disk.img")
	runCmd(t, work, nil, "mke2fs", "-q", "-t", "ext4", "-F", disk, "64M")
	ram := filepath.Join(work, "guest-ram")
	if err := os.WriteFile(ram, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(ram, guestMemMB<<20); err != nil {
		t.Fatal(err)
	}
	files := append(rpmFiles(t, work), pub.bin+":/usr/bin/klp-agent", cfg+":/etc/klp-agent/config.yaml",
		filepath.Join(pub.keys, "release.pub")+":/etc/klp-agent/keys/release.pub",
		params+":/etc/pstore-ramoops",
		filepath.Join(repoDir(t), "e2e/guest/scenarios/agent-lib.sh")+":/lib/agent-lib.sh",
		filepath.Join(repoDir(t), "e2e/guest/scenarios/pstore-lib.sh")+":/lib/pstore-lib.sh")
	kmods := []string{"virtio_pci", "virtio_blk", "virtio_net", "ext4", "crc32c_generic", "reed_solomon"}
	mem := []string{"-object", "memory-backend-file,id=ram0,size=" + strconv.Itoa(guestMemMB) + "M,mem-path=" + ram + ",share=on",
		"-machine", "memory-backend=ram0"}
	reserve := "memmap=1M$" + ramoopsAddr

	ms, log := boot(t, work, guest{name: "pstore1", scenario: filepath.Join(repoDir(t), "e2e/guest/scenarios/pstore-boot1.sh"),
		files: files, kos: []string{ramoops}, kmods: kmods, disk: disk, net: true, timeout: 300 * time.Second,
		append: []string{reserve}, qemu: mem, crashes: true})
	checkMarkers(t, ms, log, "ramoops", "applied-oops-3")
	if !strings.Contains(log, "Kernel panic - not syncing") || !strings.Contains(log, "[klp_oops_3]") {
		t.Fatalf("the guest did not panic in klp_oops_3:\n%s", tail(log, 40))
	}
	if t.Failed() {
		return
	}
	// The panic left the disk's journal unreplayed; the guest's mount
	// replays it.
	ms, log = boot(t, work, guest{name: "pstore2", scenario: filepath.Join(repoDir(t), "e2e/guest/scenarios/pstore-boot2.sh"),
		files: files, kos: []string{ramoops}, kmods: kmods, disk: disk, timeout: 180 * time.Second,
		append: []string{reserve}, qemu: mem})
	checkMarkers(t, ms, log, "ramoops", "pstore-record", "blocked-3", "no-patch")

	// The records are the kernel's: the oops in klp_oops_3 and the panic
	// it became (ramoops keeps one record per kmsg_dump).
	d := checkMarkers(t, ms, log, "pstore-record")
	var all strings.Builder
	for _, name := range strings.Fields(d["pstore-record"]) {
		rec := debugfsCat(t, disk, "/pstore/"+name)
		first, _, _ := strings.Cut(rec, "\n")
		t.Logf("pstore record %s: %q, %d bytes", name, first, len(rec))
		all.WriteString(rec)
		keep := filepath.Join(os.TempDir(), "klp-e2e-pstore-"+name)
		if err := os.WriteFile(keep, []byte(rec), 0o644); err == nil {
			t.Logf("kept at %s", keep)
		}
	}
	if s := all.String(); !strings.Contains(s, "RIP: 0010:klp_fault") || !strings.Contains(s, "[klp_oops_3]") || !strings.Contains(s, "Kernel panic - not syncing") {
		t.Errorf("the pstore records are not the oops in klp_oops_3 and its panic:\n%s", tail(s, 40))
	}

	// The daemon's verdict, from the status it printed: klp_oops_3 blocked
	// for the boot crash, with the pstore record as its evidence, naming
	// the oops in the patch.
	raw := debugfsCat(t, disk, "/status-pstore-boot2.json")
	var st struct {
		Blocked []struct {
			Name     string   `json:"name"`
			Cause    string   `json:"cause"`
			Reason   string   `json:"reason"`
			Evidence []string `json:"evidence"`
		} `json:"blocked"`
	}
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, raw)
	}
	var found bool
	for _, b := range st.Blocked {
		if b.Name != "klp_oops_3" {
			continue
		}
		found = true
		ev := strings.Join(b.Evidence, "\n")
		t.Logf("blocked klp_oops_3: cause %s, reason %q, evidence:\n%s", b.Cause, b.Reason, ev)
		if !strings.Contains(ev, "pstore") || !strings.Contains(ev, "dmesg-ramoops-0") {
			t.Errorf("klp_oops_3's evidence does not name the pstore record: %q", ev)
		}
		if !strings.Contains(ev+b.Reason, "NULL pointer dereference") {
			t.Errorf("klp_oops_3's block does not name the cause, the oops (NULL pointer dereference): reason %q, evidence %q", b.Reason, ev)
		}
	}
	if !found {
		t.Errorf("klp_oops_3 not blocked: %s", raw)
	}
	// One crash, attributed to the patch, in the journal: the kernel
	// dumped it twice (Oops#1, then Panic#2), the budget counts it once.
	l := debugfsCat(t, disk, "/pstore-boot2.log")
	var reports []string
	for _, line := range strings.Split(l, "\n") {
		if strings.Contains(line, "pstore oops report from the previous boot") {
			reports = append(reports, line)
		}
	}
	if len(reports) != 1 || !strings.Contains(reports[0], `"KLP_ATTRIBUTED": true`) || !strings.Contains(reports[0], `"KLP_PATCH": "klp_oops_3"`) {
		t.Errorf("want one pstore oops report attributed to klp_oops_3 in the daemon's log, got %d:\n%s\nlog tail:\n%s", len(reports), strings.Join(reports, "\n"), tail(l, 40))
	}
}
