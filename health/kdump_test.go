package health

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func kdumpFixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata/kdump", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// dumpFile is one entry of a /var/crash tree built for a test; the trees
// are built at test time because RHEL's directory names hold ':', which a
// Go module may not ship.
type dumpFile struct {
	path, content string
	mtime         time.Time // zero: the tree's default
	link          string    // non-empty: a symlink to this (absolute) path
}

func writeTree(t *testing.T, root string, files []dumpFile, mtime time.Time) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if f.link != "" {
			if err := os.Symlink(f.link, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(f.content), 0o644); err != nil {
			t.Fatal(err)
		}
		mt := f.mtime
		if mt.IsZero() {
			mt = mtime
		}
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
}

func TestKdumpScanner(t *testing.T) {
	deb := kdumpFixture(t, "dmesg-debian.txt")
	rhel := kdumpFixture(t, "vmcore-dmesg-rhel.txt")
	// The capture kernel wrote the dmesg 41 s into the stamp's minute.
	written := time.Date(2026, 11, 25, 12, 30, 41, 0, time.UTC)
	fresh, stale := time.Now(), time.Now().Add(-time.Hour)
	outside := t.TempDir() // a dump outside Dir, reachable by symlinks only
	writeTree(t, outside, []dumpFile{{path: "202611251230/dmesg.202611251230", content: deb}}, written)

	type want struct {
		layout  string
		at      time.Time
		partial bool
	}
	tests := []struct {
		name  string
		files []dumpFile
		since time.Time
		loc   *time.Location
		want  []want
	}{
		{"debian kdump-tools", []dumpFile{{path: "202611251230/dmesg.202611251230", content: deb}, {path: "202611251230/dump.202611251230", content: "KDUMP   "}},
			written.Add(-time.Hour), nil, []want{{"debian", time.Date(2026, 11, 25, 12, 30, 0, 0, time.UTC), false}}},
		{"debian remote target, host tag", []dumpFile{{path: "10.0.0.7-202611251230/dmesg.202611251230", content: deb}},
			written.Add(-time.Hour), nil, []want{{"debian", time.Date(2026, 11, 25, 12, 30, 0, 0, time.UTC), false}}},
		{"rhel kexec-tools", []dumpFile{{path: "127.0.0.1-2026-11-25-12:30:41/vmcore-dmesg.txt", content: rhel}, {path: "127.0.0.1-2026-11-25-12:30:41/vmcore", content: "KDUMP   "}},
			written.Add(-time.Hour), nil, []want{{"rhel", written, false}}},
		{"stamps are the crashed host's local time", []dumpFile{{path: "202611251230/dmesg.202611251230", content: deb}},
			time.Time{}, time.FixedZone("EST", -5*3600), []want{{"debian", time.Date(2026, 11, 25, 17, 30, 0, 0, time.UTC), false}}},
		{"debian still writing", []dumpFile{{path: "202611251230/dmesg.202611251230", content: deb}, {path: "202611251230/dump-incomplete", content: "KD", mtime: fresh}},
			written.Add(-time.Hour), nil, nil},
		{"rhel still writing", []dumpFile{{path: "10.0.0.7-2026-11-25-12:30:41/vmcore-dmesg.txt", content: rhel}, {path: "10.0.0.7-2026-11-25-12:30:41/vmcore-incomplete", content: "KD", mtime: fresh}},
			written.Add(-time.Hour), nil, nil},
		{"rhel dmesg still writing", []dumpFile{{path: "127.0.0.1-2026-11-25-12:30:41/vmcore-dmesg-incomplete.txt", content: rhel[:200], mtime: fresh}},
			written.Add(-time.Hour), nil, nil},
		// A capture that failed long ago (disk full) still shows the crash.
		{"debian capture failed", []dumpFile{{path: "202611251230/dmesg.202611251230", content: deb}, {path: "202611251230/dump-incomplete", content: "KD", mtime: stale}},
			written.Add(-time.Hour), nil, []want{{"debian", time.Date(2026, 11, 25, 12, 30, 0, 0, time.UTC), true}}},
		{"rhel capture failed", []dumpFile{{path: "127.0.0.1-2026-11-25-12:30:41/vmcore-dmesg.txt", content: rhel}, {path: "127.0.0.1-2026-11-25-12:30:41/vmcore-incomplete", content: "KD", mtime: stale}},
			written.Add(-time.Hour), nil, []want{{"rhel", written, true}}},
		{"older than the patch", []dumpFile{{path: "202611251230/dmesg.202611251230", content: deb}}, written.Add(time.Hour), nil, nil},
		// The stamp has minute resolution; the file's mtime decides.
		{"same minute, written after", []dumpFile{{path: "202611251230/dmesg.202611251230", content: deb}}, written.Add(-20 * time.Second), nil,
			[]want{{"debian", time.Date(2026, 11, 25, 12, 30, 0, 0, time.UTC), false}}},
		{"unparsable stamp: the file's mtime", []dumpFile{{path: "202613991299/dmesg.202613991299", content: deb}, {path: "localhost-2026-19-25-12:30:41/vmcore-dmesg.txt", content: rhel}},
			time.Time{}, nil, []want{{"debian", written, false}, {"rhel", written, false}}},
		{"junk is not a dump", []dumpFile{
			{path: "kexec_cmd", content: "kexec -p ..."}, {path: "lost+found/x", content: "y"},
			{path: "2026/dmesg.2026", content: deb}, {path: "202611251230/dmesg.202611251231", content: deb},
			{path: "202611251230.tar", content: deb}, {path: "notes/dmesg.txt", content: deb},
		}, time.Time{}, nil, nil},
		{"symlinks out of Dir are not followed", []dumpFile{
			{path: "202611251230", link: filepath.Join(outside, "202611251230")},
			{path: "202611251231/dmesg.202611251231", link: filepath.Join(outside, "202611251230/dmesg.202611251230")},
		}, time.Time{}, nil, nil},
		{"no dmesg, no dump", []dumpFile{{path: "202611251230/dump.202611251230", content: "KDUMP"}}, time.Time{}, nil, nil},
		{"both layouts, oldest first", []dumpFile{
			{path: "127.0.0.1-2026-11-25-12:40:00/vmcore-dmesg.txt", content: rhel}, {path: "202611251230/dmesg.202611251230", content: deb}},
			time.Time{}, nil, []want{{"debian", time.Date(2026, 11, 25, 12, 30, 0, 0, time.UTC), false}, {"rhel", time.Date(2026, 11, 25, 12, 40, 0, 0, time.UTC), false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, tt.files, written)
			loc := tt.loc
			if loc == nil {
				loc = time.UTC
			}
			dumps, err := KdumpScanner{Dir: dir, Location: loc, OwnerUID: os.Getuid()}.Since(tt.since)
			if err != nil {
				t.Fatal(err)
			}
			if len(dumps) != len(tt.want) {
				t.Fatalf("%d dumps %+v, want %+v", len(dumps), dumps, tt.want)
			}
			for i, d := range dumps {
				w := tt.want[i]
				if d.Layout != w.layout || !d.At.Equal(w.at) || d.Partial != w.partial || !d.Written.Equal(written) {
					t.Fatalf("dump %d: %s at %v partial %v written %v, want %+v", i, d.Layout, d.At, d.Partial, d.Written, w)
				}
				if filepath.Dir(d.DmesgPath) != d.Dir || filepath.Dir(d.Dir) != dir {
					t.Fatalf("paths %s %s", d.Dir, d.DmesgPath)
				}
				checkKlpOops4Dump(t, d)
			}
		})
	}
}

// checkKlpOops4Dump: the fixtures' crash is an oops in klp_oops_4 followed
// by the "Fatal exception" panic.
func checkKlpOops4Dump(t *testing.T, d Dump) {
	t.Helper()
	c := d.Cause()
	if c == nil || c.Kind != KindOops || c.Source != "kdump" || c.RIP.Func != "klp_fault" {
		t.Fatalf("%s: cause %+v", d.Dir, c)
	}
	if !Attributed(*c, Suspect{Name: "klp_oops_4"}) || Attributed(*c, Suspect{Name: "klp_cmdline_3"}) || !d.Attributed(Suspect{Name: "klp_oops_4"}) {
		t.Fatalf("%s: attribution wrong, frames %+v", d.Dir, c.Frames)
	}
	if len(c.Modules) == 0 || c.Modules[0] != "klp_oops_4" {
		t.Fatalf("%s: modules %v", d.Dir, c.Modules)
	}
	ev := d.Evidence()
	if !strings.HasPrefix(ev, "kdump "+d.DmesgPath) || !strings.Contains(ev, "oops: BUG: kernel NULL pointer dereference") || strings.Contains(ev, "\n") ||
		strings.Contains(ev, "incomplete") != d.Partial {
		t.Fatalf("evidence %q", ev)
	}
	// The report happened moments before the capture.
	if c.At.After(d.At) || d.At.Sub(c.At) > time.Second {
		t.Fatalf("event at %v, dump at %v", c.At, d.At)
	}
}

func TestKdumpMissingDir(t *testing.T) {
	dumps, err := KdumpScanner{Dir: filepath.Join(t.TempDir(), "none")}.Since(time.Time{})
	if err != nil || dumps != nil {
		t.Fatalf("missing dir: %v %v", dumps, err)
	}
}

// A dump that cannot be read is named in the error; the others still
// count. A FIFO stands in for it: it must not block the scan either.
func TestKdumpUnreadable(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, []dumpFile{{path: "202611251230/dmesg.202611251230", content: kdumpFixture(t, "dmesg-debian.txt")}}, time.Now())
	if err := os.Mkdir(filepath.Join(dir, "202611251231"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "202611251231/dmesg.202611251231"), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var dumps []Dump
	var err error
	go func() { dumps, err = KdumpScanner{Dir: dir, OwnerUID: os.Getuid()}.Since(time.Time{}); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("scan blocked on a FIFO")
	}
	if err == nil || !strings.Contains(err.Error(), "202611251231") || len(dumps) != 1 {
		t.Fatalf("dumps %d, err %v", len(dumps), err)
	}
}

// Garbage where a dmesg should be: no panic, no report, no error.
func TestKdumpGarbage(t *testing.T) {
	rnd := make([]byte, 256<<10)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range rnd {
		rnd[i] = byte(r.Uint32())
	}
	long := bytes.Repeat([]byte("[    1.000000] x"), 200<<10) // one 3 MiB line
	for name, content := range map[string][]byte{
		"junk fixture": []byte(kdumpFixture(t, "junk.txt")),
		"random":       rnd,
		"one long line": append(append([]byte{}, long...),
			"\n[    2.000000] Oops: 0002 [#1] PREEMPT SMP NOPTI\n"...),
		"empty": nil,
		"nul":   make([]byte, 4096),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, []dumpFile{{path: "202611251230/dmesg.202611251230", content: string(content)}}, time.Now())
			dumps, err := KdumpScanner{Dir: dir, OwnerUID: os.Getuid()}.Since(time.Time{})
			if err != nil || len(dumps) != 1 {
				t.Fatalf("dumps %d, err %v", len(dumps), err)
			}
			d := dumps[0]
			if name == "one long line" {
				// The cut line is bounded, and the line after it is read.
				if len(d.Events) != 1 || d.Events[0].Kind != KindOops {
					t.Fatalf("events %+v", d.Events)
				}
				return
			}
			if len(d.Events) != 0 {
				t.Fatalf("events from garbage: %+v", d.Events)
			}
			if !strings.Contains(d.Evidence(), "no kernel report") {
				t.Fatalf("evidence %q", d.Evidence())
			}
		})
	}
}

// Only the end of a huge dmesg is read: the crash is at the end.
func TestKdumpHugeDmesgTail(t *testing.T) {
	var b strings.Builder
	noise := "[    5.000000] " + strings.Repeat("audit: type=1400 noise ", 40) + "\n"
	for b.Len() < MaxDmesgBytes+MaxDmesgBytes/8 {
		b.WriteString(noise)
	}
	b.WriteString(kdumpFixture(t, "dmesg-debian.txt"))
	dir := t.TempDir()
	writeTree(t, dir, []dumpFile{{path: "202611251230/dmesg.202611251230", content: b.String()}}, time.Now())
	dumps, err := KdumpScanner{Dir: dir, OwnerUID: os.Getuid()}.Since(time.Time{})
	if err != nil || len(dumps) != 1 {
		t.Fatalf("dumps %d, err %v", len(dumps), err)
	}
	checkKlpOops4Dump(t, dumps[0])
}

func TestParseDmesg(t *testing.T) {
	deb := kdumpFixture(t, "dmesg-debian.txt")
	// With panic_on_oops the capture kernel takes over inside the oops,
	// before "end trace" and before any panic line.
	direct := deb[:strings.Index(deb, "---[ end trace")]
	tests := []struct {
		name  string
		in    string
		kinds string
		check func(t *testing.T, evs []Event)
	}{
		{"oops then panic", deb, "oops,panic", func(t *testing.T, evs []Event) {
			if evs[0].KernelTime != 61201221*time.Microsecond || evs[1].Header != "Kernel panic - not syncing: Fatal exception" {
				t.Fatalf("events %+v", evs)
			}
		}},
		{"crash_kexec inside the oops", direct, "oops", func(t *testing.T, evs []Event) {
			if !Attributed(evs[0], Suspect{Name: "klp_oops_4"}) {
				t.Fatalf("frames %+v", evs[0].Frames)
			}
		}},
		{"dmesg -r priority prefix, caller ids, CRLF", "<4>[   70.000001] WARNING: CPU: 1 PID: 9 at kernel/x.c:1 f+0x1/0x2 [klp_warn_4]\r\n" +
			"<4>[   70.000002] [  T231] Call Trace:\r\n<4>[   70.000003] [    C1]  g+0x1/0x2 [klp_warn_4]\r\n<4>[   70.000004] ---[ end trace 0000000000000000 ]---\r\n", "warning",
			func(t *testing.T, evs []Event) {
				if evs[0].RIP.Func != "f" || len(evs[0].Frames) != 1 || evs[0].Frames[0].Module != "klp_warn_4" || strings.Contains(strings.Join(evs[0].Lines, ""), "\r") {
					t.Fatalf("event %+v", evs[0])
				}
			}},
		{"continuation lines without a stamp", "[ 100.5] BUG: kernel NULL pointer dereference, address: 0000000000000000\nOops: 0002 [#1] SMP\n" +
			"[ 100.6] RIP: 0010:klp_fault+0x1d/0x30 [klp_oops_4]\n", "oops", func(t *testing.T, evs []Event) {
			if len(evs[0].Lines) != 3 || evs[0].RIP.Module != "klp_oops_4" || evs[0].KernelTime != 100600*time.Millisecond {
				t.Fatalf("event %+v", evs[0])
			}
		}},
		{"no stamp yet: not kernel log", "Oops: 0002 [#1] SMP\nBUG: kernel NULL pointer dereference\n", "", nil},
		{"separate reports far apart in kernel time", "[ 10.0] WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n[ 20.0] WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n", "warning,warning", nil},
		{"timestamp beyond a Duration", "[99999999999.000000] Oops: 0002 [#1] SMP\n", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs := ParseDmesg(strings.NewReader(tt.in), "kdump")
			var kinds []string
			for _, e := range evs {
				kinds = append(kinds, string(e.Kind))
				if e.Source != "kdump" {
					t.Fatalf("source %q", e.Source)
				}
			}
			if strings.Join(kinds, ",") != tt.kinds {
				t.Fatalf("kinds %v, want %s", kinds, tt.kinds)
			}
			if tt.check != nil {
				tt.check(t, evs)
			}
		})
	}
}

// /var/crash itself may be a symlink to a bigger disk: that one is followed.
func TestKdumpDirSymlink(t *testing.T) {
	target, dir := t.TempDir(), filepath.Join(t.TempDir(), "crash")
	writeTree(t, target, []dumpFile{{path: "202611251230/dmesg.202611251230", content: kdumpFixture(t, "dmesg-debian.txt")}}, time.Now())
	if err := os.Symlink(target, dir); err != nil {
		t.Fatal(err)
	}
	dumps, err := KdumpScanner{Dir: dir, OwnerUID: os.Getuid()}.Since(time.Time{})
	if err != nil || len(dumps) != 1 || !strings.HasPrefix(dumps[0].DmesgPath, dir+"/") {
		t.Fatalf("dumps %+v, err %v", dumps, err)
	}
	checkKlpOops4Dump(t, dumps[0])
}

// A dump's dmesg is written by a kernel that is going down and may be cut
// or corrupt: parsing it never panics, and what it finds is well formed.
func FuzzParseDmesg(f *testing.F) {
	for _, name := range []string{"dmesg-debian.txt", "vmcore-dmesg-rhel.txt", "junk.txt"} {
		if b, err := os.ReadFile(filepath.Join("testdata/kdump", name)); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("<4>[   61.200000] [  T231] BUG: kernel NULL pointer dereference, address: 0000000000000008\n[   61.2\n"))
	f.Add([]byte("[99999999999999999999.1] Oops: 0000 [#1]\n\r\n[1.1234567890] WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		evs := ParseDmesg(bytes.NewReader(b), "kdump")
		for _, ev := range evs {
			if ev.Kind == "" || ev.Source != "kdump" || len(ev.Lines) == 0 || len(ev.Lines) > MaxEventLines || ev.KernelTime < 0 {
				t.Fatalf("malformed event %+v", ev)
			}
			for _, l := range ev.Lines {
				if len(l) > maxDmesgLine {
					t.Fatalf("line of %d bytes kept", len(l))
				}
			}
		}
		if len(evs) > bytes.Count(b, []byte("\n"))+1 {
			t.Fatalf("%d events from %d lines", len(evs), bytes.Count(b, []byte("\n"))+1)
		}
	})
}
