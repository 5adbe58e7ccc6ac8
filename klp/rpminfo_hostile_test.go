package klp_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/klp-agent/klp-agent/klp"
)

// Hand-made headers for what rpmbuild never writes: counts, offsets and
// array lengths that cavaliergopher/rpm trusts.

const (
	typeInt16       = 3
	typeInt32       = 4
	typeString      = 6
	typeStringArray = 8
)

// rawTag is one header index entry and its data.
type rawTag struct {
	tag, typ uint32
	data     []byte
	count    uint32
	aliasOf  uint32 // share the data of the entry with this tag instead
}

func rStr(tag uint32, s string) rawTag {
	return rawTag{tag: tag, typ: typeString, data: []byte(s + "\x00"), count: 1}
}

func rStrs(tag uint32, ss ...string) rawTag {
	return rawTag{tag: tag, typ: typeStringArray, data: []byte(strings.Join(ss, "\x00") + "\x00"), count: uint32(len(ss))}
}

func rInt32(tag uint32, vs ...uint32) rawTag {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.BigEndian.PutUint32(b[4*i:], v)
	}
	return rawTag{tag: tag, typ: typeInt32, data: b, count: uint32(len(vs))}
}

func rawHeader(tags []rawTag) []byte {
	var index, store []byte
	offsets := map[uint32]uint32{}
	for _, t := range tags {
		off, ok := offsets[t.aliasOf]
		if t.aliasOf == 0 || !ok {
			off = uint32(len(store))
			store = append(store, t.data...)
			offsets[t.tag] = off
		}
		index = binary.BigEndian.AppendUint32(index, t.tag)
		index = binary.BigEndian.AppendUint32(index, t.typ)
		index = binary.BigEndian.AppendUint32(index, off)
		index = binary.BigEndian.AppendUint32(index, t.count)
	}
	h := []byte{0x8e, 0xad, 0xe8, 0x01, 0, 0, 0, 0}
	h = binary.BigEndian.AppendUint32(h, uint32(len(tags)))
	h = binary.BigEndian.AppendUint32(h, uint32(len(store)))
	return append(append(h, index...), store...)
}

// rawRPM is a lead, an empty signature header, the header and a stand-in
// payload.
func rawRPM(tags []rawTag) []byte {
	lead := make([]byte, 96)
	copy(lead, []byte{0xed, 0xab, 0xee, 0xdb, 3, 0})
	copy(lead[10:], "klp-raw")
	binary.BigEndian.PutUint16(lead[78:], 5)
	b := append(lead, rawHeader(nil)...)
	b = append(b, rawHeader(tags)...)
	return append(b, "payload"...)
}

// rawKLP is a well-formed package in our layout with the module at
// dir+base; the cases below each break one thing.
func rawKLP(dir, base string) []rawTag {
	return []rawTag{
		rStr(1000, "klp-raw"), rStr(1001, "1"), rStr(1002, "1"), rStr(1022, "noarch"),
		rStr(1044, "klp-raw-1-1.src.rpm"), rStr(1125, "gzip"),
		rInt32(1030, 0o100644), rInt32(1037, 0), rStrs(1039, "root"), rStrs(1040, "root"),
		rInt32(1116, 0), rStrs(1117, base), rStrs(1118, dir),
		rStrs(1047, "klp-livepatch("+krel+")"), rInt32(1112, 8), rStrs(1113, "1"),
	}
}

// set replaces (or adds) tags by tag number.
func set(tags []rawTag, with ...rawTag) []rawTag {
	out := append([]rawTag(nil), tags...)
	for _, w := range with {
		found := false
		for i := range out {
			if out[i].tag == w.tag {
				out[i], found = w, true
			}
		}
		if !found {
			out = append(out, w)
		}
	}
	return out
}

func drop(tags []rawTag, tag uint32) []rawTag {
	var out []rawTag
	for _, t := range tags {
		if t.tag != tag {
			out = append(out, t)
		}
	}
	return out
}

// last replaces a tag and puts its data at the end of the store, where
// reading past it leaves the store.
func last(tags []rawTag, t rawTag) []rawTag { return append(drop(tags, t.tag), t) }

// aliasBomb is many string-array entries over one shared region: tiny on
// disk, but the library would copy the region once per entry.
func aliasBomb() []rawTag {
	strs := make([]string, 32768)
	for i := range strs {
		strs[i] = "a"
	}
	tags := append(rawKLP(klpDir+krel+"/", "m.ko"), rStrs(5000, strs...))
	for i := uint32(1); i <= 300; i++ {
		tags = append(tags, rawTag{tag: 5000 + i, typ: typeStringArray, count: uint32(len(strs)), aliasOf: 5000})
	}
	return tags
}

var hostileHeaders = []struct {
	name string
	rpm  []byte
	want error
}{
	{"int32 count of 2^31", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rawTag{tag: 1030, typ: typeInt32, data: []byte{0, 0, 0x81, 0xa4}, count: 1 << 31})), klp.ErrNotRPM},
	{"int16 count past the store", rawRPM(last(rawKLP(klpDir+krel+"/", "m.ko"), rawTag{tag: 1030, typ: typeInt16, data: []byte{0x81, 0xa4}, count: 3})), klp.ErrNotRPM},
	{"string array count of 2^24", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rawTag{tag: 1117, typ: typeStringArray, data: []byte("m.ko\x00"), count: 1 << 24})), klp.ErrNotRPM},
	// The library slices past its buffer on this one.
	{"unterminated string at the end of the store", rawRPM(last(rawKLP(klpDir+krel+"/", "m.ko"), rawTag{tag: 1118, typ: typeStringArray, data: []byte("x\x00ab"), count: 3})), klp.ErrNotRPM},
	{"unknown tag type", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rawTag{tag: 1002, typ: 10, data: []byte("1\x00"), count: 1})), klp.ErrNotRPM},
	{"count zero", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rawTag{tag: 1002, typ: typeString, data: []byte("1\x00"), count: 0})), klp.ErrNotRPM},
	{"aliased strings over the decode budget", rawRPM(aliasBomb()), klp.ErrNotRPM},
	{"store of 4 GiB claimed", func() []byte {
		b := rawRPM(rawKLP(klpDir+krel+"/", "m.ko"))
		binary.BigEndian.PutUint32(b[96+16+12:], 0xffffffff)
		return b
	}(), klp.ErrNotRPM},
	// The library indexes these parallel arrays without comparing lengths.
	{"provide versions missing", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rStrs(1047, "klp-livepatch("+krel+")", "x"))), klp.ErrNotRPM},
	{"file modes missing", rawRPM(drop(rawKLP(klpDir+krel+"/", "m.ko"), 1030)), klp.ErrNotRPM},
	{"directory index out of range", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rInt32(1116, 1))), klp.ErrNotRPM},
	{"file owners missing", rawRPM(drop(rawKLP(klpDir+krel+"/", "m.ko"), 1039)), klp.ErrNotRPM},
	{"file groups missing", rawRPM(drop(rawKLP(klpDir+krel+"/", "m.ko"), 1040)), klp.ErrNotRPM},
	{"more owners than files", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rStrs(1039, "root", "root"))), klp.ErrNotRPM},
	{"setuid module", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rInt32(1030, 0o104644))), klp.ErrFileMode},
	{"world-writable module", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rInt32(1030, 0o100666))), klp.ErrFileMode},
	{"module owned by a user", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rStrs(1039, "nobody"))), klp.ErrFileMode},
	{"no SOURCERPM: a source package to rpm", rawRPM(drop(rawKLP(klpDir+krel+"/", "m.ko"), 1044)), klp.ErrNotRPM},
	// Paths rpmbuild would have normalised.
	{"kernel release ..", rawRPM(rawKLP(kpDir+"../", "m.ko")), klp.ErrInvalidName},
	{"kernel release .", rawRPM(rawKLP(klpDir+"./", "m.ko")), klp.ErrInvalidName},
	{"empty kernel release", rawRPM(rawKLP(klpDir+"/", "m.ko")), klp.ErrInvalidName},
	{"slash in base name", rawRPM(rawKLP(klpDir, krel+"/../m.ko")), klp.ErrLayout},
	{"module named .ko", rawRPM(rawKLP(klpDir+krel+"/", ".ko")), klp.ErrInvalidName},
	{"ghost module", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rInt32(1037, 1<<6))), klp.ErrLayout},
	{"device node module", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rInt32(1030, 0o020644))), klp.ErrLayout},
	{"signed level", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rStr(1001, "+1"), rStrs(1113, "+1"))), klp.ErrNoLevel},
	{"level with leading zero", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rStr(1001, "01"), rStrs(1113, "01"))), klp.ErrNoLevel},
	{"level past int32", rawRPM(set(rawKLP(klpDir+krel+"/", "m.ko"), rStr(1001, "99999999999"), rStrs(1113, "99999999999"))), klp.ErrNoLevel},
}

func TestInspectRPMHostileHeaders(t *testing.T) {
	// The builder makes headers a livepatch's, but no payload: the
	// header is read whole and the missing payload is refused.
	info, err := klp.InspectRPMReader(bytes.NewReader(rawRPM(rawKLP(klpDir+krel+"/", "m.ko"))))
	if !errors.Is(err, klp.ErrNotRPM) || !strings.Contains(err.Error(), "payload") || info == nil || info.ModulePath != klpDir+krel+"/m.ko" {
		t.Fatalf("well-formed raw headers without a payload: %+v, %v", info, err)
	}
	for _, tt := range hostileHeaders {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := klp.InspectRPMReader(bytes.NewReader(tt.rpm))
			runtime.ReadMemStats(&after)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			// Refused from the index, before anything count-sized exists.
			if n := after.TotalAlloc - before.TotalAlloc; n > 8<<20 {
				t.Errorf("allocated %d bytes to refuse a %d-byte file", n, len(tt.rpm))
			}
		})
	}
}

var (
	validModuleName = regexp.MustCompile(`^[A-Za-z0-9_]{1,55}$`)
	validKrel       = regexp.MustCompile(`^[A-Za-z0-9._+~-]{1,64}$`)
	sentinels       = []error{klp.ErrNotRPM, klp.ErrModuleCount, klp.ErrLayout, klp.ErrKernelMismatch,
		klp.ErrInvalidName, klp.ErrNoLevel, klp.ErrLevelMismatch, klp.ErrNotLivepatch, klp.ErrVermagic,
		klp.ErrUnsupportedPayload, klp.ErrPayload, klp.ErrDependency, klp.ErrFileMode, klp.ErrPayloadDict}
)

// compactSeed swaps a built RPM's signature header for an empty one and
// cuts the payload to a few bytes: neither is parsed, and rpmbuild's
// signature header carries 4 KiB of space reserved for rpmsign. The fuzzer
// minimises every new input it finds (-fuzzminimizetime, 60 s by default,
// counted in -fuzztime), in time quadratic in the input's length; with
// 7 KiB seeds a 30 s run does little else.
func compactSeed(f *testing.F, b []byte) []byte {
	sigLen := 16 + 16*int(binary.BigEndian.Uint32(b[96+8:])) + int(binary.BigEndian.Uint32(b[96+12:]))
	sigLen += (8 - sigLen%8) % 8
	hdr := b[96+sigLen:]
	// The payload stays: inspection reads the module out of it.
	seed := append(append(append([]byte{}, b[:96]...), rawHeader(nil)...), hdr...)
	if _, err := klp.InspectRPMReader(bytes.NewReader(seed)); err != nil && errors.Is(err, klp.ErrNotRPM) != errors.Is(mustInspect(b), klp.ErrNotRPM) {
		f.Fatalf("compacted seed parses differently: %v", err)
	}
	return seed
}

func mustInspect(b []byte) error {
	_, err := klp.InspectRPMReader(bytes.NewReader(b))
	return err
}

func FuzzInspectRPMReader(f *testing.F) {
	rpms := fixtureRPMs(f, "klp", "kpatch", "xz", "lzma", "source", "level-mismatch", "symlink", "requires-other-kernel")
	for _, p := range rpms {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(compactSeed(f, b))
	}
	f.Add(rawRPM(rawKLP(klpDir+krel+"/", "m.ko")))
	for _, h := range hostileHeaders {
		if len(h.rpm) < 64<<10 {
			f.Add(h.rpm)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := klp.InspectRPMReader(bytes.NewReader(b))
		if err != nil {
			// A bytes.Reader never fails, so every refusal is a verdict.
			for _, s := range sentinels {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error without a sentinel: %v", err)
		}
		sum := sha256.Sum256(b)
		dir := map[klp.Layout]string{klp.LayoutKLP: klpDir, klp.LayoutKpatch: kpDir, klp.LayoutKpatchInstalled: "/var/lib/kpatch/"}[info.Layout]
		if info.Layout == klp.LayoutSUSE {
			dir = info.ModulePath[:strings.Index(info.ModulePath, "/modules/")+len("/modules/")]
		}
		if (info.Layout == klp.LayoutKLP) != (info.Level >= 1) || (info.ModuleName != "" && !validModuleName.MatchString(info.ModuleName)) ||
			!validKrel.MatchString(info.KernelRelease) || info.KernelRelease == "." || info.KernelRelease == ".." || dir == "" ||
			!strings.HasPrefix(info.ModulePath, dir+info.KernelRelease+"/") ||
			info.Size != int64(len(b)) || info.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("accepted an inconsistent package: %+v", info)
		}
	})
}

// A file list without an owner and group for every file is refused for
// that reason (rpm would install it as root whatever the builder meant),
// not only because the stand-in payload does not read.
func TestInspectRPMFileOwnersRequired(t *testing.T) {
	for _, tag := range []uint32{1039, 1040} {
		_, err := klp.InspectRPMReader(bytes.NewReader(rawRPM(drop(rawKLP(klpDir+krel+"/", "m.ko"), tag))))
		if !errors.Is(err, klp.ErrNotRPM) || !strings.Contains(err.Error(), "0 owners") && !strings.Contains(err.Error(), "0 groups") {
			t.Errorf("without tag %d: %v, want the file list's owners or groups named", tag, err)
		}
	}
}

// payloadAt is where a built RPM's payload starts: after the lead, the
// signature header (padded to 8 bytes) and the header.
func payloadAt(t *testing.T, b []byte) int {
	t.Helper()
	off := 96
	for i := range 2 {
		if len(b) < off+16 {
			t.Fatal("short RPM")
		}
		off += 16 + 16*int(binary.BigEndian.Uint32(b[off+8:])) + int(binary.BigEndian.Uint32(b[off+12:]))
		if i == 0 {
			off += (8 - off%8) % 8
		}
	}
	return off
}

// A few KiB of xz or lzma payload whose header declares a 1.5 GiB
// dictionary is refused before the decoder allocates it. The old code
// handed the header to github.com/ulikunitz/xz, which allocated the whole
// dictionary (over 1.5 GiB) and then decoded the payload fine.
func TestInspectRPMPayloadDictionaryCap(t *testing.T) {
	f := fixtureRPMs(t, "xz", "lzma")
	const huge = 3 << 29 // 1.5 GiB
	for _, tt := range []struct {
		fixture string
		edit    func(t *testing.T, payload []byte)
	}{
		{"xz", func(t *testing.T, p []byte) {
			// Stream header (12 bytes), then the first block header:
			// size byte, flags (liblzma writes no sizes), filter ID 0x21
			// (LZMA2), properties size 1, the dictionary byte, padding
			// and CRC32.
			h := p[12 : 12+(int(p[12])+1)*4]
			if h[1] != 0 || h[2] != 0x21 || h[3] != 1 {
				t.Fatalf("unexpected block header % x", h)
			}
			h[4] = 37 // (2|1) << (37/2 + 11) = 1.5 GiB
			binary.LittleEndian.PutUint32(h[len(h)-4:], crc32.ChecksumIEEE(h[:len(h)-4]))
		}},
		{"lzma", func(t *testing.T, p []byte) {
			// .lzma header: properties, dictionary size (LE), size.
			binary.LittleEndian.PutUint32(p[1:5], huge)
		}},
	} {
		t.Run(tt.fixture, func(t *testing.T) {
			b, err := os.ReadFile(f[tt.fixture])
			if err != nil {
				t.Fatal(err)
			}
			tt.edit(t, b[payloadAt(t, b):])
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err = klp.InspectRPMReader(bytes.NewReader(b))
			runtime.ReadMemStats(&after)
			if !errors.Is(err, klp.ErrPayloadDict) || !strings.Contains(err.Error(), "1536 MiB dictionary, over 64 MiB") {
				t.Fatalf("a %d-byte RPM declaring a 1.5 GiB dictionary: %v, want ErrPayloadDict", len(b), err)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 32<<20 {
				t.Errorf("allocated %d MiB to refuse a %d-byte RPM", n>>20, len(b))
			}
		})
	}
}
