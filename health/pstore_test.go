package health

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var pstoreT0 = time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)

// copyPstore copies a sample's pstore/ files into a fresh directory as
// pstore leaves them (0444, dated mtime) and returns it.
func copyPstore(t *testing.T, from string, mtime time.Time) string {
	t.Helper()
	dir := t.TempDir()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writePstore(t, dir, e.Name(), b, mtime)
	}
	return dir
}

func writePstore(t *testing.T, dir, name string, b []byte, mtime time.Time) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// readWant reads a sample's want file: "key: value" lines.
func readWant(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			t.Fatalf("%s: %q is not key: value", path, l)
		}
		want[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return want
}

// TestPstoreSamples reads every sample under testdata/pstore/<case>/pstore
// as /sys/fs/pstore and checks what its want file says: crashes (how many
// dumps), note, cause (kind of the cause), rip (its function) and
// attributed (a module the dump is attributed to). A record taken from a
// real kernel is dropped in as one more directory.
func TestPstoreSamples(t *testing.T) {
	cases, err := filepath.Glob("testdata/pstore/*/want")
	if err != nil || len(cases) < 2 {
		t.Fatalf("samples: %v %v", cases, err)
	}
	for _, wantFile := range cases {
		dir := filepath.Dir(wantFile)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			want := readWant(t, wantFile)
			s := PstoreScanner{Dir: copyPstore(t, filepath.Join(dir, "pstore"), pstoreT0), OwnerUID: os.Getuid(),
				Booted: pstoreT0.Add(time.Minute)}
			crashes, err := s.CrashesSince(pstoreT0.Add(-time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			if n := want["crashes"]; n != "" && n != strconv.Itoa(len(crashes)) {
				t.Fatalf("%d crashes, want %s: %+v", len(crashes), n, crashes)
			}
			c := crashes[len(crashes)-1]
			cause := c.Cause()
			if c.Source != SourcePstore || !c.At.Equal(pstoreT0) || cause == nil {
				t.Fatalf("crash %+v", c)
			}
			for k, v := range want {
				var got string
				switch k {
				case "crashes":
					continue
				case "note":
					got = c.Note
				case "cause":
					got = string(cause.Kind)
				case "rip":
					got = cause.RIP.Func
				case "attributed":
					if c.Attributed(Suspect{Name: v}) {
						got = v
					}
				default:
					t.Fatalf("unknown key %q in %s", k, wantFile)
				}
				if got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if c.Attributed(Suspect{Name: "klp_other"}) {
				t.Error("attributed to a module the trace does not run through")
			}
			ev := c.Evidence()
			if !strings.HasPrefix(ev, "pstore "+c.Path+" ("+c.Note+"): "+string(cause.Kind)+": ") {
				t.Errorf("evidence %q", ev)
			}
			// The cause is the crash itself, not a line of an older
			// report: its wall time is the record's.
			if !cause.At.Before(pstoreT0.Add(time.Second)) || cause.At.Before(pstoreT0.Add(-time.Minute)) {
				t.Errorf("cause at %v, record at %v", cause.At, pstoreT0)
			}
		})
	}
}

// The parts of a dump are put back in order whatever the file names say:
// the sample's parts renamed in reverse give the same crash.
func TestPstorePartOrder(t *testing.T) {
	from := "testdata/pstore/ramoops-oops-gpf-6.1/pstore"
	want, err := PstoreScanner{Dir: copyPstore(t, from, pstoreT0), OwnerUID: os.Getuid()}.Scan()
	if err != nil || len(want) != 1 {
		t.Fatal(want, err)
	}
	dir := t.TempDir()
	ents, _ := os.ReadDir(from)
	for i, e := range ents {
		b, _ := os.ReadFile(filepath.Join(from, e.Name()))
		writePstore(t, dir, "dmesg-ramoops-"+strconv.Itoa(len(ents)-1-i), b, pstoreT0)
	}
	got, err := PstoreScanner{Dir: dir, OwnerUID: os.Getuid()}.Scan()
	if err != nil || len(got) != 1 || len(got[0].Events) != len(want[0].Events) || got[0].Cause().Header != want[0].Cause().Header {
		t.Fatalf("reversed names: %+v %v", got, err)
	}
	// Without its Part1 the dump is still read, and says so.
	os.Remove(filepath.Join(dir, "dmesg-ramoops-"+strconv.Itoa(len(ents)-1)))
	got, _ = PstoreScanner{Dir: dir, OwnerUID: os.Getuid()}.Scan()
	if len(got) != 1 || !strings.Contains(got[0].Note, "newest part 1 missing") {
		t.Fatalf("without Part1: %+v", got)
	}
}

// Records are the kernel's only if root alone could have written them,
// are read without blocking on a FIFO, and bounded.
func TestPstoreRefuses(t *testing.T) {
	oops, err := os.ReadFile("testdata/pstore/ramoops-oops-gpf-6.1/pstore/dmesg-ramoops-0")
	if err != nil {
		t.Fatal(err)
	}
	var bomb bytes.Buffer
	zw, _ := flate.NewWriter(&bomb, flate.BestCompression)
	zw.Write([]byte("Panic#1 Part1\n"))
	zw.Write(make([]byte, maxPstoreDumpBytes+1))
	zw.Close()
	for _, tt := range []struct {
		name  string
		plant func(t *testing.T, dir string)
		err   error  // errors.Is
		says  string // in the error
		owner int    // the uid the scanner wants, relative to ours
	}{
		{"another user's", func(t *testing.T, dir string) {
			writePstore(t, dir, "dmesg-ramoops-0", oops, pstoreT0)
		}, ErrUntrusted, "belongs to uid", 1},
		{"group-writable", func(t *testing.T, dir string) {
			writePstore(t, dir, "dmesg-ramoops-0", oops, pstoreT0)
			os.Chmod(filepath.Join(dir, "dmesg-ramoops-0"), 0o666)
		}, ErrUntrusted, "writable by group or others", 0},
		{"fifo", func(t *testing.T, dir string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "dmesg-ramoops-0"), 0o400); err != nil {
				t.Fatal(err)
			}
		}, nil, "not a regular file", 0},
		{"symlink", func(t *testing.T, dir string) {
			target := filepath.Join(t.TempDir(), "x")
			writePstore(t, filepath.Dir(target), "x", oops, pstoreT0)
			os.Symlink(target, filepath.Join(dir, "dmesg-ramoops-0"))
		}, nil, "", 0},
		{"undated", func(t *testing.T, dir string) {
			writePstore(t, dir, "dmesg-ramoops-0", oops, pstoreT0.Add(2*time.Hour)) // after Booted
		}, ErrPstoreUndated, "at or after this boot began", 0},
		{"no header", func(t *testing.T, dir string) {
			writePstore(t, dir, "dmesg-efi-1", []byte("<4>[ 1.0] Oops: 0000 [#1] SMP\n"), pstoreT0)
		}, nil, "no kmsg_dump header", 0},
		{"inflate bomb", func(t *testing.T, dir string) {
			writePstore(t, dir, "dmesg-efi-1.enc.z", bomb.Bytes(), pstoreT0)
		}, nil, "inflates to more than", 0},
		{"shutdown", func(t *testing.T, dir string) {
			writePstore(t, dir, "dmesg-ramoops-0", append([]byte("Shutdown#1 Part1\n"), oops[len("Oops#1 Part1\n"):]...), pstoreT0)
		}, nil, "", 0},
		{"other record types", func(t *testing.T, dir string) {
			writePstore(t, dir, "console-ramoops-0", oops[len("Oops#1 Part1\n"):], pstoreT0)
			writePstore(t, dir, "pmsg-ramoops-0", oops, pstoreT0)
		}, nil, "", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.plant(t, dir)
			s := PstoreScanner{Dir: dir, OwnerUID: os.Getuid() + tt.owner, Booted: pstoreT0.Add(time.Hour)}
			done := make(chan struct{})
			var crashes []Crash
			go func() {
				crashes, err = s.CrashesSince(time.Time{})
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the scan blocked")
			}
			if len(crashes) != 0 {
				t.Fatalf("crashes from a refused record: %+v", crashes)
			}
			if tt.says == "" {
				if err != nil {
					t.Fatalf("err = %v, want none", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.says) || (tt.err != nil && !errors.Is(err, tt.err)) {
				t.Fatalf("err = %v, want %v saying %q", err, tt.err, tt.says)
			}
		})
	}
}

// A record stays in pstore until someone deletes it (the agent never
// does): it is evidence only against what went in before it was written,
// so a record already counted is not counted again against a later patch.
func TestPstoreCountedOnce(t *testing.T) {
	s := PstoreScanner{Dir: copyPstore(t, "testdata/pstore/ramoops-oops-gpf-6.1/pstore", pstoreT0), OwnerUID: os.Getuid()}
	for _, tt := range []struct {
		since time.Time
		n     int
	}{
		{pstoreT0.Add(-time.Minute), 1}, // the patch it crashed
		{pstoreT0, 0},                   // applied at the moment it was written
		{pstoreT0.Add(time.Hour), 0},    // a later patch, next boots
	} {
		got, err := s.CrashesSince(tt.since)
		if err != nil || len(got) != tt.n {
			t.Errorf("since %v: %d crashes (%v), want %d", tt.since, len(got), err, tt.n)
		}
	}
	// Still there: nothing was deleted.
	if ents, _ := os.ReadDir(s.Dir); len(ents) != 3 {
		t.Fatalf("%d records left", len(ents))
	}
}

// Two dumps of one boot (an oops, then the panic) are two crashes; the
// same dump count in another boot, dated apart, is another crash too.
func TestPstoreGroups(t *testing.T) {
	oops, _ := os.ReadFile("testdata/pstore/ramoops-oops-gpf-6.1/pstore/dmesg-ramoops-0")
	body := oops[len("Oops#1 Part1\n"):]
	dir := t.TempDir()
	writePstore(t, dir, "dmesg-ramoops-0", append([]byte("Oops#1 Part1\n"), body...), pstoreT0)
	writePstore(t, dir, "dmesg-ramoops-1", append([]byte("Panic#2 Part1\n"), body...), pstoreT0.Add(time.Second))
	writePstore(t, dir, "dmesg-ramoops-2", append([]byte("Oops#1 Part1\n"), body...), pstoreT0.Add(-24*time.Hour))
	got, err := PstoreScanner{Dir: dir, OwnerUID: os.Getuid()}.Scan()
	// An oops that became a panic is dumped twice (Oops#1, then Panic#2,
	// the same report in both): one crash, or the budget counts it twice.
	// The same report a day earlier is another crash.
	if err != nil || len(got) != 2 {
		t.Fatalf("%d crashes, %v", len(got), err)
	}
	if !got[0].At.Equal(pstoreT0.Add(-24*time.Hour)) || got[1].Note != "Panic#2; also dmesg-ramoops-0 (Oops#1)" {
		t.Fatalf("order: %q %q", got[0].Note, got[1].Note)
	}
}

// The crash budget's sources are the host kernel's own; the scanners'
// records are crashes by construction.
func TestSourceTraits(t *testing.T) {
	for _, tt := range []struct {
		s                  Source
		local, afterReboot bool
	}{
		{SourceKmsg, true, false},
		{SourceTaint, true, false},
		{SourceKdump, true, true},
		{SourcePstore, true, true},
		{SourceNetconsole, false, false},
		{SourceCommand, false, false},
		{Source("made-up"), false, false},
	} {
		if tt.s.Local() != tt.local || tt.s.AfterReboot() != tt.afterReboot {
			t.Errorf("%s: local %v, after reboot %v", tt.s, tt.s.Local(), tt.s.AfterReboot())
		}
	}
	if got := fmt.Sprint(Sources()); got != "[command kdump kmsg netconsole pstore taint]" {
		t.Errorf("sources %s", got)
	}
	var _ Scanner = KdumpScanner{}
	var _ Scanner = PstoreScanner{}
}
