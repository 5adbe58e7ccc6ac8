package health

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// SourcePstore is a kmsg_dump record in pstore (PstoreScanner).
const SourcePstore Source = "pstore"

func init() { registerSource(SourcePstore, sourceTraits{local: true, record: true}) }

// PstoreScanner reads the kernel's own crash records in pstore
// (/sys/fs/pstore): what kmsg_dump wrote to EFI variables (efi-pstore),
// reserved RAM (ramoops) or another backend when the kernel panicked or
// oopsed, found there after the reboot. Hosts without kdump (most cloud
// VMs) have this record or none.
//
// A dump is written from the end of the log backwards in chunks of the
// backend's record size, each chunk a file whose first line is
// "<Reason>#<n> Part<k>": Part1 is the newest chunk, the one with the
// crash. The scanner puts a dump's parts back in order and parses them
// as a dmesg file. Files the kernel could not decompress (".enc.z") are
// inflated here, bounded. The scanner never deletes a record: that is
// systemd-pstore's job, or the operator's.
//
// When a record was written: pstore dates each file (its mtime) with the
// record's own time, which the backend keeps (ramoops' header, the EFI
// variable's name). A backend that kept none leaves the file dated at
// the mount, in this boot; such a record has no usable time, so it is
// left out and named in the error (Booted). A record is the previous
// boots' evidence once: the boot guard looks only at records written
// after the patch it judges went in, so a record kept across later boots
// (pstore keeps them until they are deleted) is never counted again
// against a patch applied after it (TestPstoreCountedOnce).
type PstoreScanner struct {
	Dir string
	// OwnerUID must own each record (pstore's files are root's, 0444 or
	// 0400): another user's, or a group- or world-writable one, is
	// untrusted, left out and named in the error. Tests set their own.
	OwnerUID int
	// Booted is when this boot began: a record dated at or after it has
	// no time of its own. Zero: not checked.
	Booted time.Time
}

// Bounds: a backend's record is a few KiB (efi-pstore 1 KiB; ramoops'
// record_size, 4 KiB by default); a dump is at most kmsg_bytes, 10 KiB
// by default. These leave room for generous settings and no more.
const (
	maxPstoreFiles     = 256
	maxPstoreFileBytes = 1 << 20
	maxPstoreDumpBytes = 4 << 20
)

var (
	// dmesg-<backend>-<id>[.enc.z]: the kernel's names for kmsg_dump
	// records (fs/pstore/inode.c); console-, ftrace- and pmsg- files are
	// other record types.
	pstoreNameRE = regexp.MustCompile(`^dmesg-([a-z0-9_]+)-(\d{1,20})(\.enc\.z)?$`)
	// The header pstore_dump writes before each chunk; reasons are
	// kmsg_dump_reason_str's.
	pstoreHeadRE = regexp.MustCompile(`^(Panic|Oops|Emergency|Shutdown|Unknown)#(\d{1,10}) Part(\d{1,10})$`)
)

// ErrPstoreUndated is a record pstore dated at the mount: it has no time.
var ErrPstoreUndated = errors.New("pstore record has no time of its own")

// Source is SourcePstore.
func (s PstoreScanner) Source() Source { return SourcePstore }

// pstorePart is one file of a dump.
type pstorePart struct {
	name, backend, reason string
	count, part           int
	at                    time.Time
	body                  []byte // after the header line
	compressed            bool
}

// CrashesSince returns the dumps written after t, oldest first (Scanner).
func (s PstoreScanner) CrashesSince(t time.Time) ([]Crash, error) {
	all, err := s.Scan()
	var out []Crash
	for _, c := range all {
		if c.At.After(t) {
			out = append(out, c)
		}
	}
	return out, err
}

// Scan returns every dump in Dir, oldest first. A missing Dir (pstore not
// mounted) is no dumps. Shutdown dumps (printk.always_kmsg_dump) are not
// crashes and are left out.
func (s PstoreScanner) Scan() ([]Crash, error) {
	root, err := os.OpenRoot(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pstore scan: %w", err)
	}
	defer root.Close()
	ents, err := readDir(root, ".")
	if err != nil {
		return nil, fmt.Errorf("pstore scan %s: %w", s.Dir, err)
	}
	var parts []pstorePart
	var errs []error
	n := 0
	for _, e := range ents {
		m := pstoreNameRE.FindStringSubmatch(e.Name())
		if m == nil || e.Type()&fs.ModeSymlink != 0 {
			continue
		}
		if n++; n > maxPstoreFiles {
			errs = append(errs, fmt.Errorf("pstore %s: more than %d records; the rest are not read", s.Dir, maxPstoreFiles))
			break
		}
		p, err := s.read(root, e.Name(), m[1], m[3] != "")
		if err != nil {
			errs = append(errs, fmt.Errorf("pstore %s: %w", filepath.Join(s.Dir, e.Name()), err))
			continue
		}
		if p.reason != "Shutdown" {
			parts = append(parts, p)
		}
	}
	var out []Crash
	for _, g := range groupParts(parts) {
		c, err := s.crash(g)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Crash) int {
		if c := a.At.Compare(b.At); c != 0 {
			return c
		}
		return strings.Compare(a.Path, b.Path)
	})
	return sameCrashOnce(out), errors.Join(errs...)
}

// sameCrashOnce keeps one record per crash. An oops that becomes a panic
// (panic_on_oops, or a fatal oops) is dumped twice by the kernel, as
// Oops#N and then Panic#N+1, both holding the same report: counted twice
// it would spend the fleet's crash budget twice. Two records hold the same
// crash when their causes are the same report: kind, header and the
// kernel's own timestamp, within an hour of wall time. The later dump is
// kept (it has the panic too), noting the other.
func sameCrashOnce(cs []Crash) []Crash {
	var out []Crash
	for _, c := range cs {
		if n := len(out); n > 0 && sameReport(out[n-1], c) {
			c.Note += "; also " + filepath.Base(out[n-1].Path) + " (" + out[n-1].Note + ")"
			out[n-1] = c
			continue
		}
		out = append(out, c)
	}
	return out
}

func sameReport(a, b Crash) bool {
	ca, cb := a.Cause(), b.Cause()
	if ca == nil || cb == nil || ca.KernelTime == 0 {
		return false
	}
	d := b.At.Sub(a.At)
	return ca.Kind == cb.Kind && ca.Header == cb.Header && ca.KernelTime == cb.KernelTime && d < time.Hour && d > -time.Hour
}

// read opens one record as kdump's dmesg files are opened (a FIFO or a
// device is refused without blocking; not root's alone: untrusted) and
// splits off its header.
func (s PstoreScanner) read(root *os.Root, name, backend string, compressed bool) (pstorePart, error) {
	f, fi, err := openRegular(root, name)
	if err != nil {
		return pstorePart{}, err
	}
	defer f.Close()
	if why := (KdumpScanner{OwnerUID: s.OwnerUID}).untrusted(fi); why != "" {
		return pstorePart{}, fmt.Errorf("%w: the record %s", ErrUntrusted, why)
	}
	if !s.Booted.IsZero() && !fi.ModTime().Before(s.Booted) {
		return pstorePart{}, fmt.Errorf("%w (dated %s, at or after this boot began)", ErrPstoreUndated, fi.ModTime().UTC().Format(time.RFC3339))
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPstoreFileBytes+1))
	if err != nil {
		return pstorePart{}, err
	}
	if len(b) > maxPstoreFileBytes {
		return pstorePart{}, fmt.Errorf("larger than %d bytes", maxPstoreFileBytes)
	}
	if compressed {
		if b, err = inflate(b); err != nil {
			return pstorePart{}, err
		}
	}
	head, body, _ := bytes.Cut(b, []byte("\n"))
	m := pstoreHeadRE.FindStringSubmatch(strings.TrimRight(string(head), "\r"))
	if m == nil {
		return pstorePart{}, errors.New("no kmsg_dump header (\"Panic#1 Part1\")")
	}
	count, _ := strconv.Atoi(m[2])
	part, _ := strconv.Atoi(m[3])
	return pstorePart{name: name, backend: backend, reason: m[1], count: count, part: part, at: fi.ModTime(),
		body: body, compressed: compressed}, nil
}

// inflate undoes pstore's compression when the kernel could not: raw
// deflate (the crypto API's "deflate" and, from 6.6, zlib_deflate with
// -MAX_WBITS), or a zlib stream; bounded.
func inflate(b []byte) ([]byte, error) {
	read := func(r io.Reader) ([]byte, error) {
		out, err := io.ReadAll(io.LimitReader(r, maxPstoreDumpBytes+1))
		if err == nil && len(out) > maxPstoreDumpBytes {
			err = fmt.Errorf("inflates to more than %d bytes", maxPstoreDumpBytes)
		}
		return out, err
	}
	out, err := read(flate.NewReader(bytes.NewReader(b)))
	if err == nil {
		return out, nil
	}
	if zr, zerr := zlib.NewReader(bytes.NewReader(b)); zerr == nil {
		if out, zerr := read(zr); zerr == nil {
			return out, nil
		}
	}
	return nil, fmt.Errorf("compressed record (lzo, lz4, zstd or 842 are not read): %w", err)
}

// pstoreSpread is how far apart in time the parts of one dump can be
// dated: one pstore_dump call writes them all, within moments.
const pstoreSpread = 10 * time.Second

// groupParts puts the files of each dump together: same backend, reason
// and dump count, dated together; a dump count restarts every boot.
func groupParts(parts []pstorePart) [][]pstorePart {
	slices.SortFunc(parts, func(a, b pstorePart) int {
		return cmpFirst(strings.Compare(a.backend, b.backend), strings.Compare(a.reason, b.reason),
			a.count-b.count, a.at.Compare(b.at), a.part-b.part, strings.Compare(a.name, b.name))
	})
	var groups [][]pstorePart
	for i, p := range parts {
		if i > 0 {
			q := parts[i-1]
			g := groups[len(groups)-1]
			if p.backend == q.backend && p.reason == q.reason && p.count == q.count && p.at.Sub(g[0].at) <= pstoreSpread &&
				!slices.ContainsFunc(g, func(x pstorePart) bool { return x.part == p.part }) {
				groups[len(groups)-1] = append(g, p)
				continue
			}
		}
		groups = append(groups, []pstorePart{p})
	}
	return groups
}

func cmpFirst(cs ...int) int {
	for _, c := range cs {
		if c != 0 {
			return c
		}
	}
	return 0
}

// crash parses one dump: its parts oldest first (the highest Part number
// first), as one dmesg text.
func (s PstoreScanner) crash(g []pstorePart) (Crash, error) {
	slices.SortFunc(g, func(a, b pstorePart) int { return b.part - a.part })
	newest := g[len(g)-1]
	var text bytes.Buffer
	at := newest.at
	for _, p := range g {
		if text.Len()+len(p.body) > maxPstoreDumpBytes {
			break
		}
		text.Write(p.body)
		if len(p.body) > 0 && p.body[len(p.body)-1] != '\n' {
			text.WriteByte('\n')
		}
		at = later(at, p.at)
	}
	path := filepath.Join(s.Dir, newest.name)
	evs, last, err := parseDmesg(&text, SourcePstore)
	if err != nil {
		return Crash{}, fmt.Errorf("pstore %s: %w", path, err)
	}
	for i := range evs {
		evs[i].At = at.Add(evs[i].KernelTime - last)
	}
	note := fmt.Sprintf("%s#%d", newest.reason, newest.count)
	if len(g) > 1 {
		note += fmt.Sprintf(", %d parts", len(g))
	}
	if newest.part != 1 {
		note += fmt.Sprintf(", newest part %d missing", newest.part-1)
	}
	return Crash{Source: SourcePstore, Path: path, At: at, Note: note, Events: evs}, nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// BootTime is when this boot began, by the wall clock (CLOCK_BOOTTIME
// counts suspend too); zero when the clock cannot be read.
func BootTime(now time.Time) time.Time {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return time.Time{}
	}
	return now.Add(-time.Duration(ts.Nano()))
}
