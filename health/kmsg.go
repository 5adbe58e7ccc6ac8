package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/klp-agent/klp-agent/internal/kmsg"
)

// Record is one kernel log record, from /dev/kmsg, netconsole or a dmesg
// file.
type Record struct {
	// Facility is 0 for the kernel's own records; /dev/kmsg gives every
	// write from user space another (the kernel never lets one pass as 0).
	// -1: the source does not say.
	Facility int
	// Level is the printk level, 0 (emerg) to 7 (debug); -1: the source
	// does not say (plain netconsole, a dmesg file without prefixes).
	Level  int
	Seq    uint64
	Time   time.Duration // since boot
	Text   string
	Dict   map[string]string
	Source Source
	// Sender is the host:port a netconsole record came from; "" for the
	// local kernel. Reports are grouped per sender.
	Sender string
}

// ErrRecord marks a malformed record.
var ErrRecord = errors.New("malformed kmsg record")

// ParseKmsg parses one /dev/kmsg record:
// "prio,seq,usec,flag[,more];message\n" then " KEY=value" dictionary lines.
// The kernel escapes unprintable bytes as \xNN; they are unescaped.
func ParseKmsg(b []byte) (Record, error) {
	s := strings.TrimRight(string(b), "\n")
	head, rest, ok := strings.Cut(s, ";")
	if !ok {
		return Record{}, fmt.Errorf("%w: no ';'", ErrRecord)
	}
	f := strings.Split(head, ",")
	if len(f) < 4 {
		return Record{}, fmt.Errorf("%w: header %q", ErrRecord, head)
	}
	prio, err1 := strconv.Atoi(f[0])
	seq, err2 := strconv.ParseUint(f[1], 10, 64)
	usec, err3 := strconv.ParseInt(f[2], 10, 64)
	// usec beyond what a Duration holds (292 years) is not a timestamp.
	if err1 != nil || err2 != nil || err3 != nil || prio < 0 || usec < 0 || usec > math.MaxInt64/int64(time.Microsecond) {
		return Record{}, fmt.Errorf("%w: header %q", ErrRecord, head)
	}
	lines := strings.Split(rest, "\n")
	r := Record{Facility: prio >> 3, Level: prio & 7, Seq: seq, Time: time.Duration(usec) * time.Microsecond, Text: kmsg.Unescape(lines[0]), Source: SourceKmsg}
	for _, l := range lines[1:] {
		if k, v, ok := strings.Cut(strings.TrimPrefix(l, " "), "="); ok && strings.HasPrefix(l, " ") {
			if r.Dict == nil {
				r.Dict = map[string]string{}
			}
			r.Dict[k] = kmsg.Unescape(v)
		}
	}
	return r, nil
}

// KmsgReader follows /dev/kmsg: one record per read(2), blocking, no polling.
type KmsgReader struct {
	f       *os.File
	buf     []byte
	Dropped int // records the kernel overwrote before we read them (EPIPE)
}

// OpenKmsg opens path (normally /dev/kmsg) positioned after the records
// already there: only what happens from now on counts.
func OpenKmsg(path string) (*KmsgReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, fmt.Errorf("seek %s: %w", path, err)
	}
	return &KmsgReader{f: f, buf: make([]byte, 8192)}, nil
}

// Next blocks for the next record. EPIPE (records overwritten) is counted
// and reading resumes at the next available record.
func (k *KmsgReader) Next() (Record, error) {
	for {
		n, err := k.f.Read(k.buf)
		if errors.Is(err, syscall.EPIPE) {
			k.Dropped++
			continue
		}
		if err != nil {
			return Record{}, err
		}
		r, perr := ParseKmsg(k.buf[:n])
		if perr != nil {
			continue // skip what cannot be parsed; the stream goes on
		}
		return r, nil
	}
}

// Close unblocks a pending Next.
func (k *KmsgReader) Close() error { return k.f.Close() }

// Follow sends records to out until ctx ends or the source fails.
func (k *KmsgReader) Follow(ctx context.Context, out chan<- Record) error {
	go func() { <-ctx.Done(); k.Close() }()
	for {
		r, err := k.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		select {
		case out <- r:
		case <-ctx.Done():
			return nil
		}
	}
}
