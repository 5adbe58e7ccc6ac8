package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNetconsole marks a datagram that is not netconsole output.
var ErrNetconsole = errors.New("malformed netconsole datagram")

// NetconsoleMsg is one datagram, parsed. Plain datagrams carry raw console
// text (Text, possibly several or partial lines); extended ones
// ("[release,]prio,seq,usec,flag[,ncfrag=off/total];body") carry one
// record's body or a fragment of it.
type NetconsoleMsg struct {
	Extended  bool
	Release   string
	Level     int
	Seq       uint64
	Time      time.Duration
	Cont      bool   // flag 'c': a continuation record
	Body      []byte // extended: text plus " KEY=value" lines, or a fragment
	FragOff   int    // with FragTotal > 0: where Body goes in the message
	FragTotal int
	Text      string // plain
}

// MaxNetconsoleMessage bounds a reassembled message; the kernel's records
// are at most 1 KiB of text plus dictionary.
const MaxNetconsoleMessage = 64 << 10

var releaseRE = regexp.MustCompile(`^[A-Za-z0-9._+~-]{1,64}$`)

// ParseNetconsole parses one datagram. Anything that does not have the
// extended header is plain text; a header that claims to be extended but
// is inconsistent is an error.
func ParseNetconsole(b []byte) (NetconsoleMsg, error) {
	if len(b) == 0 {
		return NetconsoleMsg{}, fmt.Errorf("%w: empty", ErrNetconsole)
	}
	semi := bytes.IndexByte(b, ';')
	if semi < 0 || semi > 200 || bytes.ContainsAny(b[:semi], " \n") {
		return plain(b)
	}
	f := strings.Split(string(b[:semi]), ",")
	m := NetconsoleMsg{Extended: true, Body: b[semi+1:]}
	if last := f[len(f)-1]; strings.HasPrefix(last, "ncfrag=") {
		off, total, ok := strings.Cut(strings.TrimPrefix(last, "ncfrag="), "/")
		o, err1 := strconv.Atoi(off)
		t, err2 := strconv.Atoi(total)
		if !ok || err1 != nil || err2 != nil || o < 0 || t <= 0 || t > MaxNetconsoleMessage || o+len(m.Body) > t {
			return NetconsoleMsg{}, fmt.Errorf("%w: fragment header %q", ErrNetconsole, last)
		}
		m.FragOff, m.FragTotal = o, t
		f = f[:len(f)-1]
	}
	switch len(f) {
	case 4:
	case 5:
		if !releaseRE.MatchString(f[0]) {
			return NetconsoleMsg{}, fmt.Errorf("%w: release %q", ErrNetconsole, f[0])
		}
		m.Release, f = f[0], f[1:]
	default:
		if m.FragTotal > 0 {
			return NetconsoleMsg{}, fmt.Errorf("%w: header %q", ErrNetconsole, b[:semi])
		}
		return plain(b)
	}
	prio, err1 := strconv.Atoi(f[0])
	seq, err2 := strconv.ParseUint(f[1], 10, 64)
	usec, err3 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || prio < 0 || usec < 0 || (f[3] != "-" && f[3] != "c") {
		if m.FragTotal > 0 || m.Release != "" {
			return NetconsoleMsg{}, fmt.Errorf("%w: header %q", ErrNetconsole, b[:semi])
		}
		return plain(b)
	}
	m.Level, m.Seq, m.Time, m.Cont = prio&7, seq, time.Duration(usec)*time.Microsecond, f[3] == "c"
	return m, nil
}

func plain(b []byte) (NetconsoleMsg, error) {
	return NetconsoleMsg{Text: string(b)}, nil
}

// NetconsoleStats counts what a receiver saw.
type NetconsoleStats struct {
	Datagrams   uint64 `json:"datagrams"`
	Records     uint64 `json:"records"`
	Garbage     uint64 `json:"garbage"`
	Reassembled uint64 `json:"reassembled"`
	Expired     uint64 `json:"expired"` // fragments that never completed
	Dropped     uint64 `json:"dropped"` // fragments refused or evicted over the limits
	WrongHost   uint64 `json:"wrong_host"`
}

func (s *NetconsoleStats) add(o NetconsoleStats) {
	s.Datagrams += o.Datagrams
	s.Records += o.Records
	s.Garbage += o.Garbage
	s.Reassembled += o.Reassembled
	s.Expired += o.Expired
	s.Dropped += o.Dropped
	s.WrongHost += o.WrongHost
}

type partialMsg struct {
	hdr   NetconsoleMsg
	buf   []byte
	have  []bool
	got   int
	first time.Time
}

// Reassembler turns one sender's datagrams into records: plain text split
// into lines, extended records parsed, fragments put back together. Its
// memory is bounded whatever arrives. Not safe for concurrent use.
type Reassembler struct {
	MaxPending int           // messages being reassembled; 0 = 64
	MaxBytes   int           // bytes held for them; 0 = 1 MiB
	Timeout    time.Duration // a message not complete by then is dropped; 0 = 5 s
	Release    string        // if set, extended records from another release are dropped
	Stats      NetconsoleStats

	pending map[uint64]*partialMsg
	bytes   int
	line    []byte // plain text after the last newline
}

// maxPlainLine bounds a plain line that never ends.
const maxPlainLine = 4 << 10

var consoleStampRE = regexp.MustCompile(`^\[\s*(\d+)\.(\d{1,9})\] ?`)

func (r *Reassembler) limits() (int, int, time.Duration) {
	mp, mb, to := r.MaxPending, r.MaxBytes, r.Timeout
	if mp <= 0 {
		mp = 64
	}
	if mb <= 0 {
		mb = 1 << 20
	}
	if to <= 0 {
		to = 5 * time.Second
	}
	return mp, mb, to
}

// Pending reports the messages and bytes held for reassembly.
func (r *Reassembler) Pending() (int, int) { return len(r.pending), r.bytes }

// Expire drops messages whose first fragment is older than the timeout.
func (r *Reassembler) Expire(now time.Time) {
	_, _, to := r.limits()
	for seq, p := range r.pending {
		if now.Sub(p.first) > to {
			r.drop(seq)
			r.Stats.Expired++
		}
	}
}

func (r *Reassembler) drop(seq uint64) {
	if p, ok := r.pending[seq]; ok {
		r.bytes -= 2 * len(p.buf)
		delete(r.pending, seq)
	}
}

// Feed takes one datagram received at now and returns the records it
// completed.
func (r *Reassembler) Feed(b []byte, now time.Time) []Record {
	r.Stats.Datagrams++
	r.Expire(now)
	m, err := ParseNetconsole(b)
	if err != nil {
		r.Stats.Garbage++
		return nil
	}
	if !m.Extended {
		return r.plainLines(m.Text)
	}
	if r.Release != "" && m.Release != "" && m.Release != r.Release {
		r.Stats.WrongHost++
		return nil
	}
	if m.FragTotal == 0 {
		return r.record(m, m.Body)
	}
	maxPending, maxBytes, _ := r.limits()
	p := r.pending[m.Seq]
	if p != nil && p.hdr.FragTotal != m.FragTotal {
		r.drop(m.Seq) // a new message reusing the seq (a reboot): start over
		r.Stats.Dropped++
		p = nil
	}
	if p == nil {
		need := 2 * m.FragTotal
		if need > maxBytes {
			r.Stats.Dropped++
			return nil
		}
		for len(r.pending) >= maxPending || r.bytes+need > maxBytes {
			r.evictOldest()
		}
		if r.pending == nil {
			r.pending = map[uint64]*partialMsg{}
		}
		p = &partialMsg{hdr: m, buf: make([]byte, m.FragTotal), have: make([]bool, m.FragTotal), first: now}
		r.pending[m.Seq] = p
		r.bytes += need
	}
	copy(p.buf[m.FragOff:], m.Body)
	for i := m.FragOff; i < m.FragOff+len(m.Body); i++ {
		if !p.have[i] {
			p.have[i] = true
			p.got++
		}
	}
	if p.got < len(p.buf) {
		return nil
	}
	r.drop(m.Seq)
	r.Stats.Reassembled++
	return r.record(p.hdr, p.buf)
}

func (r *Reassembler) evictOldest() {
	var oldest uint64
	var t time.Time
	first := true
	for seq, p := range r.pending {
		if first || p.first.Before(t) {
			oldest, t, first = seq, p.first, false
		}
	}
	if !first {
		r.drop(oldest)
		r.Stats.Dropped++
	}
}

// record parses an extended body (text, then " KEY=value" lines) like a
// /dev/kmsg record, which has the same shape.
func (r *Reassembler) record(m NetconsoleMsg, body []byte) []Record {
	flag := "-"
	if m.Cont {
		flag = "c"
	}
	head := fmt.Sprintf("%d,%d,%d,%s;", m.Level, m.Seq, m.Time.Microseconds(), flag)
	rec, err := ParseKmsg(append([]byte(head), body...))
	if err != nil {
		r.Stats.Garbage++
		return nil
	}
	rec.Source = "netconsole"
	if m.Release != "" {
		if rec.Dict == nil {
			rec.Dict = map[string]string{}
		}
		rec.Dict["RELEASE"] = m.Release
	}
	r.Stats.Records++
	return []Record{rec}
}

func (r *Reassembler) plainLines(text string) []Record {
	var out []Record
	data := append(r.line, text...)
	r.line = nil
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		out = append(out, r.plainRecord(string(data[:i])))
		data = data[i+1:]
	}
	if len(data) > maxPlainLine {
		// A line that never ends: deliver what there is, bounded.
		out = append(out, r.plainRecord(string(data[:maxPlainLine])))
		data = nil
	}
	r.line = append([]byte(nil), data...)
	return out
}

func (r *Reassembler) plainRecord(line string) Record {
	rec := Record{Text: strings.TrimRight(line, "\r"), Source: "netconsole"}
	if m := consoleStampRE.FindStringSubmatch(rec.Text); m != nil {
		secs, _ := strconv.ParseInt(m[1], 10, 64)
		usec, _ := strconv.ParseInt((m[2] + "000000")[:6], 10, 64)
		rec.Time = time.Duration(secs)*time.Second + time.Duration(usec)*time.Microsecond
		rec.Text = rec.Text[len(m[0]):]
	}
	r.Stats.Records++
	return rec
}

// NetconsoleReceiver listens for netconsole on UDP and delivers records,
// one Reassembler per sender.
type NetconsoleReceiver struct {
	Addr       string // e.g. "0.0.0.0:6666"
	Release    string // drop extended records from other kernel releases
	MaxSenders int    // 0 = 256; the least recently heard is forgotten

	mu      sync.Mutex
	conn    net.PacketConn
	senders map[string]*sender
	stats   NetconsoleStats // of forgotten senders
}

type sender struct {
	r    *Reassembler
	last time.Time
}

// Listen binds the socket, so the caller knows the port (Addr ":0").
func (nr *NetconsoleReceiver) Listen() error {
	c, err := net.ListenPacket("udp", nr.Addr)
	if err != nil {
		return fmt.Errorf("netconsole listen %s: %w", nr.Addr, err)
	}
	nr.mu.Lock()
	nr.conn = c
	nr.mu.Unlock()
	return nil
}

// LocalAddr is the bound address, once listening.
func (nr *NetconsoleReceiver) LocalAddr() net.Addr {
	nr.mu.Lock()
	defer nr.mu.Unlock()
	if nr.conn == nil {
		return nil
	}
	return nr.conn.LocalAddr()
}

// Stats sums the counters of every sender heard.
func (nr *NetconsoleReceiver) Stats() NetconsoleStats {
	nr.mu.Lock()
	defer nr.mu.Unlock()
	s := nr.stats
	for _, sd := range nr.senders {
		s.add(sd.r.Stats)
	}
	return s
}

// Run receives until ctx ends, listening first if Listen was not called.
func (nr *NetconsoleReceiver) Run(ctx context.Context, out chan<- Record) error {
	if nr.LocalAddr() == nil {
		if err := nr.Listen(); err != nil {
			return err
		}
	}
	c := nr.conn
	defer c.Close()
	buf := make([]byte, 65536)
	for {
		// Wake at least every second to expire fragments and see ctx.
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := c.ReadFrom(buf)
		if ctx.Err() != nil {
			return nil
		}
		now := time.Now()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				nr.expire(now)
				continue
			}
			return fmt.Errorf("netconsole receive: %w", err)
		}
		for _, rec := range nr.feed(from.String(), buf[:n], now) {
			select {
			case out <- rec:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

func (nr *NetconsoleReceiver) expire(now time.Time) {
	nr.mu.Lock()
	defer nr.mu.Unlock()
	for _, sd := range nr.senders {
		sd.r.Expire(now)
	}
}

func (nr *NetconsoleReceiver) feed(from string, b []byte, now time.Time) []Record {
	nr.mu.Lock()
	defer nr.mu.Unlock()
	host, _, _ := net.SplitHostPort(from)
	sd := nr.senders[host]
	if sd == nil {
		max := nr.MaxSenders
		if max <= 0 {
			max = 256
		}
		if nr.senders == nil {
			nr.senders = map[string]*sender{}
		}
		for len(nr.senders) >= max {
			var oldest string
			var t time.Time
			for h, s := range nr.senders {
				if oldest == "" || s.last.Before(t) {
					oldest, t = h, s.last
				}
			}
			nr.stats.add(nr.senders[oldest].r.Stats)
			delete(nr.senders, oldest)
		}
		sd = &sender{r: &Reassembler{Release: nr.Release}}
		nr.senders[host] = sd
	}
	sd.last = now
	return sd.r.Feed(b, now)
}
