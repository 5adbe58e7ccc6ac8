package klp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxDictBytes bounds the dictionary (window) a payload's header may ask
// the decompressor to allocate. xz -9 and zstd's highest regular level use
// 64 MiB; rpm's usual payloads (w2.xzdio, w19.zstdio) use 2 and 8 MiB. Past it, a few
// KiB of payload could reserve GiBs.
const MaxDictBytes = 64 << 20

// ErrPayloadDict is a compressed payload whose header declares a
// dictionary over MaxDictBytes.
var ErrPayloadDict = errors.New("payload dictionary over the limit")

// xzDictGuard passes an xz stream through, parsing its framing on the way
// (stream header, each block header, the LZMA2 chunks, block padding and
// check) so that every block header's LZMA2 dictionary size is checked
// before the decoder reads that header whole: github.com/ulikunitz/xz
// allocates whatever a block header declares (ReaderConfig.DictCap is only
// a minimum). At the index it stops checking: nothing after it allocates.
type xzDictGuard struct {
	r       *bufio.Reader
	pending []byte // bytes checked, not yet handed on
	skip    int64  // chunk data to hand on unparsed
	state   int
	check   int   // size of each block's check field
	block   int64 // bytes of the current block so far, for its padding
	blocks  int   // block headers checked
	err     error
}

const (
	xzStreamHeader = iota
	xzBlockHeader
	xzChunk
	xzBlockEnd
	xzIndex // the index and footer: passed through
)

func newXZDictGuard(r io.Reader) *xzDictGuard {
	return &xzDictGuard{r: bufio.NewReader(r)}
}

func (g *xzDictGuard) Read(p []byte) (int, error) {
	for len(g.pending) == 0 && g.skip == 0 && g.err == nil && g.state != xzIndex {
		if g.err = g.step(); g.err != nil {
			// None of a refused unit is handed on: the decoder
			// never sees that block header whole.
			g.pending = nil
		}
	}
	switch {
	case len(p) == 0:
		return 0, nil
	case len(g.pending) > 0:
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	case g.skip > 0:
		n, err := g.r.Read(p[:min(int64(len(p)), g.skip)])
		g.skip -= int64(n)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	case g.state == xzIndex:
		return g.r.Read(p)
	}
	return 0, g.err
}

// take reads n bytes into pending and returns them.
func (g *xzDictGuard) take(n int) ([]byte, error) {
	start := len(g.pending)
	g.pending = append(g.pending, make([]byte, n)...)
	if _, err := io.ReadFull(g.r, g.pending[start:]); err != nil {
		g.pending = g.pending[:start]
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return g.pending[start:], nil
}

// xzCheckSize is the check field's size by check type (xz file format 2.1.1.2).
var xzCheckSize = [16]int{0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64}

func (g *xzDictGuard) step() error {
	switch g.state {
	case xzStreamHeader:
		b, err := g.take(12)
		if err != nil {
			return fmt.Errorf("xz stream header: %w", err)
		}
		if !bytes.Equal(b[:6], []byte{0xfd, '7', 'z', 'X', 'Z', 0}) || b[6] != 0 {
			return errors.New("xz: not an xz stream")
		}
		g.check, g.state = xzCheckSize[b[7]&0x0f], xzBlockHeader
	case xzBlockHeader:
		b, err := g.take(1)
		if err != nil {
			return fmt.Errorf("xz block header: %w", err)
		}
		if b[0] == 0 {
			g.state = xzIndex
			return nil
		}
		size := (int(b[0]) + 1) * 4
		h, err := g.take(size - 1)
		if err != nil {
			return fmt.Errorf("xz block header: %w", err)
		}
		if err := checkXZBlockHeader(h[:len(h)-4]); err != nil {
			return err
		}
		g.block, g.state = int64(size), xzChunk
		g.blocks++
	case xzChunk:
		b, err := g.take(1)
		if err != nil {
			return fmt.Errorf("xz LZMA2 chunk: %w", err)
		}
		g.block++
		switch c := b[0]; {
		case c == 0:
			g.state = xzBlockEnd
		case c == 1 || c == 2:
			n, err := g.take(2)
			if err != nil {
				return fmt.Errorf("xz LZMA2 chunk: %w", err)
			}
			g.skip = int64(binary.BigEndian.Uint16(n)) + 1
			g.block += 2 + g.skip
		case c >= 0x80:
			hl := 4
			if c >= 0xc0 {
				hl++ // new properties
			}
			n, err := g.take(hl)
			if err != nil {
				return fmt.Errorf("xz LZMA2 chunk: %w", err)
			}
			g.skip = int64(binary.BigEndian.Uint16(n[2:4])) + 1
			g.block += int64(hl) + g.skip
		default:
			return fmt.Errorf("xz: LZMA2 control byte %#x", c)
		}
	case xzBlockEnd:
		if _, err := g.take(int((4-g.block%4)%4) + g.check); err != nil {
			return fmt.Errorf("xz block padding and check: %w", err)
		}
		g.state = xzBlockHeader
	}
	return nil
}

// checkXZBlockHeader reads a block header (without its size byte and CRC)
// and refuses an LZMA2 dictionary over MaxDictBytes. Only LZMA2 blocks are
// decoded here; the decoder refuses other filters.
func checkXZBlockHeader(h []byte) error {
	if len(h) < 1 {
		return errors.New("xz: short block header")
	}
	flags, rest := h[0], h[1:]
	var err error
	for _, present := range []bool{flags&0x40 != 0, flags&0x80 != 0} { // compressed, uncompressed size
		if present {
			if _, rest, err = xzVarint(rest); err != nil {
				return err
			}
		}
	}
	lzma2 := false
	for range int(flags&3) + 1 {
		var id, n uint64
		if id, rest, err = xzVarint(rest); err != nil {
			return err
		}
		if n, rest, err = xzVarint(rest); err != nil {
			return err
		}
		if n > uint64(len(rest)) {
			return errors.New("xz: block header filter properties past its end")
		}
		props := rest[:n]
		rest = rest[n:]
		if id != 0x21 {
			continue
		}
		lzma2 = true
		if len(props) != 1 || props[0] > 40 {
			return fmt.Errorf("xz: LZMA2 properties %x", props)
		}
		if d := xzDictSize(props[0]); d > MaxDictBytes {
			return fmt.Errorf("%w: xz block declares a %d MiB dictionary, over %d MiB", ErrPayloadDict, d>>20, MaxDictBytes>>20)
		}
	}
	if !lzma2 {
		return errors.New("xz: block without an LZMA2 filter")
	}
	return nil
}

// xzDictSize decodes the LZMA2 dictionary-size property byte (0-40).
func xzDictSize(p byte) int64 {
	if p == 40 {
		return 1<<32 - 1
	}
	return int64(2|p&1) << (p/2 + 11)
}

// xzVarint reads an xz multibyte integer (at most 9 bytes).
func xzVarint(b []byte) (uint64, []byte, error) {
	var v uint64
	for i := 0; i < 9 && i < len(b); i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return v, b[i+1:], nil
		}
	}
	return 0, nil, errors.New("xz: bad multibyte integer in a block header")
}
