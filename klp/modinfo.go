package klp

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cavaliergopher/rpm"
)

// MaxModuleBytes bounds a module read from a payload.
const MaxModuleBytes = 64 << 20

// ExtractModule copies the one .ko out of a livepatch RPM's payload
// without installing it, so the module can be checked before rpm runs.
// Only gzip payloads are read (stdlib only); xz and zstd ones give
// ErrUnsupportedPayload and are checked after install instead.
func ExtractModule(file string, w io.Writer) error {
	info, err := InspectRPM(file)
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("extract %s: %w", file, err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	head, err := headerBytes(br)
	if err != nil {
		return fmt.Errorf("extract %s: %w", file, err)
	}
	pkg, err := rpm.Read(bytes.NewReader(head))
	if err != nil {
		return fmt.Errorf("extract %s: %w: %w", file, ErrNotRPM, err)
	}
	if c := pkg.PayloadCompression(); c != "gzip" {
		return fmt.Errorf("extract %s: %w: %q", file, ErrUnsupportedPayload, c)
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return fmt.Errorf("extract %s: payload: %w", file, err)
	}
	if err := cpioExtract(zr, strings.TrimPrefix(info.ModulePath, "/"), w); err != nil {
		return fmt.Errorf("extract %s: %w", file, err)
	}
	return nil
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
// another kernel release, or one whose name is not the expected one.
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
	if n := info["name"]; len(n) == 1 && name != "" && n[0] != name {
		return fmt.Errorf("%w: module calls itself %q, expected %q", ErrInvalidName, n[0], name)
	}
	return nil
}
