package health

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Names an unprivileged user can give a program (at most 15 bytes, the
// kernel's TASK_COMM_LEN) that look like the start of a kernel report.
var forgedNames = []string{
	"Oops:", "Oops: 0000 [#1]", "detected stalls", "BUG: kernel NUL", "Kernel panic - ", "WARNING: CPU: 0",
	"INFO: task x:1 ", "kernel BUG at x", " [klp_cmdline_1]", "general protect", "divide error: 0",
	"watchdog: BUG: ", "rcu: INFO: rcu_", "---[ end trace ", "Internal error:", "UBSAN: x in a:1:",
	"a+0x1/0x2 [klp]", "WARNING: at x:1 ",
}

// forgedLines are what the kernel logs with such a name in front, in the
// kernel's own formats (arch/x86/mm/fault.c show_signal_msg, traps.c
// show_signal, mm/oom_kill.c dump_header, ratelimit.h), each with the
// printk level the kernel logs it at.
func forgedLines(comm string) []corpusLine {
	return []corpusLine{
		{level: 6, text: comm + "[4242]: segfault at 0 ip 000055d0c0ffe15d sp 00007ffd9c6f1d20 error 6 in segv[55d0c0ffe000+1000] likely on CPU 1 (core 1, socket 0)"},
		{level: 6, text: "Code: 48 89 e5 c7 04 25 00 00 00 00 2a 00 00 00 b8 00 00 00 00 <c7> 04 25 00 00 00 00 00 00 00 00 5d c3"},
		{level: 6, text: "traps: " + comm + "[4243] trap divide error ip:55d0c0ffe151 sp:7ffd9c6f1d20 error:0 in segv[55d0c0ffe000+1000]"},
		{level: 4, text: comm + " invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0"},
		{level: 4, text: "CPU: 1 PID: 4244 Comm: " + comm + " Not tainted 6.1.0-57-amd64 #1  Debian 6.1.158-1"},
		{level: 4, text: "Call Trace:"},
		{level: 4, text: " <TASK>"},
		{level: 4, text: " dump_stack_lvl+0x44/0x5c"},
		{level: 4, text: " dump_header+0x4a/0x211"},
		{level: 4, text: " cmdline_proc_show+0x19/0x40 [klp_cmdline_1]"},
		{level: 4, text: " </TASK>"},
		{level: 4, text: comm + ": 3 output lines suppressed due to ratelimiting"},
	}
}

// What users can make the kernel log raises no report, through any path.
func TestForgedNamesRaiseNothing(t *testing.T) {
	var lines []corpusLine
	for i, name := range forgedNames {
		for _, l := range forgedLines(name) {
			l.usec = int64(1_000_000 + 10_000*i + len(lines))
			lines = append(lines, l)
		}
	}
	f := corpusFile{name: "forged", lines: lines}
	for _, p := range []struct {
		name string
		feed func(*testing.T, corpusFile) []Event
	}{{"kmsg", viaKmsg}, {"netconsole", viaNetconsole}, {"kdump", viaKdump}} {
		if evs := p.feed(t, f); len(evs) != 0 {
			t.Errorf("%s: %d forged report(s): %v %q", p.name, len(evs), kindsOf(evs), evs[0].Header)
		}
	}
}

// The corpus's real reports, written to /dev/kmsg from user space (the
// kernel gives every such record a facility other than 0) or logged at
// INFO, raise nothing: a report opens only at the kernel's own level.
func TestRealReportsOutsideTheKernelRaiseNothing(t *testing.T) {
	for _, f := range loadCorpus(t, "reports") {
		for _, tt := range []struct {
			name string
			prio func(corpusLine) int
		}{
			{"user facility", func(l corpusLine) int { return 1<<3 | l.levelOrKernel() }},
			{"daemon facility, emergency", func(corpusLine) int { return 3 << 3 }},
			{"kernel facility, INFO", func(corpusLine) int { return 6 }},
		} {
			var c Classifier
			var evs []Event
			for i, l := range f.lines {
				r, err := ParseKmsg([]byte(fmt.Sprintf("%d,%d,%d,-;%s\n", tt.prio(l), i+1, l.usec, ncEscape(l.text))))
				if err != nil {
					t.Fatal(err)
				}
				evs = append(evs, c.Feed(r, time.Unix(0, l.usec*1000))...)
			}
			evs = append(evs, c.Flush(time.Unix(1<<40, 0))...)
			if len(evs) != 0 {
				t.Errorf("%s as %s: %v %q", f.name, tt.name, kindsOf(evs), evs[0].Header)
			}
		}
	}
}

// A dump someone other than root could have written is ignored and named:
// the dump directory or its dmesg file belonging to another user (a
// world-writable /var/crash lets any user plant one), or writable by
// group or others.
func TestPlantedDumpsAreIgnored(t *testing.T) {
	oops, err := os.ReadFile("testdata/oops-klp.txt")
	if err != nil {
		t.Fatal(err)
	}
	var dmesg strings.Builder
	for i, l := range strings.Split(strings.TrimRight(string(oops), "\n"), "\n") {
		fmt.Fprintf(&dmesg, "[  100.%06d] %s\n", i, l)
	}
	me := os.Getuid()
	tests := []struct {
		name    string
		plant   func(t *testing.T, dir, file string)
		scanner func(s *KdumpScanner)
		trusted bool
	}{
		{"root's, as kdump-tools leaves it", func(t *testing.T, dir, file string) {}, nil, true},
		{"world-writable directory", func(t *testing.T, dir, file string) { os.Chmod(dir, 0o777) }, nil, false},
		{"group-writable dmesg", func(t *testing.T, dir, file string) { os.Chmod(file, 0o664) }, nil, false},
		{"another user's", func(t *testing.T, dir, file string) {}, func(s *KdumpScanner) { s.OwnerUID = me + 1 }, false},
		{"nobody's", func(t *testing.T, dir, file string) {
			if me != 0 {
				t.Fatalf("chown to nobody needs root (make check runs as root)")
			}
			for _, p := range []string{dir, file} {
				if err := os.Chown(p, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			}
		}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			os.Chmod(root, 0o1777) // as Ubuntu's /var/crash
			dir := filepath.Join(root, "202611301200")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(dir, "dmesg.202611301200")
			if err := os.WriteFile(file, []byte(dmesg.String()), 0o644); err != nil {
				t.Fatal(err)
			}
			tt.plant(t, dir, file)
			s := KdumpScanner{Dir: root, OwnerUID: me, Location: time.UTC}
			if tt.scanner != nil {
				tt.scanner(&s)
			}
			dumps, err := s.Since(time.Time{})
			if tt.trusted {
				if err != nil || len(dumps) != 1 || dumps[0].Cause() == nil || dumps[0].Cause().Kind != KindOops {
					t.Fatalf("trusted dump: %+v %v", dumps, err)
				}
				return
			}
			if len(dumps) != 0 || !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("planted dump: %d dumps, err %v", len(dumps), err)
			}
			ev, err := s.CrashesSince(time.Time{})
			if len(ev) != 0 || !errors.Is(err, ErrUntrusted) {
				t.Fatalf("evidence from a planted dump: %+v %v", ev, err)
			}
		})
	}
}

// FuzzReports feeds arbitrary lines at arbitrary levels: every report
// opens on a header at the kernel's level for it, never on anything else,
// and the same lines from user space (facility 1) open nothing.
func FuzzReports(f *testing.F) {
	b, err := os.ReadFile("testdata/oops-klp.txt")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b, []byte{1, 1, 1, 1, 4, 4, 4})
	f.Add([]byte("Oops:[1234]: segfault at 0 ip 0 sp 0 error 6\nINFO: task a:1 blocked for more than 2 seconds.\n"), []byte{6, 3})
	f.Add([]byte("------------[ cut here ]------------\nWARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2 [klp_x]\n---[ end trace 0 ]---\n"), []byte{4})
	f.Fuzz(func(t *testing.T, text []byte, levels []byte) {
		// Bounded so each run is quick: the regexps are linear, but
		// coverage instrumentation makes a huge input slow to run.
		if len(text) > 16<<10 {
			text = text[:16<<10]
		}
		lines := strings.Split(string(text), "\n")
		level := func(i int) int {
			if len(levels) == 0 {
				return 4
			}
			return int(levels[i%len(levels)] & 7)
		}
		fed := map[string][]int{} // text -> levels it was fed at
		var kernel, user Classifier
		var evs, userEvs []Event
		for i, l := range lines {
			now := time.Unix(0, int64(i)*int64(time.Millisecond))
			fed[l] = append(fed[l], level(i))
			evs = append(evs, kernel.Feed(Record{Facility: 0, Level: level(i), Text: l, Source: "kmsg"}, now)...)
			userEvs = append(userEvs, user.Feed(Record{Facility: 1, Level: level(i), Text: l, Source: "kmsg"}, now)...)
		}
		evs = append(evs, kernel.Flush(time.Unix(1<<40, 0))...)
		userEvs = append(userEvs, user.Flush(time.Unix(1<<40, 0))...)
		if len(userEvs) != 0 {
			t.Fatalf("user-space records opened %d report(s): %q", len(userEvs), userEvs[0].Header)
		}
		for _, ev := range evs {
			if len(ev.Lines) > MaxEventLines {
				t.Fatalf("%d lines in one report", len(ev.Lines))
			}
			ok := false
			for _, lv := range fed[ev.Header] {
				if _, h := matchHeader(ev.Header, lv); h {
					ok = true
				}
			}
			if !ok {
				t.Fatalf("a report opened on %q, not a header at the level it came at", ev.Header)
			}
		}
	})
}
