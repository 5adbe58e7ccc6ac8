package health

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Dump is one complete kdump capture.
type Dump struct {
	Dir       string    `json:"dir"`
	Layout    string    `json:"layout"` // "debian" (kdump-tools) or "rhel" (kexec-tools)
	At        time.Time `json:"at"`     // from the directory name
	Written   time.Time `json:"written"`
	DmesgPath string    `json:"dmesg"`
	Events    []Event   `json:"events,omitempty"`
}

// Cause is the report that most likely brought the kernel down: the first
// crash-class one (the first oops is the one that matters; a "Fatal
// exception" panic follows it), else the worst, else nil.
func (d Dump) Cause() *Event {
	var w *Event
	for i := range d.Events {
		e := &d.Events[i]
		if e.Kind.CrashClass() {
			return e
		}
		if w == nil || severity[e.Kind] > severity[w.Kind] {
			w = e
		}
	}
	return w
}

// Attributed reports whether any report in the dump runs through p.
func (d Dump) Attributed(p Patch) bool {
	for _, e := range d.Events {
		if Attributed(e, p) {
			return true
		}
	}
	return false
}

// Evidence is one line for a block record.
func (d Dump) Evidence() string {
	if w := d.Cause(); w != nil {
		return fmt.Sprintf("kdump %s: %s: %s", d.DmesgPath, w.Kind, w.Header)
	}
	return fmt.Sprintf("kdump %s: no kernel report found in it", d.DmesgPath)
}

// KdumpScanner finds dumps under Dir (e.g. /var/crash) in the layouts of
// Debian's kdump-tools (<YYYYMMDDHHMM>/dmesg.<stamp> + dump.<stamp>) and
// RHEL's kexec-tools (<ip>-<YYYY-MM-DD-HH:MM:SS>/vmcore-dmesg.txt + vmcore).
// A dump still being written (a *-incomplete file) is ignored.
type KdumpScanner struct {
	Dir string
	// Location of the stamps in directory names (the crashed host's local
	// time); nil = time.Local.
	Location *time.Location
}

// MaxDmesgBytes bounds how much of a dump's dmesg is read.
const MaxDmesgBytes = 16 << 20

var (
	debianDirRE = regexp.MustCompile(`^(\d{12})$`)
	rhelDirRE   = regexp.MustCompile(`^(.+)-(\d{4}-\d{2}-\d{2}-\d{2}:\d{2}:\d{2})$`)
	// "[   12.345678] text" or "<4>[   12.345678] text"
	dmesgLineRE = regexp.MustCompile(`^(?:<\d+>)?\[\s*(\d+)\.(\d+)\]\s?(.*)$`)
)

// Since returns the complete dumps written after t, oldest first. A
// missing Dir is no dumps. A dump counts from when it was written (the
// dmesg file's mtime, set by the capture kernel right after the crash), or
// its stamp if later: stamps have minute resolution only.
func (s KdumpScanner) Since(t time.Time) ([]Dump, error) {
	all, err := s.Scan()
	if err != nil {
		return nil, err
	}
	var out []Dump
	for _, d := range all {
		if d.Written.After(t) || d.At.After(t) {
			out = append(out, d)
		}
	}
	return out, nil
}

// Scan returns every complete dump under Dir, oldest first.
func (s KdumpScanner) Scan() ([]Dump, error) {
	loc := s.Location
	if loc == nil {
		loc = time.Local
	}
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("kdump scan %s: %w", s.Dir, err)
	}
	var out []Dump
	for _, e := range ents {
		if !e.IsDir() { // symlinks and files are not dumps
			continue
		}
		dir := filepath.Join(s.Dir, e.Name())
		var d Dump
		if m := debianDirRE.FindStringSubmatch(e.Name()); m != nil {
			at, err := time.ParseInLocation("200601021504", m[1], loc)
			if err != nil {
				continue
			}
			d = Dump{Dir: dir, Layout: "debian", At: at, DmesgPath: filepath.Join(dir, "dmesg."+m[1])}
		} else if m := rhelDirRE.FindStringSubmatch(e.Name()); m != nil {
			at, err := time.ParseInLocation("2006-01-02-15:04:05", m[2], loc)
			if err != nil {
				continue
			}
			d = Dump{Dir: dir, Layout: "rhel", At: at, DmesgPath: filepath.Join(dir, "vmcore-dmesg.txt")}
		} else {
			continue
		}
		if incomplete(dir) {
			continue
		}
		fi, err := os.Lstat(d.DmesgPath)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		d.Written = fi.ModTime()
		evs, err := parseDmesgFile(d.DmesgPath)
		if err != nil {
			return nil, err
		}
		for i := range evs {
			evs[i].At = d.At // kernel time since that boot is all the file knows
		}
		d.Events = evs
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out, nil
}

func incomplete(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return true
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), "-incomplete") {
			return true
		}
	}
	return false
}

func parseDmesgFile(path string) ([]Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kdump dmesg: %w", err)
	}
	defer f.Close()
	return ParseDmesg(io.LimitReader(f, MaxDmesgBytes), "kdump"), nil
}

// ParseDmesg groups the kernel reports in dmesg text ("[ secs.usecs] msg"
// lines, as dmesg and makedumpfile's vmcore-dmesg write them) into events.
// Lines without a timestamp continue the previous record.
func ParseDmesg(r io.Reader, source string) []Event {
	var c Classifier
	// The dump is read at once, so grouping runs on kernel time, not on
	// the time of reading: a report's lines are near each other in it.
	c.Idle = 2 * time.Second
	var evs []Event
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m := dmesgLineRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		secs, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || secs > math.MaxInt64/int64(time.Second)-1 {
			continue // not a kernel timestamp
		}
		frac := m[2] + "000000"
		usec, _ := strconv.ParseInt(frac[:6], 10, 64)
		kt := time.Duration(secs)*time.Second + time.Duration(usec)*time.Microsecond
		evs = append(evs, c.Feed(Record{Time: kt, Text: m[3], Source: source}, time.Unix(0, 0).Add(kt))...)
	}
	evs = append(evs, c.Flush(time.Unix(0, 0).Add(1<<62))...)
	return evs
}
