package health

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

const release = "6.1.0-56-amd64"

// extended renders records as netconsole's extended format sends them
// (release prefix on), splitting a body longer than chunk into ncfrag
// fragments as the kernel does for messages over 1000 bytes.
func extended(seq int, text string, chunk int) [][]byte {
	body := text + "\n SUBSYSTEM=cpu"
	head := fmt.Sprintf("%s,4,%d,%d,-", release, seq, 61_200_000+seq*37)
	if len(body) <= chunk {
		return [][]byte{[]byte(head + ";" + body)}
	}
	var out [][]byte
	for off := 0; off < len(body); off += chunk {
		end := min(off+chunk, len(body))
		out = append(out, []byte(fmt.Sprintf("%s,ncfrag=%d/%d;%s", head, off, len(body), body[off:end])))
	}
	return out
}

func fixtureLines(t *testing.T, name string) []string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

func TestParseNetconsole(t *testing.T) {
	tests := []struct {
		in      string
		want    NetconsoleMsg
		wantErr bool
	}{
		{"6,1234,5678901,-;hello", NetconsoleMsg{Extended: true, Level: 6, Seq: 1234, Time: 5678901 * time.Microsecond, Body: []byte("hello")}, false},
		{release + ",4,7,8,c;part", NetconsoleMsg{Extended: true, Release: release, Level: 4, Seq: 7, Time: 8 * time.Microsecond, Cont: true, Body: []byte("part")}, false},
		{"4,7,8,-,ncfrag=3/10;abc", NetconsoleMsg{Extended: true, Level: 4, Seq: 7, Time: 8 * time.Microsecond, Body: []byte("abc"), FragOff: 3, FragTotal: 10}, false},
		{"[   61.200000] Oops: 0002 [#1] PREEMPT SMP NOPTI\n", NetconsoleMsg{Text: "[   61.200000] Oops: 0002 [#1] PREEMPT SMP NOPTI\n"}, false},
		{"plain; with a semicolon", NetconsoleMsg{Text: "plain; with a semicolon"}, false},
		{"4,7,8,-,ncfrag=8/10;abcdef", NetconsoleMsg{}, true}, // past the end
		{"4,7,8,-,ncfrag=0/0;", NetconsoleMsg{}, true},        // empty total
		{"4,7,8,-,ncfrag=0/999999;x", NetconsoleMsg{}, true},  // over the bound
		{"bad/release,4,7,8,-;x", NetconsoleMsg{}, true},      // not a release
		{release + ",x,7,8,-;x", NetconsoleMsg{}, true},       // release but no numbers
		{"", NetconsoleMsg{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseNetconsole([]byte(tt.in))
			if tt.wantErr {
				if !errors.Is(err, ErrNetconsole) {
					t.Fatalf("got %+v, %v; want ErrNetconsole", got, err)
				}
				return
			}
			if err != nil || fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tt.want) {
				t.Fatalf("got %+v, %v\nwant %+v", got, err, tt.want)
			}
		})
	}
}

func TestReassembler(t *testing.T) {
	now := time.Unix(100, 0)
	long := strings.Repeat("x", 2500)
	frags := extended(9, long, 1000)
	if len(frags) != 3 {
		t.Fatalf("%d fragments", len(frags))
	}
	tests := []struct {
		name  string
		dgram [][]byte
		texts []string
	}{
		{"in order", frags, []string{long}},
		{"out of order", [][]byte{frags[2], frags[0], frags[1]}, []string{long}},
		{"duplicated", [][]byte{frags[0], frags[0], frags[1], frags[1], frags[2]}, []string{long}},
		{"overlapping", [][]byte{frags[0], []byte(fmt.Sprintf("%s,4,9,%d,-,ncfrag=500/%d;%s", release, 61_200_000+9*37, len(long)+len("\n SUBSYSTEM=cpu"), long[500:2000])), frags[2]}, []string{long}},
		{"missing one never completes", [][]byte{frags[0], frags[2]}, nil},
		{"plain lines across datagrams", [][]byte{[]byte("[   61.2] Oops: 0002 [#1]\nCPU: 0 PI"), []byte("D: 1 Comm: x\n")}, []string{"Oops: 0002 [#1]", "CPU: 0 PID: 1 Comm: x"}},
		{"garbage", [][]byte{[]byte("4,1,1,-,ncfrag=9/3;zz"), {}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Reassembler{Release: release}
			var got []string
			for _, d := range tt.dgram {
				for _, rec := range r.Feed(d, now) {
					got = append(got, rec.Text)
				}
			}
			if strings.Join(got, "|") != strings.Join(tt.texts, "|") {
				t.Fatalf("records %q, want %q", got, tt.texts)
			}
		})
	}
	// An incomplete message expires and frees its memory.
	r := &Reassembler{}
	r.Feed(frags[0], now)
	if n, b := r.Pending(); n != 1 || b == 0 {
		t.Fatalf("pending %d, %d bytes", n, b)
	}
	r.Expire(now.Add(6 * time.Second))
	if n, b := r.Pending(); n != 0 || b != 0 || r.Stats.Expired != 1 {
		t.Fatalf("after expiry: pending %d, %d bytes, stats %+v", n, b, r.Stats)
	}
	// Another kernel release's records are not this host's.
	r = &Reassembler{Release: release}
	if recs := r.Feed([]byte("5.14.0-284.el9,4,1,1,-;Oops: 0002"), now); len(recs) != 0 || r.Stats.WrongHost != 1 {
		t.Fatalf("foreign release: %v %+v", recs, r.Stats)
	}
}

// A flood of fragments that never complete, and of garbage, keeps the
// reassembler inside its bounds.
func TestReassemblerBoundedUnderFlood(t *testing.T) {
	r := &Reassembler{MaxPending: 32, MaxBytes: 256 << 10}
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Unix(0, 0)
	for i := 0; i < 100_000; i++ {
		total := 1 + rng.IntN(MaxNetconsoleMessage)
		off := rng.IntN(total)
		body := strings.Repeat("a", min(total-off, 1+rng.IntN(900)))
		var d string
		if i%7 == 0 {
			d = fmt.Sprintf("%d,%d,1,-,ncfrag=%d/%d;%s", rng.IntN(8), rng.Uint64(), total, total, body) // garbage
		} else {
			d = fmt.Sprintf("4,%d,1,-,ncfrag=%d/%d;%s", rng.Uint64(), off, total, body)
		}
		r.Feed([]byte(d), now)
		if n, b := r.Pending(); n > 32 || b > 256<<10 {
			t.Fatalf("after %d datagrams: %d pending, %d bytes", i, n, b)
		}
		now = now.Add(time.Millisecond)
	}
	if r.Stats.Dropped+r.Stats.Expired == 0 || r.Stats.Garbage == 0 {
		t.Fatalf("stats %+v", r.Stats)
	}
}

// The kernel's oops report, sent over a real UDP socket in netconsole's
// extended format (one long record fragmented), comes out of the receiver
// as records that classify as one oops attributed to klp_oops_4.
func TestNetconsoleReceiverOops(t *testing.T) {
	nr := &NetconsoleReceiver{Addr: "127.0.0.1:0", Release: release}
	if err := nr.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	recs := make(chan Record, 256)
	done := make(chan error, 1)
	go func() { done <- nr.Run(ctx, recs) }()
	c, err := net.Dial("udp", nr.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lines := fixtureLines(t, "oops-klp.txt")
	// A long line (a big "Modules linked in:") forces fragments.
	for i, l := range lines {
		if strings.HasPrefix(l, "Modules linked in:") {
			lines[i] = l + strings.Repeat(" pad_module_with_a_long_name", 60)
		}
	}
	sent := 0
	for i, l := range lines {
		for _, d := range extended(200+i, l, 1000) {
			if _, err := c.Write(d); err != nil {
				t.Fatal(err)
			}
			sent++
			time.Sleep(time.Millisecond) // loopback UDP drops what a burst overflows
		}
	}
	if sent <= len(lines) {
		t.Fatalf("no fragmentation happened (%d datagrams for %d lines)", sent, len(lines))
	}
	var cl Classifier
	var evs []Event
	deadline := time.After(5 * time.Second)
	for len(evs) == 0 {
		select {
		case r := <-recs:
			if r.Source != "netconsole" || r.Dict["RELEASE"] != release {
				t.Fatalf("record %+v", r)
			}
			evs = append(evs, cl.Feed(r, time.Now())...)
		case <-deadline:
			t.Fatalf("no event; stats %+v", nr.Stats())
		}
	}
	if evs[0].Kind != KindOops || !Attributed(evs[0], Patch{Name: "klp_oops_4"}) || len(evs[0].Lines) != len(lines) {
		t.Fatalf("event %+v", evs[0])
	}
	if s := nr.Stats(); s.Reassembled == 0 || s.Garbage != 0 {
		t.Fatalf("stats %+v", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func FuzzNetconsole(f *testing.F) {
	for _, d := range extended(1, strings.Repeat("y", 2100), 1000) {
		f.Add(d, d)
	}
	f.Add([]byte("6,1234,5678901,-;hello\n KEY=v"), []byte("[   61.2] Oops: 0002\n"))
	f.Add([]byte(release+",4,7,8,c;part"), []byte("4,7,8,-,ncfrag=3/10;abc"))
	f.Add([]byte("4,7,8,-,ncfrag=0/10;abc"), []byte("4,7,8,-,ncfrag=3/10;defghij"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		r := &Reassembler{MaxPending: 4, MaxBytes: 64 << 10}
		now := time.Unix(0, 0)
		for i := 0; i < 3; i++ {
			for _, d := range [][]byte{a, b} {
				for _, rec := range r.Feed(d, now) {
					if len(rec.Text) > MaxNetconsoleMessage {
						t.Fatalf("record of %d bytes", len(rec.Text))
					}
				}
				if n, by := r.Pending(); n > 4 || by > 64<<10 || by < 0 {
					t.Fatalf("pending %d, %d bytes", n, by)
				}
			}
			now = now.Add(3 * time.Second)
		}
		if m, err := ParseNetconsole(a); err == nil && m.FragTotal > 0 && m.FragOff+len(m.Body) > m.FragTotal {
			t.Fatalf("fragment past its total accepted: %+v", m)
		}
	})
}
