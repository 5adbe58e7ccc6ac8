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

// Layout is where a livepatch RPM puts its module; the kernel release is
// the directory's last component, and only the module and its directories
// may be in the payload.
type Layout string

// The layouts livepatch RPMs are shipped in.
const (
	// LayoutKLP is klp-agent's own: /usr/lib/klp-agent/livepatches/<krel>/<file>.ko
	// with Provides: klp-livepatch(<krel>) = <level>.
	LayoutKLP Layout = "klp"
	// LayoutKpatch is Red Hat's kpatch-patch: /usr/lib/kpatch/<krel>/<file>.ko,
	// Requires: kernel-uname-r = <krel>; Version 1, the Release counting
	// the cumulative updates (the level comes from the manifest).
	LayoutKpatch Layout = "kpatch"
	// LayoutKpatchInstalled is kpatch's install directory,
	// /var/lib/kpatch/<krel>/<file>.ko, as kpatch-package-builder and
	// Meta's klp.spec ship it (Name klp-<krel>, Version hotfixN, the file
	// name the same for every hotfix while the module name differs).
	LayoutKpatchInstalled Layout = "kpatch-installed"
	// LayoutSUSE is SUSE's kernel-livepatch packages (SLE 15:
	// /lib/modules/<krel>/livepatch/livepatch-<v>-<r>.ko; SLE 12 kgraft/),
	// also under /usr/lib/modules on merged-/usr systems.
	LayoutSUSE Layout = "suse"
)

// layoutDirs maps each layout's directories (before <krel>, and after it
// for SUSE) to the layout.
var layoutDirs = []struct {
	prefix, suffix string
	layout         Layout
}{
	{"/usr/lib/klp-agent/livepatches/", "", LayoutKLP},
	{"/usr/lib/kpatch/", "", LayoutKpatch},
	{"/var/lib/kpatch/", "", LayoutKpatchInstalled},
	{"/lib/modules/", "/livepatch", LayoutSUSE},
	{"/lib/modules/", "/kgraft", LayoutSUSE},
	{"/usr/lib/modules/", "/livepatch", LayoutSUSE},
	{"/usr/lib/modules/", "/kgraft", LayoutSUSE},
}

// Sentinel errors for RPM inspection and module checks.
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
	// ErrPayload is a package that would install more than its module.
	ErrPayload = errors.New("livepatch RPM payload holds more than its module")
	// ErrFileMode is a payload entry (the module or a directory it sits
	// in) that rpm would install setuid/setgid, group- or world-writable,
	// or owned by someone other than root: whoever else could write it
	// could change what the kernel loads.
	ErrFileMode = errors.New("livepatch RPM payload entry with an unsafe mode or owner")
	// ErrDependency is an Obsoletes or Conflicts naming another package:
	// installing it would remove or refuse packages the agent does not own.
	ErrDependency = errors.New("livepatch RPM obsoletes or conflicts with other packages")
)

var (
	moduleNameRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,55}$`)
	// A module's file name is only a path component: the module's own
	// name comes from its modinfo (Meta ships klp_6.1.0-28.ko).
	moduleFileRE = regexp.MustCompile(`^[A-Za-z0-9_+-][A-Za-z0-9._+~-]{0,123}\.ko$`)
	krelRE       = regexp.MustCompile(`^[A-Za-z0-9._+~-]{1,64}$`)
	// Levels are plain decimals: no sign, no leading zero, no epoch, and
	// short enough to fit an int everywhere.
	levelRE = regexp.MustCompile(`^[1-9][0-9]{0,8}$`)
)

// RPMInfo is what a livepatch RPM's header and bytes say about it.
type RPMInfo struct {
	Name, Version, Release, Arch string
	// Level is the cumulative level klp-agent's own layout declares
	// (Provides: klp-livepatch(<krel>) = <level>); 0 in the other layouts,
	// whose levels the manifest gives.
	Level         int
	KernelRelease string // exact `uname -r` the module is built for
	ModulePath    string // the one .ko, as installed
	// ModuleName is the module's own name (modinfo name=), read from the
	// payload; "" when the payload's compression cannot be read here (the
	// installed file is checked instead). Never the file name: Meta's
	// packages ship klp_<version>.ko whose module is klp_<version>_hotfixN.
	ModuleName         string
	ModInfo            map[string][]string // the module's .modinfo, when read
	Layout             Layout
	Provides, Requires []string // "name op evr", for display
	Scriptlets         []string // %pre, %post, ... and triggers the package carries (rpm runs none of them here by default)
	SHA256             string   // of the whole file
	Size               int64    // of the whole file
	PayloadCompression string   // the header's PayloadCompressor
	// ModuleSHA256 is the sha256 of the module's bytes in the payload
	// (when read): every load checks the file against it.
	ModuleSHA256 string
}

// MaxHeaderBytes bounds the lead and both headers together. Livepatch
// RPMs have a few KiB of header; this only stops hostile files.
const MaxHeaderBytes = 16 << 20

// maxDecodedBytes bounds what cavaliergopher/rpm allocates while decoding
// the headers, estimated per index entry (it widens integers to int64 and
// gives every string its own 16-byte slot).
const maxDecodedBytes = 64 << 20

// entryCost is roughly what the library spends per index entry besides
// its data: a 16-byte copy of the entry, a *Tag and a map slot.
const entryCost = 128

// InspectRPM reads a livepatch RPM without installing it.
func InspectRPM(file string) (*RPMInfo, error) {
	return inspectRPM(file, nil)
}

// PackageName reads the package name from an RPM's header alone, neither
// reading nor hashing the payload: for a caller that wants the name before
// Apply verifies the file (and starts rpm -q of it, StartNameCheck).
// Nothing here is verified; Apply checks the name again.
func PackageName(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("inspect %s: %w", file, err)
	}
	defer f.Close()
	pkg, err := readPackage(bufio.NewReader(f))
	if err != nil {
		return "", fmt.Errorf("inspect %s: %w", file, err)
	}
	return pkg.Name(), nil
}

// inspectRPM is InspectRPM calling onHeader, if set, with the package name
// as soon as the header is parsed (before the payload is read).
func inspectRPM(file string, onHeader func(name string)) (*RPMInfo, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", file, err)
	}
	defer f.Close()
	info, err := inspectRPMReader(f, onHeader)
	if err != nil {
		return info, fmt.Errorf("inspect %s: %w", file, err)
	}
	return info, nil
}

// InspectRPMReader parses the headers from r, then reads r to the end to
// hash and size the whole file. When the header was readable but the
// package breaks a livepatch rule, it returns the partial RPMInfo with the
// error: with ErrNoLevel everything but Level is filled in, so a caller
// that knows the level from elsewhere can go on.
func InspectRPMReader(r io.Reader) (*RPMInfo, error) {
	return inspectRPMReader(r, nil)
}

func inspectRPMReader(r io.Reader, onHeader func(name string)) (*RPMInfo, error) {
	h := sha256.New()
	cr := &countingReader{r: io.TeeReader(r, h)}
	br := bufio.NewReader(cr)
	pkg, err := readPackage(br)
	if err != nil {
		return nil, err
	}
	info, err := describe(pkg)
	if onHeader != nil && (err == nil || errors.Is(err, ErrNoLevel)) {
		onHeader(info.Name)
	}
	if info.ModulePath != "" && (err == nil || errors.Is(err, ErrNoLevel)) {
		// The module, from the payload read in the same pass: its name
		// and modinfo say what the kernel will be asked to load.
		if merr := readPayloadModule(br, info); merr != nil && !errors.Is(merr, ErrUnsupportedPayload) {
			err = errors.Join(err, merr)
		}
	}
	if _, cerr := io.Copy(io.Discard, br); cerr != nil {
		return nil, fmt.Errorf("read payload: %w", cerr)
	}
	info.SHA256, info.Size = hex.EncodeToString(h.Sum(nil)), cr.n
	if err != nil {
		info.Level = 0 // a refused package has no level to offer
	}
	return info, err
}

// readPayloadModule reads the module out of the payload at br into info.
func readPayloadModule(br *bufio.Reader, info *RPMInfo) error {
	var ko bytes.Buffer
	if err := payloadFile(br, info.PayloadCompression, strings.TrimPrefix(info.ModulePath, "/"), &ko); err != nil {
		if errors.Is(err, ErrUnsupportedPayload) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrNotRPM, err)
	}
	mi, err := ModInfo(ko.Bytes())
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNotLivepatch, info.ModulePath, err)
	}
	name, err := moduleName(mi)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(ko.Bytes())
	info.ModInfo, info.ModuleName, info.ModuleSHA256 = mi, name, hex.EncodeToString(sum[:])
	return nil
}

// moduleName is modinfo's name=: exactly one, a valid module name.
func moduleName(mi map[string][]string) (string, error) {
	n := mi["name"]
	if len(n) != 1 || !moduleNameRE.MatchString(n[0]) {
		return "", fmt.Errorf("%w: modinfo name=%q (want exactly one module name)", ErrInvalidName, strings.Join(n, ","))
	}
	return n[0], nil
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

// readPackage parses the lead and both headers, leaving r at the payload.
func readPackage(r *bufio.Reader) (*rpm.Package, error) {
	head, err := headerBytes(r)
	if err != nil {
		return nil, err
	}
	pkg, err := rpm.Read(bytes.NewReader(head))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotRPM, err)
	}
	return pkg, nil
}

// headerBytes reads the lead and both headers into memory and checks every
// index entry before cavaliergopher/rpm sees them. The library trusts the
// file: it allocates count-sized slices before bounds-checking them, can
// slice past the store on an unterminated string, copies every string of
// every entry (so entries aliasing one region multiply memory), and reads
// its 16-byte header intros with a single Read. Handing it a checked,
// in-memory copy keeps all of that bounded.
func headerBytes(r *bufio.Reader) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, r, 96); err != nil {
		return nil, fmt.Errorf("%w: lead: %w", ErrNotRPM, err)
	}
	lead := buf.Bytes()
	if !bytes.Equal(lead[:4], []byte{0xed, 0xab, 0xee, 0xdb}) {
		return nil, fmt.Errorf("%w: bad lead magic", ErrNotRPM)
	}
	if lead[4] != 3 && lead[4] != 4 {
		return nil, fmt.Errorf("%w: RPM format version %d", ErrNotRPM, lead[4])
	}
	if binary.BigEndian.Uint16(lead[6:8]) != 0 {
		return nil, fmt.Errorf("%w: source RPM", ErrNotRPM)
	}
	budget := int64(maxDecodedBytes)
	for i, name := range []string{"signature header", "header"} {
		start := int64(buf.Len())
		if _, err := io.CopyN(&buf, r, 16); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrNotRPM, name, err)
		}
		intro := buf.Bytes()[start:]
		if !bytes.Equal(intro[:4], []byte{0x8e, 0xad, 0xe8, 0x01}) {
			return nil, fmt.Errorf("%w: %s: bad magic", ErrNotRPM, name)
		}
		count := int64(binary.BigEndian.Uint32(intro[8:12]))
		size := int64(binary.BigEndian.Uint32(intro[12:16]))
		if start+16+count*16+size > MaxHeaderBytes {
			return nil, fmt.Errorf("%w: %s: %d entries, %d bytes: over %d bytes", ErrNotRPM, name, count, size, MaxHeaderBytes)
		}
		// CopyN grows the buffer as bytes arrive, so a short file that
		// claims a big header costs only what it holds.
		if _, err := io.CopyN(&buf, r, count*16+size); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrNotRPM, name, err)
		}
		index := buf.Bytes()[start+16 : start+16+count*16]
		store := buf.Bytes()[start+16+count*16:]
		if err := checkIndex(index, store, &budget); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrNotRPM, name, err)
		}
		// Only the signature header is padded to 8 bytes.
		if pad := (8 - size%8) % 8; i == 0 && pad != 0 {
			if _, err := io.CopyN(&buf, r, pad); err != nil {
				return nil, fmt.Errorf("%w: %s padding: %w", ErrNotRPM, name, err)
			}
		}
	}
	return buf.Bytes(), nil
}

var intWidth = [...]int64{rpm.TagTypeInt16: 2, rpm.TagTypeInt32: 4, rpm.TagTypeInt64: 8}

// checkIndex checks that every entry's data lies inside the store and
// charges what decoding it will allocate against budget.
func checkIndex(index, store []byte, budget *int64) error {
	size := int64(len(store))
	for e := 0; e+16 <= len(index); e += 16 {
		ent := index[e : e+16]
		tag := binary.BigEndian.Uint32(ent[0:4])
		typ := rpm.TagType(binary.BigEndian.Uint32(ent[4:8]))
		off := int64(binary.BigEndian.Uint32(ent[8:12]))
		n := int64(binary.BigEndian.Uint32(ent[12:16]))
		if n < 1 || off >= size {
			return fmt.Errorf("tag %d: offset %d, count %d: out of range", tag, off, n)
		}
		cost := int64(entryCost)
		switch typ {
		case rpm.TagTypeNull:
		case rpm.TagTypeChar, rpm.TagTypeInt8, rpm.TagTypeBinary:
			if n > size-off {
				return fmt.Errorf("tag %d: %d bytes at %d: out of range", tag, n, off)
			}
			cost += n
		case rpm.TagTypeInt16, rpm.TagTypeInt32, rpm.TagTypeInt64:
			if n > (size-off)/intWidth[typ] {
				return fmt.Errorf("tag %d: %d integers at %d: out of range", tag, n, off)
			}
			cost += 8 * n
		case rpm.TagTypeString, rpm.TagTypeStringArray, rpm.TagTypeI18NString:
			if n > size-off {
				return fmt.Errorf("tag %d: %d strings at %d: out of range", tag, n, off)
			}
			// Charge the slots first so a huge count is refused before
			// the walk below.
			cost += 16 * n
			if *budget < cost {
				return fmt.Errorf("tag %d: headers decode to over %d bytes", tag, maxDecodedBytes)
			}
			o := off
			for s := int64(0); s < n; s++ {
				j := bytes.IndexByte(store[o:], 0)
				if j < 0 {
					return fmt.Errorf("tag %d: string %d runs off the store", tag, s)
				}
				o += int64(j) + 1
				if s+1 < n && o >= size {
					return fmt.Errorf("tag %d: string %d runs off the store", tag, s+1)
				}
			}
			cost += o - off
		default:
			return fmt.Errorf("tag %d: unknown type %d", tag, typ)
		}
		if *budget -= cost; *budget < 0 {
			return fmt.Errorf("tag %d: headers decode to over %d bytes", tag, maxDecodedBytes)
		}
	}
	return nil
}

// Header tags read directly: the library's Files, Provides and Requires
// index parallel arrays without comparing their lengths and panic on a
// header where they differ.
const (
	tagSourceRPM     = 1044
	tagConflictFlags = 1053
	tagConflictName  = 1054
	tagConflictVer   = 1055
	tagObsoleteName  = 1090
	tagObsoleteFlags = 1114
	tagObsoleteVer   = 1115
	tagProvideName   = 1047
	tagRequireFlags  = 1048
	tagRequireName   = 1049
	tagRequireVer    = 1050
	tagProvideFlags  = 1112
	tagProvideVer    = 1113
	tagDirIndexes    = 1116
	tagBaseNames     = 1117
	tagDirNames      = 1118
	tagFileModes     = 1030
	tagFileFlags     = 1037
	tagFileUserName  = 1039
	tagFileGroupName = 1040
	fileFlagGhost    = 1 << 6
	senseComparisons = rpm.DepFlagLesser | rpm.DepFlagGreater | rpm.DepFlagEqual
)

type dep struct {
	name  string
	flags int64
	evr   string // raw [epoch:]version[-release]
}

func (d dep) String() string {
	if d.evr == "" {
		return d.name
	}
	op := ""
	if d.flags&rpm.DepFlagLesser != 0 {
		op += "<"
	}
	if d.flags&rpm.DepFlagGreater != 0 {
		op += ">"
	}
	if d.flags&rpm.DepFlagEqual != 0 {
		op += "="
	}
	return d.name + " " + op + " " + d.evr
}

// isEqual says whether the dependency is "name = evr" and nothing looser.
func (d dep) isEqual() bool { return d.flags&senseComparisons == rpm.DepFlagEqual && d.evr != "" }

func deps(h *rpm.Header, nameTag, flagsTag, verTag int) ([]dep, error) {
	names := h.GetTag(nameTag).StringSlice()
	flags := h.GetTag(flagsTag).Int64Slice()
	vers := h.GetTag(verTag).StringSlice()
	if len(flags) != len(names) || len(vers) != len(names) {
		return nil, fmt.Errorf("%w: tags %d/%d/%d hold %d names, %d flags, %d versions",
			ErrNotRPM, nameTag, flagsTag, verTag, len(names), len(flags), len(vers))
	}
	out := make([]dep, len(names))
	for i := range names {
		out[i] = dep{names[i], flags[i], vers[i]}
	}
	return out, nil
}

// rpmFile keeps directory and base name apart: joining them for every
// file would let a header with many files in one huge directory name
// allocate without bound.
type rpmFile struct {
	dir, base   string
	mode        int64
	user, group string
	ghost       bool
}

func (f rpmFile) name() string    { return f.dir + f.base }
func (f rpmFile) isDir() bool     { return f.mode&0o170000 == 0o040000 }
func (f rpmFile) isRegular() bool { return f.mode&0o170000 == 0o100000 }

func files(h *rpm.Header) ([]rpmFile, error) {
	base := h.GetTag(tagBaseNames).StringSlice()
	dirs := h.GetTag(tagDirNames).StringSlice()
	idx := h.GetTag(tagDirIndexes).Int64Slice()
	modes := h.GetTag(tagFileModes).Int64Slice()
	flags := h.GetTag(tagFileFlags).Int64Slice()
	users := h.GetTag(tagFileUserName).StringSlice()
	groups := h.GetTag(tagFileGroupName).StringSlice()
	if len(idx) != len(base) || len(modes) != len(base) || (flags != nil && len(flags) != len(base)) ||
		len(users) != len(base) || len(groups) != len(base) {
		return nil, fmt.Errorf("%w: file list holds %d names, %d directory indexes, %d modes, %d flags, %d owners, %d groups",
			ErrNotRPM, len(base), len(idx), len(modes), len(flags), len(users), len(groups))
	}
	out := make([]rpmFile, len(base))
	for i := range base {
		if idx[i] < 0 || idx[i] >= int64(len(dirs)) {
			return nil, fmt.Errorf("%w: file %s: directory index %d of %d", ErrNotRPM, short(base[i]), idx[i], len(dirs))
		}
		out[i] = rpmFile{dir: dirs[idx[i]], base: base[i], mode: modes[i], user: users[i], group: groups[i]}
		if flags != nil {
			out[i].ghost = flags[i]&fileFlagGhost != 0
		}
	}
	return out, nil
}

// short quotes a header string for an error message, cut to a sane length.
func short(s string) string {
	const limit = 160
	if len(s) > limit {
		return strconv.Quote(s[:limit]) + "..."
	}
	return strconv.Quote(s)
}

// ModuleNameOf applies the kernel's KBUILD_MODNAME rule to a .ko path.
func ModuleNameOf(koPath string) string {
	return strings.ReplaceAll(strings.TrimSuffix(path.Base(koPath), ".ko"), "-", "_")
}

func validKernelRelease(s string) bool { return krelRE.MatchString(s) && s != "." && s != ".." }

// splitModulePath matches p against the layouts: exactly
// <dir><krel>[<suffix>]/<file>.ko, with nothing in between and nothing to
// clean.
func splitModulePath(p string) (Layout, string, string, error) {
	for _, l := range layoutDirs {
		rest, ok := strings.CutPrefix(p, l.prefix)
		if !ok {
			continue
		}
		krel, rest, ok := strings.Cut(rest, "/")
		if !ok {
			continue
		}
		file := rest
		if l.suffix != "" {
			if file, ok = strings.CutPrefix("/"+rest, l.suffix+"/"); !ok {
				continue
			}
		}
		if strings.Contains(file, "/") {
			return "", "", "", fmt.Errorf("%w: %s: want %s<kernel-release>%s/<module>.ko", ErrLayout, short(p), l.prefix, l.suffix)
		}
		if !validKernelRelease(krel) {
			return "", "", "", fmt.Errorf("%w: kernel release %s in %s", ErrInvalidName, short(krel), short(p))
		}
		if !moduleFileRE.MatchString(file) {
			return "", "", "", fmt.Errorf("%w: module file name %s in %s", ErrInvalidName, short(file), short(p))
		}
		return l.layout, krel, file, nil
	}
	return "", "", "", fmt.Errorf("%w: %s", ErrLayout, short(p))
}

// ancestors are the directories above p ("/a/b/c.ko": "/a/b", "/a").
func ancestors(p string) map[string]bool {
	out := map[string]bool{}
	for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
		out[d] = true
	}
	return out
}

func describe(pkg *rpm.Package) (*RPMInfo, error) {
	info := &RPMInfo{
		Name: pkg.Name(), Version: pkg.Version(), Release: pkg.Release(), Arch: pkg.Architecture(),
		PayloadCompression: pkg.PayloadCompression(),
	}
	// rpm itself calls a header without SOURCERPM a source package.
	if pkg.Header.GetTag(tagSourceRPM) == nil {
		return info, fmt.Errorf("%w: source RPM (no SOURCERPM tag)", ErrNotRPM)
	}
	provides, err := deps(&pkg.Header, tagProvideName, tagProvideFlags, tagProvideVer)
	if err != nil {
		return info, err
	}
	requires, err := deps(&pkg.Header, tagRequireName, tagRequireFlags, tagRequireVer)
	if err != nil {
		return info, err
	}
	for _, d := range provides {
		info.Provides = append(info.Provides, d.String())
	}
	for _, d := range requires {
		info.Requires = append(info.Requires, d.String())
	}
	fs, err := files(&pkg.Header)
	if err != nil {
		return info, err
	}
	var kos []rpmFile
	var names []string
	for _, f := range fs {
		if strings.HasSuffix(f.base, ".ko") && !f.isDir() {
			kos = append(kos, f)
			if len(names) < 3 {
				names = append(names, short(f.name()))
			}
		}
	}
	if len(kos) != 1 {
		return info, fmt.Errorf("%w: found %d %s", ErrModuleCount, len(kos), strings.Join(names, ", "))
	}
	ko, modulePath := kos[0], kos[0].name()
	layout, krel, _, err := splitModulePath(modulePath)
	if err != nil {
		return info, err
	}
	// A symlink could point the loader at any module on the host; a ghost
	// is not in the payload at all.
	if !ko.isRegular() || ko.ghost {
		return info, fmt.Errorf("%w: %s is not a regular packaged file (mode %o, ghost %t)", ErrLayout, modulePath, ko.mode, ko.ghost)
	}
	info.Layout, info.KernelRelease, info.ModulePath = layout, krel, modulePath
	// The payload is the module and the directories it sits in, nothing
	// else: rpm -U installs whatever a package lists, over anything.
	dirs := ancestors(modulePath)
	for _, f := range fs {
		switch {
		case f.name() == modulePath:
		case f.isDir() && dirs[f.name()] && !f.ghost:
		default:
			return info, fmt.Errorf("%w: %s (only %s and its directories may be packaged)", ErrPayload, short(f.name()), modulePath)
		}
	}
	// What rpm installs is what the kernel will load, at apply and after
	// every boot: only root may be able to change it.
	for _, f := range fs {
		if f.mode&0o6000 != 0 || f.mode&0o022 != 0 || f.user != "root" || f.group != "root" {
			return info, fmt.Errorf("%w: %s: mode %04o, owner %s:%s (want no setuid/setgid, not group/world-writable, root:root)",
				ErrFileMode, short(f.name()), f.mode&0o7777, short(f.user), short(f.group))
		}
	}
	for _, tags := range [][3]int{{tagObsoleteName, tagObsoleteFlags, tagObsoleteVer}, {tagConflictName, tagConflictFlags, tagConflictVer}} {
		ds, err := deps(&pkg.Header, tags[0], tags[1], tags[2])
		if err != nil {
			return info, err
		}
		for _, d := range ds {
			// kpatch-patch conflicts with its own older versions: harmless.
			if d.name != info.Name {
				return info, fmt.Errorf("%w: %s", ErrDependency, short(d.String()))
			}
		}
	}
	for _, sc := range scriptletTags {
		if pkg.Header.GetTag(sc.tag) != nil {
			info.Scriptlets = append(info.Scriptlets, sc.name)
		}
	}
	for _, d := range requires {
		if d.name == "kernel-uname-r" && (!d.isEqual() || d.evr != krel) {
			return info, fmt.Errorf("%w: requires %s, module path says %s", ErrKernelMismatch, short(d.String()), krel)
		}
	}
	if info.Layout != LayoutKLP {
		return info, nil // the level comes from the manifest
	}
	found := false
	for _, d := range provides {
		k, ok := strings.CutPrefix(d.name, "klp-livepatch(")
		if !ok {
			continue
		}
		if k, ok = strings.CutSuffix(k, ")"); !ok || k != krel {
			return info, fmt.Errorf("%w: provides %s, module path says %s", ErrKernelMismatch, short(d.String()), krel)
		}
		if !d.isEqual() || !levelRE.MatchString(d.evr) {
			return info, fmt.Errorf("%w: provides %s: want klp-livepatch(%s) = <positive integer>", ErrNoLevel, short(d.String()), krel)
		}
		if d.evr != info.Version {
			return info, fmt.Errorf("%w: provides level %s, package version %s", ErrLevelMismatch, d.evr, short(info.Version))
		}
		found = true
	}
	if !found {
		return info, fmt.Errorf("%w: no Provides: klp-livepatch(%s) = <level>", ErrNoLevel, krel)
	}
	// levelRE fits an int.
	info.Level, _ = strconv.Atoi(info.Version)
	return info, nil
}

// scriptletTags are the scripts and triggers rpm would run.
var scriptletTags = []struct {
	tag  int
	name string
}{
	{1151, "%pretrans"}, {1023, "%pre"}, {1024, "%post"}, {1025, "%preun"}, {1026, "%postun"}, {1152, "%posttrans"},
	{1065, "triggers"}, {5066, "file triggers"}, {5076, "transaction file triggers"},
}
