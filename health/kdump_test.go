package health

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dmesgText renders a fixture as dmesg prints it: "[    secs.usecs] text",
// preceded by boot noise and followed by the panic that kdump caught.
func dmesgText(t *testing.T, fixture string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + fixture)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\n")
	fmt.Fprintf(&sb, "[    1.204113] e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex\n")
	for i, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		fmt.Fprintf(&sb, "[  %3d.%06d] %s\n", 61, 200000+i*37, l)
	}
	fmt.Fprintf(&sb, "[   61.210000] Kernel panic - not syncing: Fatal exception\n")
	fmt.Fprintf(&sb, "[   61.210100] Kernel Offset: 0x2a000000 from 0xffffffff81000000\n")
	return sb.String()
}

type dumpFile struct {
	path, content string
}

func writeTree(t *testing.T, root string, files []dumpFile, mtime time.Time) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
}

func TestKdumpScanner(t *testing.T) {
	oops := dmesgText(t, "oops-klp.txt")
	crash := time.Date(2026, 11, 25, 12, 30, 41, 0, time.UTC)
	tests := []struct {
		name   string
		files  []dumpFile
		since  time.Time
		layout []string // of the dumps found, in order
	}{
		{"debian kdump-tools", []dumpFile{{"202611251230/dmesg.202611251230", oops}, {"202611251230/dump.202611251230", "KDUMP"}},
			crash.Add(-time.Hour), []string{"debian"}},
		{"rhel kexec-tools", []dumpFile{{"127.0.0.1-2026-11-25-12:30:41/vmcore-dmesg.txt", oops}, {"127.0.0.1-2026-11-25-12:30:41/vmcore", "KDUMP"}},
			crash.Add(-time.Hour), []string{"rhel"}},
		{"debian still writing", []dumpFile{{"202611251230/dmesg.202611251230", oops}, {"202611251230/dump-incomplete", "KD"}},
			crash.Add(-time.Hour), nil},
		{"rhel still writing", []dumpFile{{"10.0.0.7-2026-11-25-12:30:41/vmcore-dmesg.txt", oops}, {"10.0.0.7-2026-11-25-12:30:41/vmcore-incomplete", "KD"}},
			crash.Add(-time.Hour), nil},
		{"older than the patch", []dumpFile{{"202611251230/dmesg.202611251230", oops}}, crash.Add(time.Hour), nil},
		// The stamp has minute resolution; the file's mtime decides.
		{"same minute, written after", []dumpFile{{"202611251230/dmesg.202611251230", oops}}, crash.Add(-20 * time.Second), []string{"debian"}},
		{"junk is not a dump", []dumpFile{{"kexec_cmd", "x"}, {"lost+found/x", "y"}, {"2026/dmesg.2026", oops}, {"202699999999/dmesg.202699999999", oops}},
			time.Time{}, nil},
		{"no dmesg, no dump", []dumpFile{{"202611251230/dump.202611251230", "KDUMP"}}, time.Time{}, nil},
		{"both layouts, oldest first", []dumpFile{
			{"127.0.0.1-2026-11-25-12:40:00/vmcore-dmesg.txt", oops}, {"202611251230/dmesg.202611251230", oops}},
			time.Time{}, []string{"debian", "rhel"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, tt.files, crash)
			dumps, err := KdumpScanner{Dir: dir, Location: time.UTC}.Since(tt.since)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range dumps {
				got = append(got, d.Layout)
			}
			if strings.Join(got, ",") != strings.Join(tt.layout, ",") {
				t.Fatalf("dumps %v, want %v", got, tt.layout)
			}
			for _, d := range dumps {
				w := d.Cause()
				if w == nil || w.Kind != KindOops || !d.Attributed(Patch{Name: "klp_oops_4"}) || w.Source != "kdump" {
					t.Fatalf("dump %s: worst event %+v, want one attributed to klp_oops_4", d.Dir, w)
				}
				if !strings.Contains(d.Evidence(), d.DmesgPath) || !strings.Contains(d.Evidence(), "oops") {
					t.Fatalf("evidence %q", d.Evidence())
				}
			}
		})
	}
}

func TestKdumpMissingDir(t *testing.T) {
	dumps, err := KdumpScanner{Dir: filepath.Join(t.TempDir(), "none")}.Since(time.Time{})
	if err != nil || dumps != nil {
		t.Fatalf("missing dir: %v %v", dumps, err)
	}
}

func TestParseDmesg(t *testing.T) {
	evs := ParseDmesg(strings.NewReader(dmesgText(t, "oops-klp.txt")+
		"garbage line without a stamp\n<4>[   70.000001] WARNING: CPU: 1 PID: 9 at kernel/x.c:1 f+0x1/0x2\n"+
		"[   70.000002] ---[ end trace 0000000000000000 ]---\n"), "kdump")
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, string(e.Kind))
	}
	// The oops (upgraded to the panic that followed it) and the warning.
	if strings.Join(kinds, ",") != "panic,warning" && strings.Join(kinds, ",") != "oops,panic,warning" {
		t.Fatalf("kinds %v", kinds)
	}
	if evs[0].KernelTime < 61*time.Second || evs[0].KernelTime > 62*time.Second {
		t.Fatalf("kernel time %v", evs[0].KernelTime)
	}
}
