package klp

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// MaxModuleBytes bounds a module read from a payload.
const MaxModuleBytes = 64 << 20

// ExtractModule copies the one .ko out of a livepatch RPM's payload
// without installing it, so the module can be checked before rpm runs.
// gzip, bzip2, xz, lzma and zstd payloads are read; another compressor
// gives ErrUnsupportedPayload (the installed file is checked instead).
func ExtractModule(file string, w io.Writer) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("extract %s: %w", file, err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	pkg, err := readPackage(br)
	if err != nil {
		return fmt.Errorf("extract %s: %w", file, err)
	}
	info, err := describe(pkg)
	if info.ModulePath == "" {
		return fmt.Errorf("extract %s: %w", file, err)
	}
	if err := payloadFile(br, info.PayloadCompression, strings.TrimPrefix(info.ModulePath, "/"), w); err != nil {
		return fmt.Errorf("extract %s: %w", file, err)
	}
	return nil
}

// MaxPayloadBytes bounds what is decompressed while looking for the module:
// a livepatch RPM's payload is one module.
const MaxPayloadBytes = 256 << 20

// payloadFile copies the file want from the cpio payload at r, compressed
// with compressor, to w.
func payloadFile(r io.Reader, compressor string, want string, w io.Writer) error {
	var zr io.Reader
	switch compressor {
	case "gzip", "":
		g, err := gzip.NewReader(r)
		if err != nil {
			return fmt.Errorf("payload: %w", err)
		}
		defer g.Close()
		zr = g
	case "bzip2":
		zr = bzip2.NewReader(r)
	case "xz":
		x, err := xz.ReaderConfig{SingleStream: true}.NewReader(newXZDictGuard(r))
		if err != nil {
			return fmt.Errorf("payload: %w", err)
		}
		zr = x
	case "lzma":
		// The .lzma header's dictionary size, capped before the decoder
		// allocates it.
		l, err := lzma.ReaderConfig{DictCap: MaxDictBytes}.NewReader(r)
		var big *lzma.ErrDictSize
		if errors.As(err, &big) {
			return fmt.Errorf("payload: %w: lzma header declares a %d MiB dictionary, over %d MiB", ErrPayloadDict, big.HeaderDictSize>>20, MaxDictBytes>>20)
		}
		if err != nil {
			return fmt.Errorf("payload: %w", err)
		}
		zr = l
	case "zstd":
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxPayloadBytes), zstd.WithDecoderMaxWindow(MaxDictBytes))
		if err != nil {
			return fmt.Errorf("payload: %w", err)
		}
		defer d.Close()
		zr = d
	default:
		return fmt.Errorf("%w: %q", ErrUnsupportedPayload, compressor)
	}
	return cpioExtract(io.LimitReader(zr, MaxPayloadBytes), want, w)
}

// cpioExtract finds one file in a "newc" cpio stream (what rpm writes).
func cpioExtract(r io.Reader, want string, w io.Writer) error {
	hdr := make([]byte, 110)
	var read int64
	pad := func(n int64) error {
		if p := (4 - n%4) % 4; p > 0 {
			if _, err := io.CopyN(io.Discard, r, p); err != nil {
				return err
			}
			read += p
		}
		return nil
	}
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return fmt.Errorf("cpio header: %w", err)
		}
		read += 110
		if m := string(hdr[:6]); m != "070701" && m != "070702" {
			return fmt.Errorf("cpio: bad magic %q", m)
		}
		field := func(i int) (int64, error) {
			return strconv.ParseInt(string(hdr[6+8*i:14+8*i]), 16, 64)
		}
		size, err1 := field(6)
		nameLen, err2 := field(11)
		if err1 != nil || err2 != nil || nameLen < 1 || nameLen > 4096 || size < 0 {
			return errors.New("cpio: bad header")
		}
		name := make([]byte, nameLen)
		if _, err := io.ReadFull(r, name); err != nil {
			return fmt.Errorf("cpio name: %w", err)
		}
		read += nameLen
		if err := pad(read); err != nil {
			return err
		}
		n := strings.TrimPrefix(strings.TrimSuffix(string(name), "\x00"), "./")
		if n == "TRAILER!!!" {
			return fmt.Errorf("cpio: %s not in payload", want)
		}
		if n == want {
			if size > MaxModuleBytes {
				return fmt.Errorf("cpio: %s is %d bytes (limit %d)", want, size, MaxModuleBytes)
			}
			if b, ok := w.(*bytes.Buffer); ok {
				// Once, at the size the entry says (bounded above),
				// not by doubling as the bytes come; ReadFrom wants
				// MinRead spare at the end.
				b.Grow(int(size) + bytes.MinRead)
			}
			_, err := io.CopyN(w, r, size)
			return err
		}
		if _, err := io.CopyN(io.Discard, r, size); err != nil {
			return fmt.Errorf("cpio data: %w", err)
		}
		read += size
		if err := pad(read); err != nil {
			return err
		}
	}
}

// ModInfo reads the key=value strings of a module's .modinfo section,
// what modinfo(8) prints.
func ModInfo(ko []byte) (map[string][]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("modinfo: not an ELF module: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("modinfo: no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("modinfo: %w", err)
	}
	out := map[string][]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if ok && k != "" {
			out[k] = append(out[k], v)
		}
	}
	return out, nil
}

// CheckModule refuses what the kernel should never be asked to load as a
// livepatch here: a module without livepatch=Y, one whose vermagic names
// another kernel release, or one whose name (exactly one name=) is not the
// expected one ("" accepts any valid name).
func CheckModule(info map[string][]string, kernelRelease, name string) error {
	if lp := info["livepatch"]; len(lp) != 1 || lp[0] != "Y" {
		return fmt.Errorf("%w: modinfo livepatch=%q", ErrNotLivepatch, strings.Join(lp, ","))
	}
	vm := info["vermagic"]
	if len(vm) != 1 {
		return fmt.Errorf("%w: no vermagic", ErrVermagic)
	}
	if f := strings.Fields(vm[0]); len(f) == 0 || f[0] != kernelRelease {
		return fmt.Errorf("%w: vermagic %q, running %s", ErrVermagic, vm[0], kernelRelease)
	}
	n, err := moduleName(info)
	if err != nil {
		return err
	}
	if name != "" && n != name {
		return fmt.Errorf("%w: module calls itself %q, expected %q", ErrInvalidName, n, name)
	}
	return nil
}
