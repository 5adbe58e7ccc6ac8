package health

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SourceKdump is a kdump capture's dmesg (KdumpScanner).
const SourceKdump Source = "kdump"

func init() { registerSource(SourceKdump, sourceTraits{local: true, record: true}) }

// Dump is one kdump capture.
type Dump struct {
	Dir    string `json:"dir"`
	Layout string `json:"layout"` // "debian" (kdump-tools) or "rhel" (kexec-tools)
	// At is when the capture kernel started: the directory's stamp (minute
	// resolution for Debian), or the dmesg file's mtime when the stamp
	// does not parse.
	At        time.Time `json:"at"`
	Written   time.Time `json:"written"` // the dmesg file's mtime
	DmesgPath string    `json:"dmesg"`
	// Partial: the capture failed (its *-incomplete file stayed behind,
	// typically a full disk), but the dmesg, written on its own, shows the
	// crash all the same.
	Partial bool    `json:"partial,omitempty"`
	Events  []Event `json:"events,omitempty"`
}

// Crash is the dump as a crash record.
func (d Dump) Crash() Crash {
	c := Crash{Source: SourceKdump, Path: d.DmesgPath, At: d.At, Events: d.Events}
	if d.Partial {
		c.Note = "capture incomplete"
	}
	return c
}

// Cause is the report that most likely brought the kernel down (see
// Crash.Cause).
func (d Dump) Cause() *Event { return d.Crash().Cause() }

// Attributed reports whether any report in the dump runs through p.
func (d Dump) Attributed(p Suspect) bool { return d.Crash().Attributed(p) }

// Evidence is one line for a block record: the dmesg path and the cause.
func (d Dump) Evidence() string { return d.Crash().Evidence() }

// oneLine keeps text from a dump file printable and bounded in a record.
func oneLine(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "..."
	}
	return s
}

// KdumpScanner finds dumps under Dir (e.g. /var/crash) in the layouts of
// Debian's kdump-tools ([<host>-]<YYYYMMDDHHMM>/dmesg.<stamp> + dump.<stamp>)
// and RHEL's kexec-tools (<host>-<YYYY-MM-DD-HH:MM:SS>/vmcore-dmesg.txt +
// vmcore). Only what Dir holds is read: symlinked dump directories are
// skipped and no symlink is followed out of Dir.
type KdumpScanner struct {
	Dir string
	// Location of the stamps in directory names (the crashed host's local
	// time); nil = time.Local.
	Location *time.Location
	// Settle: a *-incomplete file modified within this long is a capture
	// still being written (to a remote target) and its dump is skipped;
	// an older one is a capture that failed, reported as Partial. The
	// capture kernel finishes before the host boots again, so on the
	// crashed host itself a leftover *-incomplete is a failure. 0 = 10 min.
	Settle time.Duration
	// OwnerUID is who must own a dump's directory and dmesg file: 0, root,
	// as kdump-tools and kexec-tools leave them. A dump another user could
	// have written (its files not root's, or group- or world-writable; an
	// unprivileged user can plant one where /var/crash is 1777) is
	// untrusted: ignored, and named in the error. Tests set their own uid.
	OwnerUID int
}

// ErrUntrusted is a dump the scanner ignores because someone other than
// root could have written it.
var ErrUntrusted = errors.New("untrusted dump ignored")

// MaxDmesgBytes bounds how much of a dump's dmesg is read: the end, where
// the crash is.
const MaxDmesgBytes = 16 << 20

// maxDmesgLine bounds one line; kernel records are under 1 KiB.
const maxDmesgLine = 64 << 10

var (
	debianDirRE = regexp.MustCompile(`^(?:.+-)?(\d{12})$`)
	rhelStampRE = regexp.MustCompile(`-(\d{4}-\d{2}-\d{2}-\d{2}:\d{2}:\d{2})$`)
	// "[   12.345678] text", "<4>[   12.345678] text" (dmesg -r), with an
	// optional caller id "[  T231] " (CONFIG_PRINTK_CALLER).
	dmesgLineRE = regexp.MustCompile(`^(?:<(\d{1,4})>)?\[\s*(\d{1,19})\.(\d{1,9})\] ?(?:\[\s*[TC]\d+\] ?)?(.*)$`)
)

// Since returns the dumps written after t, oldest first. A dump counts
// from when it was written (the dmesg file's mtime) or its stamp, whichever
// is later: stamps have minute resolution only. A missing Dir is no dumps.
// A dump that cannot be read is left out and named in the error, which
// comes with the dumps that could.
func (s KdumpScanner) Since(t time.Time) ([]Dump, error) {
	all, err := s.Scan()
	var out []Dump
	for _, d := range all {
		if d.Written.After(t) || d.At.After(t) {
			out = append(out, d)
		}
	}
	return out, err
}

// Scan returns every dump under Dir, oldest first (see Since).
func (s KdumpScanner) Scan() ([]Dump, error) {
	root, err := os.OpenRoot(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kdump scan: %w", err)
	}
	defer root.Close()
	ents, err := readDir(root, ".")
	if err != nil {
		return nil, fmt.Errorf("kdump scan %s: %w", s.Dir, err)
	}
	var out []Dump
	var errs []error
	for _, e := range ents {
		if !e.IsDir() { // files, and symlinks wherever they point
			continue
		}
		d, ok, err := s.dump(root, e.Name())
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(a, b Dump) int {
		if c := a.At.Compare(b.At); c != 0 {
			return c
		}
		return strings.Compare(a.Dir, b.Dir)
	})
	return out, errors.Join(errs...)
}

// dump reads directory name under root; ok is false for what is not a
// dump (yet).
func (s KdumpScanner) dump(root *os.Root, name string) (Dump, bool, error) {
	d := Dump{Dir: filepath.Join(s.Dir, name)}
	ents, err := readDir(root, name)
	if err != nil {
		if !debianDirRE.MatchString(name) && !rhelStampRE.MatchString(name) {
			return Dump{}, false, nil // lost+found and the like: not ours to report
		}
		return Dump{}, false, fmt.Errorf("kdump %s: %w", d.Dir, err)
	}
	var stamp, layout string
	files := map[string]fs.DirEntry{}
	for _, e := range ents {
		files[e.Name()] = e
	}
	// Neither tool makes symlinks: one here is not theirs.
	isFile := func(n string) bool { e := files[n]; return e != nil && e.Type()&fs.ModeSymlink == 0 }
	if m := debianDirRE.FindStringSubmatch(name); m != nil && isFile("dmesg."+m[1]) {
		d.Layout, stamp, layout = "debian", m[1], "200601021504"
		d.DmesgPath = path.Join(name, "dmesg."+m[1])
	} else if isFile("vmcore-dmesg.txt") {
		d.Layout, layout = "rhel", "2006-01-02-15:04:05"
		if m := rhelStampRE.FindStringSubmatch(name); m != nil {
			stamp = m[1]
		}
		d.DmesgPath = path.Join(name, "vmcore-dmesg.txt")
	} else {
		return Dump{}, false, nil // unrelated, or no dmesg (yet)
	}
	settle := s.Settle
	if settle <= 0 {
		settle = 10 * time.Minute
	}
	for n, e := range files {
		if !strings.Contains(n, "-incomplete") {
			continue
		}
		fi, err := e.Info()
		if err != nil || time.Since(fi.ModTime()) < settle {
			return Dump{}, false, nil // still being written
		}
		d.Partial = true
	}
	f, fi, err := openRegular(root, d.DmesgPath)
	if err != nil {
		return Dump{}, false, fmt.Errorf("kdump %s: %w", d.Dir, err)
	}
	defer f.Close()
	di, err := root.Lstat(name)
	if err != nil {
		return Dump{}, false, fmt.Errorf("kdump %s: %w", d.Dir, err)
	}
	for _, c := range []struct {
		what string
		fi   fs.FileInfo
	}{{"directory", di}, {"dmesg file", fi}} {
		if why := s.untrusted(c.fi); why != "" {
			return Dump{}, false, fmt.Errorf("kdump %s: %w: its %s %s", d.Dir, ErrUntrusted, c.what, why)
		}
	}
	d.DmesgPath = filepath.Join(s.Dir, filepath.FromSlash(d.DmesgPath))
	d.Written = fi.ModTime()
	loc := s.Location
	if loc == nil {
		loc = time.Local
	}
	if at, err := time.ParseInLocation(layout, stamp, loc); err == nil && stamp != "" {
		d.At = at
	} else {
		d.At = d.Written
	}
	evs, last, err := readDmesg(f, fi.Size())
	if err != nil {
		return Dump{}, false, fmt.Errorf("kdump %s: %w", d.DmesgPath, err)
	}
	// A report's wall time, from the dump's: the file only knows kernel
	// time, and its last record is the crash, moments before the capture.
	for i := range evs {
		evs[i].At = d.At.Add(evs[i].KernelTime - last)
	}
	d.Events = evs
	return d, true, nil
}

// untrusted says why fi is not root's alone ("" when it is).
func (s KdumpScanner) untrusted(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !ok:
		return "has no owner to check"
	case int(st.Uid) != s.OwnerUID:
		return fmt.Sprintf("belongs to uid %d, not %d", st.Uid, s.OwnerUID)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Sprintf("is writable by group or others (mode %o)", fi.Mode().Perm())
	}
	return ""
}

func readDir(root *os.Root, name string) ([]fs.DirEntry, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}

// openRegular opens name for reading if it is a regular file: a FIFO
// would block the scan and a device has no end.
func openRegular(root *os.Root, name string) (*os.File, fs.FileInfo, error) {
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s: not a regular file", name)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// readDmesg parses the last MaxDmesgBytes of f and returns the kernel
// time of its last record too.
func readDmesg(f *os.File, size int64) ([]Event, time.Duration, error) {
	var r io.Reader = io.LimitReader(f, MaxDmesgBytes)
	if size > MaxDmesgBytes {
		if _, err := f.Seek(size-MaxDmesgBytes, io.SeekStart); err != nil {
			return nil, 0, err
		}
		br := bufio.NewReaderSize(r, 64<<10)
		if _, err := readLine(br); err != nil {
			return nil, 0, nil // no line end in the tail: nothing to parse
		}
		r = br // the line cut in two is dropped
	}
	return parseDmesg(r, SourceKdump)
}

// ParseDmesg groups the kernel reports in dmesg text ("[ secs.usecs] msg"
// lines, as dmesg and makedumpfile's vmcore-dmesg write them) into events.
// A line without a timestamp continues the record before it (a multi-line
// record); before the first timestamp, it is not kernel log and is skipped.
func ParseDmesg(r io.Reader, source Source) []Event {
	evs, _, _ := parseDmesg(r, source)
	return evs
}

func parseDmesg(r io.Reader, source Source) ([]Event, time.Duration, error) {
	var c Classifier
	// The file is read at once, so reports are grouped on kernel time,
	// not on the time of reading.
	c.Idle = 2 * time.Second
	var evs []Event
	br := bufio.NewReaderSize(r, 64<<10)
	var kt time.Duration
	stamped := false
	// A dmesg file is the kernel's log by construction: facility 0 unless
	// a "<prio>" prefix (dmesg -r) says otherwise; a line without a stamp
	// continues the record before it.
	facility, level := 0, -1
	for {
		line, err := readLine(br)
		if line != "" || err == nil {
			text, t, prio, ok := splitDmesgLine(line)
			switch {
			case ok:
				kt, stamped = t, true
				facility, level = 0, -1
				if prio >= 0 {
					facility, level = prio>>3, prio&7
				}
			case stamped:
				text = line
			default:
				text = ""
			}
			if text != "" {
				evs = append(evs, c.Feed(Record{Facility: facility, Level: level, Time: kt, Text: text, Source: source}, time.Unix(0, 0).Add(kt))...)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return append(evs, c.Flush(time.Unix(0, 0).Add(math.MaxInt64/2))...), kt, err
		}
	}
	return append(evs, c.Flush(time.Unix(0, 0).Add(math.MaxInt64/2))...), kt, nil
}

// readLine returns the next line without its end, cut to maxDmesgLine.
func readLine(br *bufio.Reader) (string, error) {
	var b []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(b) < maxDmesgLine {
			b = append(b, chunk[:min(len(chunk), maxDmesgLine-len(b))]...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return strings.TrimRight(string(b), "\r\n"), err
	}
}

// splitDmesgLine strips "[secs.frac]" and a caller prefix, and returns a
// "<prio>" prefix's value (-1: none).
func splitDmesgLine(line string) (string, time.Duration, int, bool) {
	m := dmesgLineRE.FindStringSubmatch(line)
	if m == nil {
		return "", 0, -1, false
	}
	secs, err := strconv.ParseInt(m[2], 10, 64)
	if err != nil || secs > math.MaxInt64/int64(time.Second)-1 {
		return "", 0, -1, false // not a kernel timestamp
	}
	prio := -1
	if m[1] != "" {
		prio, _ = strconv.Atoi(m[1])
	}
	frac := (m[3] + "000000000")[:9]
	ns, _ := strconv.ParseInt(frac, 10, 64)
	return m[4], time.Duration(secs)*time.Second + time.Duration(ns), prio, true
}

// Source is SourceKdump.
func (s KdumpScanner) Source() Source { return SourceKdump }

// CrashesSince is Since as crash records (Scanner).
func (s KdumpScanner) CrashesSince(t time.Time) ([]Crash, error) {
	dumps, err := s.Since(t)
	var out []Crash
	for _, d := range dumps {
		out = append(out, d.Crash())
	}
	return out, err
}
