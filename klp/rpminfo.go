package klp

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"

	"github.com/cavaliergopher/rpm"
)

// Layout is where a livepatch RPM puts its module.
type Layout string

// The two supported layouts.
const (
	// LayoutKLP is klp-agent's own: /usr/lib/klp-agent/livepatches/<krel>/<module>.ko
	// with Provides: klp-livepatch(<krel>) = <level>.
	LayoutKLP Layout = "klp"
	// LayoutKpatch is Red Hat's kpatch-patch: /usr/lib/kpatch/<krel>/<module>.ko,
	// usually Requires: kernel-uname-r = <krel>; the level is the Version.
	LayoutKpatch Layout = "kpatch"
)

// Sentinel errors for RPM inspection.
var (
	ErrNotRPM             = errors.New("not a binary RPM")
	ErrModuleCount        = errors.New("livepatch RPM must hold exactly one .ko")
	ErrLayout             = errors.New("module outside the supported livepatch layouts")
	ErrKernelMismatch     = errors.New("kernel release mismatch")
	ErrInvalidName        = errors.New("invalid name")
	ErrNoLevel            = errors.New("no cumulative level in the package")
	ErrLevelMismatch      = errors.New("level mismatch")
	ErrNotLivepatch       = errors.New("module is not a livepatch")
	ErrVermagic           = errors.New("module built for another kernel")
	ErrUnsupportedPayload = errors.New("unsupported RPM payload compression")
)

var (
	moduleNameRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,55}$`)
	krelRE       = regexp.MustCompile(`^[A-Za-z0-9._+~-]{1,64}$`)
	provideRE    = regexp.MustCompile(`^klp-livepatch\(([^()]*)\)$`)
)

// RPMInfo is what a livepatch RPM's header and bytes say about it.
type RPMInfo struct {
	Name, Version, Release, Arch string
	Level                        int
	KernelRelease                string
	ModulePath                   string
	ModuleName                   string
	Layout                       Layout
	Provides, Requires           []string
	SHA256                       string
	Size                         int64
	PayloadCompression           string
}

// MaxHeaderBytes bounds the lead and both headers together.
const MaxHeaderBytes = 16 << 20

// InspectRPM reads a livepatch RPM without installing it.
func InspectRPM(file string) (*RPMInfo, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", file, err)
	}
	defer f.Close()
	info, err := InspectRPMReader(f)
	if err != nil {
		return info, fmt.Errorf("inspect %s: %w", file, err)
	}
	return info, nil
}

// InspectRPMReader parses the headers from r, then reads r to the end to
// hash and size the whole file.
func InspectRPMReader(r io.Reader) (*RPMInfo, error) {
	h := sha256.New()
	cr := &countingReader{r: io.TeeReader(r, h)}
	br := bufio.NewReader(cr)
	head, err := headerBytes(br)
	if err != nil {
		return nil, err
	}
	pkg, err := rpm.Read(bytes.NewReader(head))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotRPM, err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return nil, fmt.Errorf("read payload: %w", err)
	}
	info, err := describe(pkg)
	if info != nil {
		info.SHA256, info.Size = hex.EncodeToString(h.Sum(nil)), cr.n
	}
	return info, err
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// headerBytes reads the lead and both headers, checking every index entry
// against the store size first: the rpm library allocates count-sized
// arrays before it bounds-checks them, so a hostile count would otherwise
// exhaust memory.
func headerBytes(r *bufio.Reader) ([]byte, error) {
	var buf bytes.Buffer
	lead := make([]byte, 96)
	if _, err := io.ReadFull(r, lead); err != nil {
		return nil, fmt.Errorf("%w: lead: %w", ErrNotRPM, err)
	}
	if !bytes.Equal(lead[:4], []byte{0xed, 0xab, 0xee, 0xdb}) {
		return nil, fmt.Errorf("%w: bad lead magic", ErrNotRPM)
	}
	if binary.BigEndian.Uint16(lead[6:8]) != 0 {
		return nil, fmt.Errorf("%w: source RPM", ErrNotRPM)
	}
	buf.Write(lead)
	for i, pad := range []bool{true, false} {
		intro := make([]byte, 16)
		if _, err := io.ReadFull(r, intro); err != nil {
			return nil, fmt.Errorf("%w: header %d: %w", ErrNotRPM, i, err)
		}
		if !bytes.Equal(intro[:3], []byte{0x8e, 0xad, 0xe8}) {
			return nil, fmt.Errorf("%w: header %d: bad magic", ErrNotRPM, i)
		}
		count := int64(binary.BigEndian.Uint32(intro[8:12]))
		size := int64(binary.BigEndian.Uint32(intro[12:16]))
		if count*16+size+int64(buf.Len()) > MaxHeaderBytes {
			return nil, fmt.Errorf("%w: header %d: %d entries, %d bytes: over %d bytes", ErrNotRPM, i, count, size, MaxHeaderBytes)
		}
		rest := make([]byte, count*16+size)
		if _, err := io.ReadFull(r, rest); err != nil {
			return nil, fmt.Errorf("%w: header %d: %w", ErrNotRPM, i, err)
		}
		for e := int64(0); e < count; e++ {
			ent := rest[e*16 : e*16+16]
			typ := binary.BigEndian.Uint32(ent[4:8])
			off := int64(binary.BigEndian.Uint32(ent[8:12]))
			n := int64(binary.BigEndian.Uint32(ent[12:16]))
			width := map[uint32]int64{1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 1, 9: 1}[typ]
			if width == 0 && typ != 0 || off > size || n > size || off+n*width > size {
				return nil, fmt.Errorf("%w: header %d entry %d out of range", ErrNotRPM, i, e)
			}
		}
		buf.Write(intro)
		buf.Write(rest)
		if pad && size%8 != 0 {
			p := make([]byte, 8-size%8)
			if _, err := io.ReadFull(r, p); err != nil {
				return nil, fmt.Errorf("%w: header padding: %w", ErrNotRPM, err)
			}
			buf.Write(p)
		}
	}
	return buf.Bytes(), nil
}

func depStrings(ds []rpm.Dependency) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		s := d.Name()
		if v := d.Version(); v != "" {
			op := ""
			if d.Flags()&rpm.DepFlagLesser != 0 {
				op += "<"
			}
			if d.Flags()&rpm.DepFlagGreater != 0 {
				op += ">"
			}
			if d.Flags()&rpm.DepFlagEqual != 0 {
				op += "="
			}
			s += " " + op + " " + v
			if rel := d.Release(); rel != "" {
				s += "-" + rel
			}
		}
		out = append(out, s)
	}
	return out
}

// ModuleNameOf applies the kernel's KBUILD_MODNAME rule to a .ko path.
func ModuleNameOf(koPath string) string {
	return strings.ReplaceAll(strings.TrimSuffix(path.Base(koPath), ".ko"), "-", "_")
}

func validKernelRelease(s string) bool { return krelRE.MatchString(s) && s != "." && s != ".." }

func describe(pkg *rpm.Package) (*RPMInfo, error) {
	info := &RPMInfo{
		Name: pkg.Name(), Version: pkg.Version(), Release: pkg.Release(), Arch: pkg.Architecture(),
		Provides: depStrings(pkg.Provides()), Requires: depStrings(pkg.Requires()),
		PayloadCompression: pkg.PayloadCompression(),
	}
	var kos []string
	for _, f := range pkg.Files() {
		if strings.HasSuffix(f.Name(), ".ko") && !f.IsDir() {
			kos = append(kos, f.Name())
		}
	}
	if len(kos) != 1 {
		return info, fmt.Errorf("%w: found %d (%s)", ErrModuleCount, len(kos), strings.Join(kos, ", "))
	}
	info.ModulePath = kos[0]
	dir, file := path.Split(info.ModulePath)
	krel := path.Base(dir)
	switch path.Dir(path.Clean(dir)) {
	case "/usr/lib/klp-agent/livepatches":
		info.Layout = LayoutKLP
	case "/usr/lib/kpatch":
		info.Layout = LayoutKpatch
	default:
		return info, fmt.Errorf("%w: %s", ErrLayout, info.ModulePath)
	}
	if !validKernelRelease(krel) {
		return info, fmt.Errorf("%w: kernel release %q", ErrInvalidName, krel)
	}
	info.KernelRelease = krel
	info.ModuleName = ModuleNameOf(file)
	if !moduleNameRE.MatchString(info.ModuleName) {
		return info, fmt.Errorf("%w: module name %q", ErrInvalidName, info.ModuleName)
	}
	for _, d := range pkg.Requires() {
		if d.Name() == "kernel-uname-r" && d.Version() != "" {
			if v := d.Version() + suffix("-", d.Release()); v != krel {
				return info, fmt.Errorf("%w: requires kernel-uname-r = %s, module path says %s", ErrKernelMismatch, v, krel)
			}
		}
	}
	version, verr := strconv.Atoi(info.Version)
	switch info.Layout {
	case LayoutKLP:
		found := false
		for _, d := range pkg.Provides() {
			m := provideRE.FindStringSubmatch(d.Name())
			if m == nil {
				continue
			}
			if m[1] != krel {
				return info, fmt.Errorf("%w: provides klp-livepatch(%s), module path says %s", ErrKernelMismatch, m[1], krel)
			}
			lvl, err := strconv.Atoi(d.Version())
			if err != nil || lvl < 1 {
				return info, fmt.Errorf("%w: klp-livepatch(%s) = %q", ErrNoLevel, m[1], d.Version())
			}
			if verr != nil || lvl != version {
				return info, fmt.Errorf("%w: provides level %d, package version %s", ErrLevelMismatch, lvl, info.Version)
			}
			info.Level, found = lvl, true
		}
		if !found {
			return info, fmt.Errorf("%w: no Provides: klp-livepatch(%s)", ErrNoLevel, krel)
		}
	case LayoutKpatch:
		if verr != nil || version < 1 {
			return info, fmt.Errorf("%w: version %q is not a positive integer", ErrNoLevel, info.Version)
		}
		info.Level = version
	}
	return info, nil
}

func suffix(sep, s string) string {
	if s == "" {
		return ""
	}
	return sep + s
}
