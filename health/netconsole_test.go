package health

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

var ncUpdate = flag.Bool("update-netconsole", false, "rewrite testdata/netconsole from testdata/oops-klp.txt")

const ncRelease = "6.1.0-56-amd64"

// ncRec is one printk record as the kernel's ring buffer holds it.
type ncRec struct {
	prio int
	seq  uint64
	usec int64
	cont bool
	text string
	dict [][2]string
}

// ncEscape is msg_add_ext_text's escaping.
func ncEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c >= 127 || c == '\\' {
			fmt.Fprintf(&b, `\x%02x`, c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// ncKernelExt renders a record as netconsole's extended mode sends it:
// the printk ext header and body (info_print_ext_header,
// msg_print_ext_body), the release prefix when release is set (6.6+),
// and, when that exceeds MAX_PRINT_CHUNK (1000), fragments of at most
// 1000 bytes with ",ncfrag=off/total" after the header (send_ext_msg_udp).
func ncKernelExt(release string, r ncRec) [][]byte {
	flag := '-'
	if r.cont {
		flag = 'c'
	}
	header := fmt.Sprintf("%d,%d,%d,%c", r.prio, r.seq, r.usec, flag)
	body := ncEscape(r.text) + "\n"
	for _, kv := range r.dict {
		body += " " + kv[0] + "=" + ncEscape(kv[1]) + "\n"
	}
	if release != "" {
		header = release + "," + header
	}
	if len(header)+1+len(body) <= 1000 {
		return [][]byte{[]byte(header + ";" + body)}
	}
	var out [][]byte
	for off := 0; off < len(body); {
		h := fmt.Sprintf("%s,ncfrag=%d/%d;", header, off, len(body))
		n := min(len(body)-off, 1000-len(h))
		out = append(out, []byte(h+body[off:off+n]))
		off += n
	}
	return out
}

// ncKernelPlain renders a record as netconsole's plain mode sends it: the
// console line ("[%5lu.%06lu] " stamp, text, newline) in datagrams of at
// most MAX_PRINT_CHUNK bytes (write_msg).
func ncKernelPlain(r ncRec) [][]byte {
	line := fmt.Sprintf("[%5d.%06d] %s\n", r.usec/1e6, r.usec%1e6, r.text)
	var out [][]byte
	for len(line) > 0 {
		n := min(len(line), 1000)
		out = append(out, []byte(line[:n]))
		line = line[n:]
	}
	return out
}

// ncModules is what "Modules linked in:" prints on a small Debian 12 VM:
// longer than a printk record holds (LOG_LINE_MAX, 992 bytes).
const ncModules = "klp_oops_4(OEK) nft_chain_nat xt_MASQUERADE nf_nat nf_conntrack_netlink xfrm_user xfrm_algo " +
	"xt_addrtype br_netfilter bridge stp llc overlay nft_reject_inet nf_reject_ipv4 nf_reject_ipv6 nft_reject nft_ct " +
	"nf_conntrack nf_defrag_ipv6 nf_defrag_ipv4 nf_tables libcrc32c nfnetlink binfmt_misc intel_rapl_msr " +
	"intel_rapl_common kvm_intel kvm irqbypass ghash_clmulni_intel sha512_ssse3 sha512_generic sha256_ssse3 " +
	"sha1_ssse3 aesni_intel crypto_simd cryptd rapl virtio_gpu virtio_dma_buf drm_shmem_helper drm_kms_helper " +
	"pcspkr virtio_console virtio_balloon evdev button joydev serio_raw sg drm fuse loop efi_pstore dm_mod " +
	"configfs netconsole ip_tables x_tables autofs4 ext4 crc16 mbcache jbd2 crc32c_generic sr_mod cdrom " +
	"ata_generic virtio_net net_failover failover virtio_blk ata_piix libata crct10dif_pclmul crct10dif_common " +
	"crc32_pclmul crc32c_intel scsi_mod psmouse virtio_pci virtio_pci_legacy_dev virtio_pci_modern_dev virtio " +
	"scsi_common i2c_piix4 virtio_ring floppy msr qemu_fw_cfg vsock_loopback vmw_vsock_virtio_transport_common " +
	"vmw_vsock_vmci_transport vsock vmw_vmci tiny_power_button"

// ncOopsRecords is testdata/oops-klp.txt as printk records: a device
// message with a dictionary first, then the report. Its module list is
// printed piecewise with pr_cont, and what does not fit the first record
// goes to a continuation record (flag 'c'), as vprintk_store does.
func ncOopsRecords(t testing.TB) []ncRec {
	t.Helper()
	b, err := os.ReadFile("testdata/oops-klp.txt")
	if err != nil {
		t.Fatal(err)
	}
	recs := []ncRec{{prio: 6, seq: 1199, usec: 58_123_456, text: "e1000 0000:00:03.0 ens3: NIC Link is Up 1000 Mbps Full Duplex, Flow Control: RX",
		dict: [][2]string{{"SUBSYSTEM", "pci"}, {"DEVICE", "+pci:0000:00:03.0"}}}}
	for i, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		r := ncRec{prio: 4, seq: uint64(1200 + len(recs) - 1), usec: 61_234_567 + int64(i)*53, text: l}
		if i < 4 { // the page-fault lines are pr_alert
			r.prio = 1
		}
		if !strings.HasPrefix(l, "Modules linked in:") {
			recs = append(recs, r)
			continue
		}
		r.text = "Modules linked in:"
		cont := ncRec{prio: 4, usec: r.usec + 1, cont: true}
		for _, m := range strings.Fields(ncModules) {
			if len(r.text)+1+len(m) <= 992 && cont.text == "" {
				r.text += " " + m
			} else {
				cont.text += " " + m
			}
		}
		cont.seq = r.seq + 1
		recs = append(recs, r, cont)
	}
	return recs
}

// ncFixtures are the oops as three netconsole targets send it.
var ncFixtures = []struct {
	file, about string
	render      func(ncRec) [][]byte
}{
	{"oops-klp-plain.txt", "plain (the default): console lines, cut at 1000 bytes", ncKernelPlain},
	{"oops-klp-ext.txt", "extended (\"+\" or extended=1), as Debian 12's 6.1 sends it: no release prefix", func(r ncRec) [][]byte { return ncKernelExt("", r) }},
	{"oops-klp-ext-release.txt", "extended with the release prefix (\"+r\" or release=1, Linux 6.6 on)", func(r ncRec) [][]byte { return ncKernelExt(ncRelease, r) }},
}

func ncRender(t testing.TB, i int) []byte {
	fx := ncFixtures[i]
	var b bytes.Buffer
	fmt.Fprintf(&b, "# testdata/oops-klp.txt sent by netconsole, %s.\n", fx.about)
	fmt.Fprintf(&b, "# One UDP datagram per line, as a Go string literal. Regenerate: go test ./health -run TestNetconsoleFixtures -update-netconsole\n")
	for _, r := range ncOopsRecords(t) {
		for _, d := range fx.render(r) {
			b.WriteString(strconv.Quote(string(d)) + "\n")
		}
	}
	return b.Bytes()
}

func ncDatagrams(t testing.TB, file string) [][]byte {
	t.Helper()
	b, err := os.ReadFile("testdata/netconsole/" + file)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if l := sc.Text(); l != "" && !strings.HasPrefix(l, "#") {
			d, err := strconv.Unquote(l)
			if err != nil {
				t.Fatalf("%s: %q: %v", file, l, err)
			}
			out = append(out, []byte(d))
		}
	}
	return out
}

// The fixtures are what the kernel's code sends for the report, and
// fragmentation happens in each of them where the kernel would do it.
func TestNetconsoleFixtures(t *testing.T) {
	for i, fx := range ncFixtures {
		t.Run(fx.file, func(t *testing.T) {
			want := ncRender(t, i)
			path := "testdata/netconsole/" + fx.file
			if *ncUpdate {
				if err := os.MkdirAll("testdata/netconsole", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s differs from what the kernel would send (-update-netconsole rewrites it)", path)
			}
			split := false
			for _, d := range ncDatagrams(t, fx.file) {
				if len(d) > 1000 {
					t.Fatalf("datagram of %d bytes: the kernel sends at most 1000", len(d))
				}
				split = split || bytes.Contains(d, []byte(",ncfrag=")) || !bytes.HasSuffix(d, []byte("\n"))
			}
			if !split {
				t.Fatal("nothing in the fixture is split across datagrams")
			}
		})
	}
}

func TestParseNetconsole(t *testing.T) {
	ext := func(m NetconsoleMsg, body string) NetconsoleMsg {
		m.Extended, m.Body = true, []byte(body)
		return m
	}
	tests := []struct {
		name    string
		in      string
		want    NetconsoleMsg
		wantErr bool
	}{
		{"extended", "6,1234,5678901,-;hello\n", ext(NetconsoleMsg{Level: 6, Seq: 1234, Time: 5678901 * time.Microsecond, Text: "hello"}, "hello\n"), false},
		{"facility in prio", "30,5,6,-;systemd[1]: x\n", ext(NetconsoleMsg{Facility: 3, Level: 6, Seq: 5, Time: 6 * time.Microsecond, Text: "systemd[1]: x"}, "systemd[1]: x\n"), false},
		{"release", ncRelease + ",6,1234,5678901,-;text\n", ext(NetconsoleMsg{Release: ncRelease, Level: 6, Seq: 1234, Time: 5678901 * time.Microsecond, Text: "text"}, "text\n"), false},
		{"continuation", "4,7,8,c; more\n", ext(NetconsoleMsg{Level: 4, Seq: 7, Time: 8 * time.Microsecond, Cont: true, Text: " more"}, " more\n"), false},
		{"printk caller", "4,7,8,-,caller=T231;Oops: 0002 [#1]\n", ext(NetconsoleMsg{Level: 4, Seq: 7, Time: 8 * time.Microsecond, Text: "Oops: 0002 [#1]"}, "Oops: 0002 [#1]\n"), false},
		{"dictionary", "6,339,5140900,-;e1000 0000:00:03.0 ens3: Link is Up\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:03.0\n",
			ext(NetconsoleMsg{Level: 6, Seq: 339, Time: 5140900 * time.Microsecond, Text: "e1000 0000:00:03.0 ens3: Link is Up",
				Dict: map[string]string{"SUBSYSTEM": "pci", "DEVICE": "+pci:0000:00:03.0"}}, "e1000 0000:00:03.0 ens3: Link is Up\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:03.0\n"), false},
		{"escapes", `4,9,10,-;tab\x09and \x5c` + "\n", ext(NetconsoleMsg{Level: 4, Seq: 9, Time: 10 * time.Microsecond, Text: "tab\tand \\"}, `tab\x09and \x5c`+"\n"), false},
		{"fragment", "4,1234,56789,-,ncfrag=0/1500;first chunk", ext(NetconsoleMsg{Level: 4, Seq: 1234, Time: 56789 * time.Microsecond, FragTotal: 1500}, "first chunk"), false},
		{"fragment, release, caller", ncRelease + ",4,1234,56789,-,caller=T1,ncfrag=1490/1500;last chunk",
			ext(NetconsoleMsg{Release: ncRelease, Level: 4, Seq: 1234, Time: 56789 * time.Microsecond, FragOff: 1490, FragTotal: 1500}, "last chunk"), false},
		{"plain", "[   61.200000] Oops: 0002 [#1] PREEMPT SMP NOPTI\n", NetconsoleMsg{Text: "[   61.200000] Oops: 0002 [#1] PREEMPT SMP NOPTI\n"}, false},
		{"plain with a semicolon", "plain; with a semicolon", NetconsoleMsg{Text: "plain; with a semicolon"}, false},
		{"plain, commas, no flag", "a,b,c;d", NetconsoleMsg{Text: "a,b,c;d"}, false},
		{"plain partial line", "CPU: 0 PI", NetconsoleMsg{Text: "CPU: 0 PI"}, false},
		{"fragment past the end", "4,7,8,-,ncfrag=8/10;abc", NetconsoleMsg{}, true},
		{"fragment total 0", "4,7,8,-,ncfrag=0/0;", NetconsoleMsg{}, true},
		{"empty fragment", "4,7,8,-,ncfrag=0/10;", NetconsoleMsg{}, true},
		{"fragment over the bound", "4,7,8,-,ncfrag=0/999999;x", NetconsoleMsg{}, true},
		{"negative offset", "4,7,8,-,ncfrag=-1/10;x", NetconsoleMsg{}, true},
		{"no total", "4,7,8,-,ncfrag=1;x", NetconsoleMsg{}, true},
		{"ncfrag without a header", "1,2,ncfrag=0/5;abc", NetconsoleMsg{}, true},
		{"field without =", "4,7,8,-,junk;x", NetconsoleMsg{}, true},
		{"not a release", "bad/release,4,7,8,-;x", NetconsoleMsg{}, true},
		{"release, no numbers", ncRelease + ",x,7,8,-;x", NetconsoleMsg{}, true},
		{"signed prio", "+4,7,8,-;x", NetconsoleMsg{}, true},
		{"usec overflows", "4,7,99999999999999999999,-;x", NetconsoleMsg{}, true},
		{"NUL in plain text", "hello\x00world\n", NetconsoleMsg{}, true},
		{"empty", "", NetconsoleMsg{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseNetconsole([]byte(tt.in))
			if tt.wantErr {
				if !errors.Is(err, ErrNetconsole) {
					t.Fatalf("got %+v, %v; want ErrNetconsole", got, err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, %v\nwant %+v", got, err, tt.want)
			}
		})
	}
}

// ncCheck asserts the reassembler's bookkeeping: its byte count is what
// its partial records hold, each record's bitmap counts what it has.
func ncCheck(t testing.TB, r *Reassembler) {
	t.Helper()
	sum := 0
	for k, p := range r.pending {
		if len(p.buf) != k.total || p.got > len(p.buf) {
			t.Fatalf("partial record %+v: %d bytes of %d, buffer %d", k, p.got, k.total, len(p.buf))
		}
		n := 0
		for _, w := range p.have {
			n += bits.OnesCount64(w)
		}
		if n != p.got {
			t.Fatalf("partial record %+v: bitmap has %d bytes, count says %d", k, n, p.got)
		}
		sum += p.cost()
	}
	if sum != r.bytes {
		t.Fatalf("bytes %d, partial records hold %d", r.bytes, sum)
	}
}

func TestReassembler(t *testing.T) {
	now := time.Unix(100, 0)
	long := ncRec{prio: 4, seq: 9, usec: 61_200_333, text: strings.Repeat("0123456789", 250), dict: [][2]string{{"SUBSYSTEM", "cpu"}}}
	frags := ncKernelExt(ncRelease, long)
	if len(frags) != 3 {
		t.Fatalf("%d fragments", len(frags))
	}
	body := ncEscape(long.text) + "\n SUBSYSTEM=cpu\n"
	frag := func(r ncRec, off, end int) []byte {
		return []byte(fmt.Sprintf("%s,%d,%d,%d,-,ncfrag=%d/%d;%s", ncRelease, r.prio, r.seq, r.usec, off, len(body), body[off:end]))
	}
	rebooted := long
	rebooted.usec = 1_000_000 // the same seq in the next boot
	alert := long
	alert.prio = 1 // the same seq and stamp, another record: not mixed in
	tests := []struct {
		name    string
		dgrams  [][]byte
		texts   []string
		pending int
		stats   NetconsoleStats
	}{
		{"in order", frags, []string{long.text}, 0, NetconsoleStats{Datagrams: 3, Records: 1, Reassembled: 1}},
		{"out of order", [][]byte{frags[2], frags[0], frags[1]}, []string{long.text}, 0, NetconsoleStats{Datagrams: 3, Records: 1, Reassembled: 1}},
		{"duplicated", [][]byte{frags[0], frags[0], frags[1], frags[1], frags[2]}, []string{long.text}, 0, NetconsoleStats{Datagrams: 5, Records: 1, Reassembled: 1}},
		{"duplicated after delivery", [][]byte{frags[0], frags[1], frags[2], frags[1]}, []string{long.text}, 0, NetconsoleStats{Datagrams: 4, Records: 1, Reassembled: 1, Duplicates: 1}},
		{"overlapping", [][]byte{frag(long, 0, 1200), frag(long, 700, 2000), frag(long, 1900, len(body))}, []string{long.text}, 0, NetconsoleStats{Datagrams: 3, Records: 1, Reassembled: 1}},
		{"missing one", [][]byte{frags[0], frags[2]}, nil, 1, NetconsoleStats{Datagrams: 2}},
		{"same seq after a reboot", [][]byte{frags[0], ncKernelExt(ncRelease, rebooted)[1], frags[1], frags[2]}, []string{long.text}, 1, NetconsoleStats{Datagrams: 4, Records: 1, Reassembled: 1}},
		{"same seq, another record", [][]byte{frags[0], ncKernelExt(ncRelease, alert)[1], frags[1], frags[2]}, nil, 1, NetconsoleStats{Datagrams: 4, Dropped: 2}},
		{"another release", [][]byte{[]byte("6.12.57+deb13-amd64,4,1,1,-;Oops: 0002\n"), []byte("6.12.57+deb13-amd64,4,1,1,-,ncfrag=0/10;Oops:")}, nil, 0, NetconsoleStats{Datagrams: 2, OtherRelease: 2}},
		{"no release", [][]byte{[]byte("4,1,1,-;Oops: 0002\n")}, []string{"Oops: 0002"}, 0, NetconsoleStats{Datagrams: 1, Records: 1, Unverified: 1}},
		{"dictionary", ncKernelExt(ncRelease, ncRec{prio: 6, seq: 2, text: "e1000: Link is Up", dict: [][2]string{{"SUBSYSTEM", "pci"}}}), []string{"e1000: Link is Up"}, 0, NetconsoleStats{Datagrams: 1, Records: 1}},
		{"garbage", [][]byte{[]byte("4,1,1,-,ncfrag=9/3;zz"), {}, []byte("\x00\x01\x02")}, nil, 0, NetconsoleStats{Datagrams: 3, Garbage: 3}},
		{"plain lines across datagrams", [][]byte{[]byte("[   61.200000] Oops: 0002 [#1]\n[   61.200053] CPU: 0 PI"), []byte("D: 1 Comm: x\n")},
			[]string{"Oops: 0002 [#1]", "CPU: 0 PID: 1 Comm: x"}, 0, NetconsoleStats{Datagrams: 2, Records: 2}},
		{"plain prefixes", [][]byte{[]byte("<4>[   61.2][  T231] Oops: 0002\n[   61.200053]  <TASK>\n\n \nno stamp\r\n")},
			[]string{"Oops: 0002", " <TASK>", "no stamp"}, 0, NetconsoleStats{Datagrams: 1, Records: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Reassembler{Release: ncRelease}
			var got []string
			for _, d := range tt.dgrams {
				for _, rec := range r.Feed(d, now) {
					if rec.Source != "netconsole" {
						t.Fatalf("record %+v", rec)
					}
					got = append(got, rec.Text)
				}
				ncCheck(t, r)
			}
			if strings.Join(got, "|") != strings.Join(tt.texts, "|") {
				t.Fatalf("records %q, want %q", got, tt.texts)
			}
			if n, _ := r.Pending(); n != tt.pending || r.Stats != tt.stats {
				t.Fatalf("pending %d, stats %+v; want %d, %+v", n, r.Stats, tt.pending, tt.stats)
			}
		})
	}
}

func TestReassemblerRecordFields(t *testing.T) {
	r := &Reassembler{}
	var recs []Record
	for _, d := range ncKernelExt(ncRelease, ncRec{prio: 4, seq: 77, usec: 61_234_567, text: strings.Repeat("x", 1500), dict: [][2]string{{"DEVICE", "+pci:0000:00:03.0"}}}) {
		recs = append(recs, r.Feed(d, time.Unix(0, 0))...)
	}
	recs = append(recs, r.Feed([]byte("<3>[   61.234600] plain\n"), time.Unix(0, 0))...)
	want := []Record{
		{Level: 4, Seq: 77, Time: 61_234_567 * time.Microsecond, Text: strings.Repeat("x", 1500), Dict: map[string]string{"DEVICE": "+pci:0000:00:03.0", "RELEASE": ncRelease}, Source: "netconsole"},
		{Facility: 0, Level: 3, Time: 61_234_600 * time.Microsecond, Text: "plain", Source: "netconsole"},
	}
	if !reflect.DeepEqual(recs, want) {
		t.Fatalf("records\n%+v\nwant\n%+v", recs, want)
	}
}

func TestReassemblerExpiry(t *testing.T) {
	now := time.Unix(100, 0)
	frags := ncKernelExt("", ncRec{prio: 4, seq: 9, text: strings.Repeat("y", 2500)})
	r := &Reassembler{Timeout: 5 * time.Second}
	r.Feed(frags[0], now)
	r.Feed([]byte("[   61.2] half a li"), now)
	if n, b := r.Pending(); n != 1 || b == 0 {
		t.Fatalf("pending %d, %d bytes", n, b)
	}
	if recs := r.Expire(now.Add(5 * time.Second)); len(recs) != 0 || r.Stats.Expired != 0 {
		t.Fatalf("expired early: %+v %+v", recs, r.Stats)
	}
	recs := r.Expire(now.Add(5*time.Second + 1))
	if len(recs) != 1 || recs[0].Text != "half a li" {
		t.Fatalf("partial line not delivered: %+v", recs)
	}
	if n, b := r.Pending(); n != 0 || b != 0 || r.Stats.Expired != 1 {
		t.Fatalf("after expiry: pending %d, %d bytes, stats %+v", n, b, r.Stats)
	}
	// The rest of the record arriving late does not make a record.
	r.Feed(frags[1], now.Add(6*time.Second))
	r.Feed(frags[2], now.Add(6*time.Second))
	if r.Stats.Records != 1 || r.Stats.Reassembled != 0 {
		t.Fatalf("stats %+v", r.Stats)
	}
}

// A flood of fragments that never complete, and of garbage, keeps the
// reassembler inside its bounds.
func TestReassemblerBoundedUnderFlood(t *testing.T) {
	const maxPending, maxBytes = 32, 256 << 10
	r := &Reassembler{MaxPending: maxPending, MaxBytes: maxBytes}
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Unix(0, 0)
	junk := make([]byte, 1000)
	for i := 0; i < 100_000; i++ {
		total := 1 + rng.IntN(MaxNetconsoleMessage)
		off := rng.IntN(total)
		chunk := strings.Repeat("a", min(total-off, 1+rng.IntN(900)))
		var d []byte
		switch i % 10 {
		case 0:
			d = fmt.Appendf(nil, "4,%d,1,-,ncfrag=%d/%d;%s", rng.Uint64(), total, total, chunk) // past the end
		case 1:
			for j := range junk {
				junk[j] = byte(rng.Uint32())
			}
			d = junk
		case 2:
			d = []byte(strings.Repeat("no newline ", 100)) // a plain line that never ends
		default:
			d = fmt.Appendf(nil, "4,%d,%d,-,ncfrag=%d/%d;%s", rng.IntN(1000), rng.IntN(1000), off, total, chunk)
		}
		r.Feed(d, now)
		if n, b := r.Pending(); n > maxPending || b > maxBytes+maxPlainLine {
			t.Fatalf("after %d datagrams: %d pending, %d bytes", i, n, b)
		}
		if i%1000 == 0 {
			ncCheck(t, r)
		}
		now = now.Add(time.Millisecond)
	}
	if r.Stats.Dropped == 0 || r.Stats.Garbage == 0 {
		t.Fatalf("stats %+v", r.Stats)
	}
}

// Many senders, each holding partial records: the receiver forgets the
// least recently heard and keeps its total.
func TestNetconsoleReceiverBounded(t *testing.T) {
	nr := &NetconsoleReceiver{MaxSenders: 16, MaxBytes: 2 << 20}
	now := time.Unix(0, 0)
	for i := 0; i < 2000; i++ {
		from := fmt.Sprintf("192.0.2.%d:6665", i%200)
		d := fmt.Appendf(nil, "4,%d,1,-,ncfrag=0/%d;%s", i, MaxNetconsoleMessage, strings.Repeat("b", 900))
		nr.feed(from, d, now)
		senders, held := nr.Pending()
		sum := 0
		for _, sd := range nr.senders {
			_, b := sd.r.Pending()
			sum += b
		}
		if senders > 16 || held > 2<<20 || held != sum {
			t.Fatalf("after %d datagrams: %d senders, %d bytes held (they hold %d)", i, senders, held, sum)
		}
		now = now.Add(time.Millisecond)
	}
	s := nr.Stats()
	if s.Datagrams != 2000 || s.Dropped == 0 {
		t.Fatalf("stats %+v", s)
	}
}

// The oops report, sent over a real UDP socket the way each kind of
// netconsole target sends it, comes out of the receiver as records that
// classify as one oops attributed to klp_oops_4.
func TestNetconsoleReceiverOops(t *testing.T) {
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	others := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("::1/128")}
	tests := []struct {
		name, file  string
		release     string // the receiver's filter
		allow       []netip.Prefix
		plainToo    bool
		needRelease bool
		event       bool
		reassembled bool
	}{
		// Plain text carries no facility or level: dropped, unless a tool asks.
		{"plain", "oops-klp-plain.txt", ncRelease, loopback, false, false, false, false},
		{"plain for tools", "oops-klp-plain.txt", ncRelease, loopback, true, false, true, false},
		{"extended", "oops-klp-ext.txt", ncRelease, loopback, false, false, true, true},
		{"extended without the required release", "oops-klp-ext.txt", ncRelease, loopback, false, true, false, false},
		{"extended with release", "oops-klp-ext-release.txt", ncRelease, loopback, false, true, true, true},
		{"any release", "oops-klp-ext-release.txt", "", loopback, false, false, true, true},
		{"another host's kernel", "oops-klp-ext-release.txt", "6.12.57+deb13-amd64", loopback, false, true, false, false},
		{"sender not allowed", "oops-klp-ext-release.txt", ncRelease, others, false, true, false, false},
		{"no sender allowed", "oops-klp-ext-release.txt", ncRelease, nil, false, true, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nr := &NetconsoleReceiver{Addr: "127.0.0.1:0", Release: tt.release, Allow: tt.allow, PlainToo: tt.plainToo, RequireRelease: tt.needRelease}
			recs, c, stop := runReceiver(t, nr, 256)
			dgrams := ncDatagrams(t, tt.file)
			for _, d := range dgrams {
				if _, err := c.Write(d); err != nil {
					t.Fatal(err)
				}
			}
			var cl Classifier
			var evs []Event
			var modules string
			deadline := time.After(5 * time.Second)
			for len(evs) == 0 && tt.event {
				select {
				case r := <-recs:
					if r.Source != "netconsole" || r.Sender != c.LocalAddr().String() ||
						(strings.Contains(tt.file, "release") && r.Dict["RELEASE"] != ncRelease) {
						t.Fatalf("record %+v", r)
					}
					if strings.HasPrefix(r.Text, "Modules linked in:") {
						modules = r.Text
					}
					evs = append(evs, cl.Feed(r, time.Now())...)
				case <-deadline:
					t.Fatalf("no event; stats %+v", nr.Stats())
				}
			}
			for !tt.event && nr.Stats().Datagrams+nr.Stats().Denied < uint64(len(dgrams)) {
				select {
				case r := <-recs:
					t.Fatalf("record that must be dropped: %+v", r)
				case <-deadline:
					t.Fatalf("datagrams lost; stats %+v", nr.Stats())
				case <-time.After(10 * time.Millisecond):
				}
			}
			if tt.event {
				ev := evs[0]
				if ev.Kind != KindOops || ev.RIP.Func != "klp_fault" || !Attributed(ev, Suspect{Name: "klp_oops_4"}) || ev.Source != "netconsole" ||
					ev.Sender != c.LocalAddr().String() {
					t.Fatalf("event %+v", ev)
				}
				// The report says whether its kernel named the release:
				// one that did not never acts on its own.
				if want := map[bool]string{true: ncRelease}[strings.Contains(tt.file, "release")]; ev.Release != want {
					t.Fatalf("event release %q, want %q", ev.Release, want)
				}
				for _, r := range ncOopsRecords(t) {
					if strings.HasPrefix(r.text, "Modules linked in:") && modules != r.text {
						t.Fatalf("module list %d bytes, want the record's %d", len(modules), len(r.text))
					}
				}
			}
			s := nr.Stats()
			if s.Garbage != 0 || (s.Reassembled > 0) != tt.reassembled || s.Datagrams+s.Denied != uint64(len(dgrams)) ||
				(s.Denied > 0) != (tt.name == "sender not allowed" || tt.name == "no sender allowed") ||
				(s.Unverified > 0) != (tt.event && tt.reassembled && !strings.Contains(tt.file, "release")) {
				t.Fatalf("stats %+v", s)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func FuzzNetconsole(f *testing.F) {
	for _, fx := range ncFixtures {
		for _, d := range ncDatagrams(f, fx.file) {
			f.Add(d, []byte("4,1,1,-,ncfrag=0/10;abc"), uint64(1))
		}
	}
	f.Add([]byte("6,1234,5678901,-;hello\n KEY=v"), []byte("[   61.2] Oops: 0002\n"), uint64(2))
	f.Add([]byte(ncRelease+",4,7,8,c;part"), []byte("4,7,8,-,ncfrag=3/10;abc"), uint64(3))
	f.Add([]byte("4,7,8,-,ncfrag=0/10;abc"), []byte("4,7,8,-,ncfrag=3/10;defghij"), uint64(4))
	f.Add([]byte(strings.Repeat("long\x01", 500)), []byte("4,7,8,-,ncfrag=3/10;defghij"), uint64(5))
	f.Fuzz(func(t *testing.T, a, b []byte, seed uint64) {
		// Anything: parsed within bounds, reassembled within bounds.
		if m, err := ParseNetconsole(a); err == nil {
			if m.Level < 0 || m.Level > 7 || m.Time < 0 ||
				(m.FragTotal > 0 && (m.FragOff < 0 || m.FragOff+len(m.Body) > m.FragTotal || m.FragTotal > MaxNetconsoleMessage)) {
				t.Fatalf("accepted out of range: %+v", m)
			}
		}
		const maxPending, maxBytes = 4, 64 << 10
		r := &Reassembler{MaxPending: maxPending, MaxBytes: maxBytes}
		now := time.Unix(0, 0)
		for i := 0; i < 3; i++ {
			for _, d := range [][]byte{a, b} {
				r.Feed(d, now)
				if n, by := r.Pending(); n > maxPending || by > maxBytes+maxPlainLine || by < 0 {
					t.Fatalf("pending %d, %d bytes", n, by)
				}
				ncCheck(t, r)
			}
			now = now.Add(3 * time.Second)
		}
		// a as a record's text, fragmented as the kernel does, delivered
		// shuffled and with repeats: one record, the text intact, so the
		// reassembled body had exactly its total length.
		text := string(a[:min(len(a), 4096)])
		rec := ncRec{prio: 4, seq: seed >> 1, usec: int64(seed >> 20), text: text}
		release := ""
		if seed&1 == 1 {
			release = ncRelease
		}
		frags := ncKernelExt(release, rec)
		total := len(ncEscape(text)) + 1
		rng := rand.New(rand.NewPCG(seed, 0))
		order := rng.Perm(len(frags))
		if len(frags) > 1 { // a whole record has nothing to tell a repeat by
			order = append(order, rng.Perm(len(frags))[:rng.IntN(len(frags)+1)]...)
		}
		r = &Reassembler{}
		var got []Record
		for _, i := range order {
			if m, err := ParseNetconsole(frags[i]); err != nil || (len(frags) > 1 && m.FragTotal != total) {
				t.Fatalf("kernel's datagram %q: %+v, %v", frags[i], m, err)
			}
			got = append(got, r.Feed(frags[i], now)...)
		}
		if len(got) != 1 || got[0].Text != text || got[0].Seq != rec.seq {
			t.Fatalf("%d fragments gave %d records: %+v", len(frags), len(got), got)
		}
		if n, by := r.Pending(); n != 0 || by != 0 {
			t.Fatalf("left pending: %d, %d bytes", n, by)
		}
	})
}

// A sender that goes quiet mid-line (a console cut short by a hang): the
// receiver, otherwise asleep, wakes to deliver the partial line, then
// holds nothing.
func TestNetconsoleReceiverDeliversCutLine(t *testing.T) {
	nr := &NetconsoleReceiver{Addr: "127.0.0.1:0", Timeout: 100 * time.Millisecond, AnySender: true, PlainToo: true}
	recs, c, stop := runReceiver(t, nr, 4)
	if _, err := c.Write([]byte("Kernel panic - not syncing: Hard LOCKUP")); err != nil {
		t.Fatal(err)
	}
	r := recv(t, recs, "the cut line")
	if r.Text != "Kernel panic - not syncing: Hard LOCKUP" || r.Sender != c.LocalAddr().String() {
		t.Fatalf("record %+v", r)
	}
	if _, held := nr.Pending(); held != 0 {
		t.Fatalf("%d bytes held after delivery", held)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// runReceiver runs nr on a record channel of size buf and dials it; stop
// cancels Run and returns what it returned.
func runReceiver(t *testing.T, nr *NetconsoleReceiver, buf int) (recs chan Record, c net.Conn, stop func() error) {
	t.Helper()
	if err := nr.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	recs = make(chan Record, buf)
	done := make(chan error, 1)
	go func() { done <- nr.Run(ctx, recs) }()
	c, err := net.Dial("udp", nr.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return recs, c, func() error {
		cancel()
		return recv(t, done, "Run to return after cancel")
	}
}
