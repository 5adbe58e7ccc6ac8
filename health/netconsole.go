package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klp-agent/klp-agent/internal/kmsg"
)

// ErrNetconsole marks a datagram that claims netconsole's extended format
// but breaks it.
var ErrNetconsole = errors.New("malformed netconsole datagram")

// NetconsoleMsg is one datagram, parsed.
//
// Plain datagrams (Extended false) carry console text as printed: Text
// holds it, possibly several lines, possibly a partial one.
//
// Extended datagrams ("[release,]prio,seq,usec,flag[,key=value...]
// [,ncfrag=off/total];body") carry one printk record. Body is the raw
// body (escaped text, "\n", then " KEY=value\n" dictionary lines) and
// aliases the parsed buffer. When the record fits one datagram
// (FragTotal 0), Text and Dict hold it decoded; otherwise Body is the
// chunk that goes at FragOff in a body of FragTotal bytes.
type NetconsoleMsg struct {
	Extended  bool
	Release   string // kernel release prefix, when the target sets release
	Facility  int    // prio >> 3: 0 for the kernel's records
	Level     int    // prio & 7
	Seq       uint64
	Time      time.Duration // since boot
	Cont      bool          // flag 'c': the rest of a line a previous record began
	FragOff   int
	FragTotal int
	Body      []byte
	Text      string
	Dict      map[string]string
}

// Limits on what a datagram may claim. The kernel's records are at most
// 8 KiB once escaped (CONSOLE_EXT_LOG_MAX); a header is at most a release
// (64 bytes) and a few numbers.
const (
	MaxNetconsoleMessage = 64 << 10
	maxNetconsoleHeader  = 256
)

var releaseRE = regexp.MustCompile(`^[A-Za-z0-9._+~-]{1,64}$`)

// ParseNetconsole parses one datagram. A datagram without the extended
// header is plain text; one whose header places the flag ('-' or 'c')
// where the extended format has it, or carries ncfrag, must then be a
// consistent extended header, else the error wraps ErrNetconsole.
// A plain datagram with a NUL byte is an error too: printk text never has
// one, so it is not a console.
func ParseNetconsole(b []byte) (NetconsoleMsg, error) {
	if len(b) == 0 {
		return NetconsoleMsg{}, fmt.Errorf("%w: empty", ErrNetconsole)
	}
	semi := bytes.IndexByte(b, ';')
	if semi < 0 || semi > maxNetconsoleHeader || !headerBytes(b[:semi]) {
		return plainMsg(b)
	}
	head := string(b[:semi])
	f := strings.Split(head, ",")
	var m NetconsoleMsg
	switch {
	case len(f) >= 4 && isFlag(f[3]):
		// No release prefix.
	case len(f) >= 5 && isFlag(f[4]):
		if !releaseRE.MatchString(f[0]) {
			return NetconsoleMsg{}, fmt.Errorf("%w: release %q in header %q", ErrNetconsole, f[0], head)
		}
		m.Release, f = f[0], f[1:]
	default:
		if strings.Contains(head, "ncfrag=") {
			return NetconsoleMsg{}, fmt.Errorf("%w: header %q", ErrNetconsole, head)
		}
		return plainMsg(b)
	}
	prio, ok1 := decimal(f[0], math.MaxInt32)
	seq, ok2 := decimal(f[1], math.MaxUint64)
	usec, ok3 := decimal(f[2], math.MaxInt64/uint64(time.Microsecond))
	if !ok1 || !ok2 || !ok3 {
		return NetconsoleMsg{}, fmt.Errorf("%w: header %q", ErrNetconsole, head)
	}
	m.Extended, m.Facility, m.Level, m.Seq, m.Cont = true, int(prio>>3), int(prio&7), seq, f[3] == "c"
	m.Time = time.Duration(usec) * time.Microsecond
	m.Body = b[semi+1:]
	// After the flag: printk's own fields (caller=T1), then netconsole's.
	for _, kv := range f[4:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return NetconsoleMsg{}, fmt.Errorf("%w: field %q in header %q", ErrNetconsole, kv, head)
		}
		if k != "ncfrag" {
			continue
		}
		o, t, ok := strings.Cut(v, "/")
		off, ok1 := decimal(o, MaxNetconsoleMessage)
		total, ok2 := decimal(t, MaxNetconsoleMessage)
		// The kernel never sends an empty chunk, nor one past the end.
		if !ok || !ok1 || !ok2 || len(m.Body) == 0 || off+uint64(len(m.Body)) > total {
			return NetconsoleMsg{}, fmt.Errorf("%w: fragment %q with %d bytes", ErrNetconsole, kv, len(m.Body))
		}
		m.FragOff, m.FragTotal = int(off), int(total)
	}
	if m.FragTotal == 0 {
		m.Text, m.Dict = extBody(m.Body)
	}
	return m, nil
}

func plainMsg(b []byte) (NetconsoleMsg, error) {
	if bytes.IndexByte(b, 0) >= 0 {
		return NetconsoleMsg{}, fmt.Errorf("%w: NUL byte in plain text", ErrNetconsole)
	}
	return NetconsoleMsg{Text: string(b)}, nil
}

// headerBytes: an extended header is printable ASCII without spaces, which
// tells most console lines that contain a ';' from headers.
func headerBytes(h []byte) bool {
	for _, c := range h {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

func isFlag(s string) bool { return s == "-" || s == "c" }

// decimal parses plain digits (no sign, as the kernel prints them) up to max.
func decimal(s string, max uint64) (uint64, bool) {
	if s == "" || len(s) > 20 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil && v <= max
}

// extBody decodes a record body: the escaped text up to the first newline,
// then " KEY=value" dictionary lines (device info, configfs userdata).
func extBody(body []byte) (string, map[string]string) {
	lines := strings.Split(string(body), "\n")
	var dict map[string]string
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(strings.TrimPrefix(l, " "), "=")
		if !ok || !strings.HasPrefix(l, " ") || k == "" {
			continue
		}
		if dict == nil {
			dict = map[string]string{}
		}
		dict[k] = kmsg.Unescape(v)
	}
	return kmsg.Unescape(lines[0]), dict
}

// NetconsoleStats counts what a reassembler or receiver saw.
type NetconsoleStats struct {
	Datagrams    uint64 `json:"datagrams"`
	Records      uint64 `json:"records"`
	Garbage      uint64 `json:"garbage"`     // datagrams ParseNetconsole refused
	Reassembled  uint64 `json:"reassembled"` // fragmented records completed
	Expired      uint64 `json:"expired"`     // fragmented records not complete in time
	Dropped      uint64 `json:"dropped"`     // fragmented records given up over the limits or replaced
	Duplicates   uint64 `json:"duplicates"`  // fragments of records already delivered
	OtherRelease uint64 `json:"other_release"`
	Plain        uint64 `json:"plain"`      // datagrams without the extended header, when only extended ones count
	NoRelease    uint64 `json:"no_release"` // extended records naming no release, when one is required
	// Unverified counts extended records kept that name no release (a
	// kernel before 6.6, or a target without "r"), when none is required.
	Unverified uint64 `json:"unverified"`
	Denied     uint64 `json:"denied"` // datagrams from senders not allowed
}

func (s *NetconsoleStats) add(o NetconsoleStats) {
	s.Datagrams += o.Datagrams
	s.Records += o.Records
	s.Garbage += o.Garbage
	s.Reassembled += o.Reassembled
	s.Expired += o.Expired
	s.Dropped += o.Dropped
	s.Duplicates += o.Duplicates
	s.OtherRelease += o.OtherRelease
	s.Plain += o.Plain
	s.NoRelease += o.NoRelease
	s.Unverified += o.Unverified
	s.Denied += o.Denied
}

// fragKey tells fragmented records apart. Seq alone is not enough: it
// restarts at each boot; with the stamp and the length too, a record of
// the next boot is not taken for one of the last.
type fragKey struct {
	seq   uint64
	time  time.Duration
	total int
}

type partialMsg struct {
	hdr   NetconsoleMsg // of the first fragment; Body unused
	buf   []byte
	have  []uint64 // bitmap of the bytes of buf received
	got   int
	first time.Time
}

func (p *partialMsg) cost() int { return len(p.buf) + 8*len(p.have) }

// Reassembler turns one sender's datagrams into records: plain text split
// into lines, extended records decoded, fragments put back together by
// seq. Its memory is bounded whatever arrives: MaxPending records of at
// most MaxBytes in all, plus a partial plain line of at most 4 KiB.
// The zero value is ready to use; it reads no clock (callers pass now).
// Not safe for concurrent use.
//
// Records have Source SourceNetconsole; an extended record's release is in
// Dict["RELEASE"]. Plain lines have Level -1 (the console does not print
// it) unless the console prints syslog prefixes ("<4>"), and Time from
// the "[ secs.usecs]" stamp when there is one.
type Reassembler struct {
	MaxPending int           // fragmented records in progress; 0 = 64
	MaxBytes   int           // bytes held for them; 0 = 1 MiB
	Timeout    time.Duration // for a record's fragments, and a partial plain line; 0 = 5 s
	Release    string        // if set, extended records that name another release are dropped
	// ExtendedOnly drops plain datagrams: they carry no facility or level,
	// so nothing says the kernel wrote them.
	ExtendedOnly bool
	// RequireRelease drops extended records that name no release
	// (netconsole's "r" option, Linux 6.6+). Without it they are kept
	// (counted in Stats.Unverified), and their reports carry no Release.
	RequireRelease bool
	Stats          NetconsoleStats

	pending map[fragKey]*partialMsg
	bytes   int
	done    [16]fragKey // recently completed: late duplicates are not new records
	doneN   int
	line    []byte // plain text after the last newline
	lineAt  time.Time
}

// maxPlainLine bounds a plain line that never ends.
const maxPlainLine = 4 << 10

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

// Pending reports the fragmented records in progress and the bytes held
// for them and for a partial plain line.
func (r *Reassembler) Pending() (records, bytes int) { return len(r.pending), r.bytes + len(r.line) }

// Expire gives up fragmented records whose first fragment is older than
// the timeout, and returns a partial plain line that waited that long
// (a console line cut short by a hang would otherwise never show).
func (r *Reassembler) Expire(now time.Time) []Record {
	_, _, to := r.limits()
	for k, p := range r.pending {
		if now.Sub(p.first) > to {
			r.drop(k)
			r.Stats.Expired++
		}
	}
	if len(r.line) > 0 && now.Sub(r.lineAt) > to {
		rec, ok := r.plainRecord(r.line)
		r.line = nil
		if ok {
			return []Record{rec}
		}
	}
	return nil
}

func (r *Reassembler) drop(k fragKey) {
	if p, ok := r.pending[k]; ok {
		r.bytes -= p.cost()
		delete(r.pending, k)
	}
}

// Feed takes one datagram received at now and returns the records it
// completed.
func (r *Reassembler) Feed(b []byte, now time.Time) []Record {
	r.Stats.Datagrams++
	out := r.Expire(now)
	m, err := ParseNetconsole(b)
	switch {
	case err != nil:
		r.Stats.Garbage++
	case !m.Extended && r.ExtendedOnly:
		r.Stats.Plain++
	case !m.Extended:
		out = append(out, r.plainLines(m.Text, now)...)
	case r.Release != "" && m.Release != "" && m.Release != r.Release:
		r.Stats.OtherRelease++
	case r.RequireRelease && m.Release == "":
		r.Stats.NoRelease++
	case m.FragTotal == 0:
		out = append(out, r.record(m))
	default:
		if rec, ok := r.fragment(m, now); ok {
			out = append(out, rec)
		}
	}
	return out
}

func (r *Reassembler) fragment(m NetconsoleMsg, now time.Time) (Record, bool) {
	maxPending, maxBytes, _ := r.limits()
	k := fragKey{m.Seq, m.Time, m.FragTotal}
	for _, d := range r.done[:min(r.doneN, len(r.done))] {
		if d == k {
			r.Stats.Duplicates++
			return Record{}, false
		}
	}
	p := r.pending[k]
	if p != nil && (p.hdr.Level != m.Level || p.hdr.Cont != m.Cont || p.hdr.Release != m.Release) {
		r.drop(k) // not the record we were assembling: start over
		r.Stats.Dropped++
		p = nil
	}
	if p == nil {
		p = &partialMsg{hdr: m, first: now}
		p.hdr.Body = nil
		need := m.FragTotal + 8*((m.FragTotal+63)/64)
		if need > maxBytes {
			r.Stats.Dropped++
			return Record{}, false
		}
		for len(r.pending) >= maxPending || r.bytes+need > maxBytes {
			r.evictOldest()
		}
		p.buf, p.have = make([]byte, m.FragTotal), make([]uint64, (m.FragTotal+63)/64)
		if r.pending == nil {
			r.pending = map[fragKey]*partialMsg{}
		}
		r.pending[k] = p
		r.bytes += p.cost()
	}
	// Overlapping or repeated bytes are the same bytes: the later copy wins.
	copy(p.buf[m.FragOff:], m.Body)
	for i := m.FragOff; i < m.FragOff+len(m.Body); i++ {
		if w, bit := i/64, uint64(1)<<(i%64); p.have[w]&bit == 0 {
			p.have[w] |= bit
			p.got++
		}
	}
	if p.got < len(p.buf) {
		return Record{}, false
	}
	r.drop(k)
	r.done[r.doneN%len(r.done)] = k
	r.doneN++
	r.Stats.Reassembled++
	whole := p.hdr
	whole.Text, whole.Dict = extBody(p.buf)
	return r.record(whole), true
}

func (r *Reassembler) evictOldest() {
	var oldest fragKey
	var t time.Time
	found := false
	for k, p := range r.pending {
		if !found || p.first.Before(t) {
			oldest, t, found = k, p.first, true
		}
	}
	if found {
		r.drop(oldest)
		r.Stats.Dropped++
	}
}

func (r *Reassembler) record(m NetconsoleMsg) Record {
	rec := Record{Facility: m.Facility, Level: m.Level, Seq: m.Seq, Time: m.Time, Text: m.Text, Dict: m.Dict, Source: SourceNetconsole}
	if m.Release == "" {
		r.Stats.Unverified++
	} else {
		if rec.Dict == nil {
			rec.Dict = map[string]string{}
		}
		rec.Dict["RELEASE"] = m.Release
	}
	r.Stats.Records++
	return rec
}

func (r *Reassembler) plainLines(text string, now time.Time) []Record {
	var out []Record
	data := append(r.line, text...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		if rec, ok := r.plainRecord(data[:i]); ok {
			out = append(out, rec)
		}
		data = data[i+1:]
	}
	for len(data) > maxPlainLine {
		// A line that does not end: deliver it in bounded pieces.
		if rec, ok := r.plainRecord(data[:maxPlainLine]); ok {
			out = append(out, rec)
		}
		data = data[maxPlainLine:]
	}
	r.line = append(r.line[:0:0], data...)
	r.lineAt = now
	return out
}

// consolePrefixRE matches what the console prints before a record's text:
// an optional syslog prefix (console_msg_format=syslog), the printk.time
// stamp and, with CONFIG_PRINTK_CALLER, the caller.
var consolePrefixRE = regexp.MustCompile(`^(?:<(\d{1,3})>)?(?:\[\s*(\d{1,10})\.(\d{1,9})\])?(?:\[\s*[TC]\d{1,10}\])?`)

func (r *Reassembler) plainRecord(line []byte) (Record, bool) {
	text := strings.TrimRight(string(line), "\r")
	if strings.TrimSpace(text) == "" {
		return Record{}, false
	}
	rec := Record{Facility: -1, Level: -1, Text: text, Source: SourceNetconsole}
	if m := consolePrefixRE.FindStringSubmatch(text); len(m[0]) > 0 {
		if m[1] != "" {
			prio, _ := strconv.Atoi(m[1])
			rec.Facility, rec.Level = prio>>3, prio&7
		}
		if m[2] != "" {
			secs, _ := strconv.ParseInt(m[2], 10, 64)
			usec, _ := strconv.ParseInt((m[3] + "00000")[:6], 10, 64)
			rec.Time = time.Duration(secs)*time.Second + time.Duration(usec)*time.Microsecond
		}
		// The console puts one space between the prefix and the text.
		rec.Text = strings.TrimPrefix(text[len(m[0]):], " ")
	}
	r.Stats.Records++
	return rec, true
}

// NetconsoleReceiver listens for netconsole on UDP and delivers records,
// with one Reassembler per sender address (host and port).
//
// Memory is bounded: at most MaxSenders senders (the least recently heard
// is forgotten), each within the Reassembler's default limits (1 MiB at
// most), and all of them within MaxBytes (over it, the least recently
// heard are forgotten too). Records of all senders share out, in the
// order they complete.
type NetconsoleReceiver struct {
	Addr    string // e.g. "0.0.0.0:6666" (netconsole's default port); ":0" picks one
	Release string // drop extended records that name another kernel release
	// Allow lists the senders whose datagrams count; anything else is
	// dropped before it is parsed or held. UDP is unauthenticated: this
	// is what keeps a forged report out.
	Allow []netip.Prefix
	// AnySender accepts every sender (tests and tools only).
	AnySender bool
	// PlainToo accepts plain (non-extended) datagrams: tests and tools
	// only, since they carry no facility or level.
	PlainToo bool
	// RequireRelease drops extended records that name no release.
	RequireRelease bool
	MaxSenders     int // 0 = 256
	MaxBytes       int // held for all senders' partial records; 0 = 8 MiB
	// Timeout gives up a fragmented record, or delivers a partial plain
	// line, this long after it began; 0 = 5 s (Reassembler.Timeout).
	Timeout time.Duration

	mu        sync.Mutex
	conn      net.PacketConn
	senders   map[string]*sender
	held      int             // sum of the senders' Pending bytes
	forgotten NetconsoleStats // of senders no longer tracked
	lastSweep time.Time
}

type sender struct {
	r    *Reassembler
	last time.Time
}

// Listen binds the socket, so that the caller knows the address before
// Run (with Addr ":0"). Run calls it when the caller has not.
func (nr *NetconsoleReceiver) Listen() error {
	nr.mu.Lock()
	defer nr.mu.Unlock()
	if nr.conn != nil {
		return fmt.Errorf("netconsole listen %s: already listening on %s", nr.Addr, nr.conn.LocalAddr())
	}
	c, err := net.ListenPacket("udp", nr.Addr)
	if err != nil {
		return fmt.Errorf("netconsole listen %s: %w", nr.Addr, err)
	}
	nr.conn = c
	return nil
}

// LocalAddr is the bound address, nil before Listen.
func (nr *NetconsoleReceiver) LocalAddr() net.Addr {
	nr.mu.Lock()
	defer nr.mu.Unlock()
	if nr.conn == nil {
		return nil
	}
	return nr.conn.LocalAddr()
}

// Stats sums the counters of every sender heard, forgotten ones included.
func (nr *NetconsoleReceiver) Stats() NetconsoleStats {
	nr.mu.Lock()
	defer nr.mu.Unlock()
	s := nr.forgotten
	for _, sd := range nr.senders {
		s.add(sd.r.Stats)
	}
	return s
}

// Pending reports the senders tracked and the bytes held for them.
func (nr *NetconsoleReceiver) Pending() (senders, bytes int) {
	nr.mu.Lock()
	defer nr.mu.Unlock()
	return len(nr.senders), nr.held
}

// Run receives until ctx ends (then it returns nil) or the socket fails,
// and closes the socket. Call it once.
func (nr *NetconsoleReceiver) Run(ctx context.Context, out chan<- Record) error {
	if nr.LocalAddr() == nil {
		if err := nr.Listen(); err != nil {
			return err
		}
	}
	nr.mu.Lock()
	c := nr.conn
	nr.mu.Unlock()
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() }) // unblocks ReadFrom
	defer stop()
	buf := make([]byte, 64<<10)
	for {
		// While fragments or a partial line wait, wake at least every
		// second to expire those of senders gone silent; else sleep.
		var wake time.Time
		if _, held := nr.Pending(); held > 0 {
			wake = time.Now().Add(time.Second)
		}
		if err := c.SetReadDeadline(wake); err != nil && ctx.Err() == nil {
			return fmt.Errorf("netconsole receive on %s: %w", c.LocalAddr(), err)
		}
		n, from, err := c.ReadFrom(buf)
		if ctx.Err() != nil {
			return nil
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			return fmt.Errorf("netconsole receive on %s: %w", c.LocalAddr(), err)
		}
		var recs []Record
		switch {
		case err == nil && !nr.allowed(from):
			nr.mu.Lock()
			nr.forgotten.Denied++
			nr.mu.Unlock()
		case err == nil:
			recs = nr.feed(from.String(), buf[:n], time.Now())
		default:
			recs = nr.sweep(time.Now())
		}
		for _, rec := range recs {
			select {
			case out <- rec:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// allowed reports whether a datagram from addr counts.
func (nr *NetconsoleReceiver) allowed(addr net.Addr) bool {
	if nr.AnySender {
		return true
	}
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(ua.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap()
	for _, p := range nr.Allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// sweep expires every sender's stale fragments, at most once a second.
func (nr *NetconsoleReceiver) sweep(now time.Time) []Record {
	nr.mu.Lock()
	defer nr.mu.Unlock()
	return nr.sweepLocked(now)
}

func (nr *NetconsoleReceiver) sweepLocked(now time.Time) []Record {
	if now.Sub(nr.lastSweep) < time.Second {
		return nil
	}
	nr.lastSweep = now
	var out []Record
	for from, sd := range nr.senders {
		_, before := sd.r.Pending()
		out = append(out, tag(sd.r.Expire(now), from)...)
		_, after := sd.r.Pending()
		nr.held += after - before
	}
	return out
}

func (nr *NetconsoleReceiver) feed(from string, b []byte, now time.Time) []Record {
	nr.mu.Lock()
	defer nr.mu.Unlock()
	out := nr.sweepLocked(now)
	maxSenders, maxBytes := nr.MaxSenders, nr.MaxBytes
	if maxSenders <= 0 {
		maxSenders = 256
	}
	if maxBytes <= 0 {
		maxBytes = 8 << 20
	}
	sd := nr.senders[from]
	if sd == nil {
		for len(nr.senders) >= maxSenders {
			nr.forgetOldest("")
		}
		if nr.senders == nil {
			nr.senders = map[string]*sender{}
		}
		// One sender alone stays within the total.
		sd = &sender{r: &Reassembler{Release: nr.Release, MaxBytes: min(1<<20, max(maxBytes-maxPlainLine, 1)), Timeout: nr.Timeout,
			ExtendedOnly: !nr.PlainToo, RequireRelease: nr.RequireRelease}}
		nr.senders[from] = sd
	}
	sd.last = now
	_, before := sd.r.Pending()
	out = append(out, tag(sd.r.Feed(b, now), from)...)
	_, after := sd.r.Pending()
	nr.held += after - before
	// Over the total: forget other senders, least recently heard first.
	for nr.held > maxBytes && len(nr.senders) > 1 {
		nr.forgetOldest(from)
	}
	return out
}

// tag marks records with the sender they came from.
func tag(recs []Record, from string) []Record {
	for i := range recs {
		recs[i].Sender = from
	}
	return recs
}

func (nr *NetconsoleReceiver) forgetOldest(keep string) {
	var oldest string
	var t time.Time
	found := false
	for a, s := range nr.senders {
		if a != keep && (!found || s.last.Before(t)) {
			oldest, t, found = a, s.last, true
		}
	}
	if !found {
		return
	}
	sd := nr.senders[oldest]
	n, held := sd.r.Pending()
	sd.r.Stats.Dropped += uint64(n)
	nr.forgotten.add(sd.r.Stats)
	nr.held -= held
	delete(nr.senders, oldest)
}
