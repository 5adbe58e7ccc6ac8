package health

import (
	"bufio"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// levelOf is the printk level the kernel logs a line of a report at, for
// fixtures that do not record it: a header's own level (headers.go, from
// the kernel's format strings), the body at KERN_DEFAULT.
func levelOf(text string) int {
	if h, ok := matchHeader(text, -1); ok {
		return h.maxLevel
	}
	return levelDefault
}

// records turns a fixture report into kmsg records, one per line, the way
// the kernel emits them (with an unrelated record interleaved).
func records(t *testing.T, file string, interleave bool) []Record {
	t.Helper()
	f, err := os.Open("testdata/" + file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	seq := 100
	for sc.Scan() {
		seq++
		r, err := ParseKmsg([]byte(fmt.Sprintf("%d,%d,%d,-;%s\n SUBSYSTEM=cpu\n", levelOf(sc.Text()), seq, seq*1000, sc.Text())))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
		if interleave && seq == 104 {
			out = append(out, Record{Text: "e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex"})
		}
	}
	return out
}

func TestParseKmsg(t *testing.T) {
	tests := []struct {
		in     string
		ok     bool
		level  int
		seq    uint64
		text   string
		dictKV string
	}{
		{"6,339,5140900,-;NET: Registered PF_INET6 protocol family\n", true, 6, 339, "NET: Registered PF_INET6 protocol family", ""},
		{"12,1,2,-,caller=T1;hello\\x0aworld\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:02.0\n", true, 4, 1, "hello\nworld", "SUBSYSTEM=pci"},
		{"4,5,6,c;continued", true, 4, 5, "continued", ""},
		{"garbage", false, 0, 0, "", ""},
		{"a,b,c,d;x", false, 0, 0, "", ""},
		{"6,1;x", false, 0, 0, "", ""},
		{"-1,1,1,-;x", false, 0, 0, "", ""},
	}
	for _, tt := range tests {
		r, err := ParseKmsg([]byte(tt.in))
		if (err == nil) != tt.ok {
			t.Errorf("%q: err %v", tt.in, err)
			continue
		}
		if !tt.ok {
			continue
		}
		if r.Level != tt.level || r.Seq != tt.seq || r.Text != tt.text {
			t.Errorf("%q: got %+v", tt.in, r)
		}
		if tt.dictKV != "" {
			k, v, _ := strings.Cut(tt.dictKV, "=")
			if r.Dict[k] != v {
				t.Errorf("%q: dict %v", tt.in, r.Dict)
			}
		}
	}
}

func TestClassifyAndAttribute(t *testing.T) {
	now := time.Unix(1700000000, 0)
	cur := Suspect{Name: "klp_oops_4", Functions: []Function{{"vmlinux", "cmdline_proc_show"}}}
	tests := []struct {
		file       string
		kind       Kind
		rip        string
		patch      Suspect
		attributed bool
		rollback   bool // while not soaking
	}{
		{"oops-klp.txt", KindOops, "klp_fault", cur, true, true},
		{"warn-klp.txt", KindWarning, "klp_fault", Suspect{Name: "klp_warn_4"}, true, true},
		{"warn-other.txt", KindWarning, "dev_watchdog", Suspect{Name: "klp_cmdline_3", Functions: []Function{{"vmlinux", "cmdline_proc_show"}}}, false, false},
		{"softlockup.txt", KindSoftLockup, "native_safe_halt", Suspect{Name: "klp_cmdline_3"}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			var c Classifier
			var evs []Event
			for i, r := range records(t, tt.file, true) {
				evs = append(evs, c.Feed(r, now.Add(time.Duration(i)*time.Millisecond))...)
			}
			evs = append(evs, c.Flush(now.Add(time.Minute))...)
			if len(evs) != 1 {
				t.Fatalf("%d events, want one report: %+v", len(evs), evs)
			}
			ev := evs[0]
			if ev.Kind != tt.kind || ev.RIP.Func != tt.rip {
				t.Fatalf("kind %s rip %+v", ev.Kind, ev.RIP)
			}
			if got := Attributed(ev, tt.patch); got != tt.attributed {
				t.Fatalf("attributed = %v (frames %+v)", got, ev.Frames)
			}
			if v := (&Judge{Policy: DefaultPolicy()}).Judge(ev, tt.patch, false, time.Unix(2, 0)); v.Rollback != tt.rollback {
				t.Fatalf("verdict %+v", v)
			}
		})
	}
}

func TestUnattributedCrashWhileSoaking(t *testing.T) {
	var c Classifier
	var evs []Event
	for _, r := range records(t, "oops-klp.txt", false) {
		evs = append(evs, c.Feed(r, time.Unix(1, 0))...)
	}
	other := Suspect{Name: "klp_cmdline_3", Functions: []Function{{"vmlinux", "version_proc_show"}}}
	if Attributed(evs[0], other) {
		t.Fatal("oops in klp_oops_4 attributed to klp_cmdline_3")
	}
	j := &Judge{Policy: DefaultPolicy()}
	if v := j.Judge(evs[0], other, true, time.Unix(2, 0)); !v.Rollback || !strings.Contains(v.Reason, "while klp_cmdline_3 was soaking") {
		t.Fatalf("soaking verdict %+v", v)
	}
	if v := j.Judge(evs[0], other, false, time.Unix(3, 0)); v.Rollback {
		t.Fatalf("after the soak an unattributed oops must not roll back: %+v", v)
	}
}

func TestEventsAreBounded(t *testing.T) {
	var c Classifier
	c.Feed(Record{Text: "WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2"}, time.Unix(1, 0))
	var done []Event
	for i := 0; i < 2*MaxEventLines; i++ {
		done = append(done, c.Feed(Record{Text: " f+0x1/0x2"}, time.Unix(1, 0))...)
	}
	if len(done) != 1 || len(done[0].Lines) != MaxEventLines {
		t.Fatalf("events %d, first has %d lines", len(done), len(done[0].Lines))
	}
}

func FuzzParseKmsg(f *testing.F) {
	f.Add([]byte("6,339,5140900,-;NET: Registered PF_INET6 protocol family\n"))
	f.Add([]byte("12,1,2,-,caller=T1;hello\\x0aworld\n SUBSYSTEM=pci\n"))
	f.Add([]byte("4,1,1,-;BUG: kernel NULL pointer dereference, address: 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseKmsg(b)
		if err != nil {
			return
		}
		if r.Level < 0 || r.Level > 7 || r.Time < 0 {
			t.Fatalf("accepted out of range: %+v", r)
		}
		var c Classifier
		c.Feed(r, time.Unix(0, 0))
	})
}

// recv takes the next value from ch, failing the test after 5 s: what a
// test waits for happens in milliseconds, or not at all.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for " + what)
		var zero T
		return zero
	}
}

// Two netconsole senders crashing at once: their records interleave on the
// socket, and each sender's report comes out whole and apart.
func TestReportsPerSender(t *testing.T) {
	a, b := records(t, "oops-klp.txt", false), records(t, "warn-other.txt", false)
	for i := range a {
		a[i].Sender, a[i].Source = "10.0.0.1:6666", "netconsole"
	}
	for i := range b {
		b[i].Sender, b[i].Source = "10.0.0.2:6666", "netconsole"
	}
	var g Reports
	t0 := time.Unix(1000, 0)
	if _, ok := g.Deadline(); ok {
		t.Fatal("deadline with nothing open")
	}
	var evs []Event
	for i := 0; i < max(len(a), len(b)); i++ {
		now := t0.Add(time.Duration(i) * time.Millisecond)
		if i < len(a) {
			evs = append(evs, g.Feed(a[i], now)...)
		}
		if i < len(b) {
			evs = append(evs, g.Feed(b[i], now)...)
		}
	}
	// Whatever did not end with an end-of-trace line closes when idle.
	last := t0.Add(time.Duration(max(len(a), len(b))-1) * time.Millisecond)
	if d, ok := g.Deadline(); ok {
		if d.Sub(last) > 2*time.Second+time.Millisecond {
			t.Fatalf("deadline %v after the last record", d.Sub(last))
		}
		if early := g.Flush(d.Add(-time.Millisecond)); len(early) != 0 {
			t.Fatalf("flushed before the deadline: %+v", early)
		}
		evs = append(evs, g.Flush(d)...)
	}
	if len(evs) != 2 {
		t.Fatalf("%d reports, want 2", len(evs))
	}
	bySender := map[string]Event{}
	for _, ev := range evs {
		bySender[ev.Sender] = ev
	}
	oops, warn := bySender["10.0.0.1:6666"], bySender["10.0.0.2:6666"]
	if oops.Kind != KindOops || warn.Kind != KindWarning {
		t.Fatalf("kinds %q %q", oops.Kind, warn.Kind)
	}
	// Each is the report its sender alone would have given.
	alone := func(recs []Record) Event {
		var c Classifier
		var evs []Event
		for i, r := range recs {
			evs = append(evs, c.Feed(r, t0.Add(time.Duration(i)*time.Millisecond))...)
		}
		evs = append(evs, c.Flush(t0.Add(time.Hour))...)
		if len(evs) != 1 {
			t.Fatalf("%d reports from one sender", len(evs))
		}
		return evs[0]
	}
	if want := alone(a); !reflect.DeepEqual(oops.Lines, want.Lines) || !reflect.DeepEqual(oops.Frames, want.Frames) {
		t.Fatalf("oops lines:\n%s\nwant:\n%s", strings.Join(oops.Lines, "\n"), strings.Join(want.Lines, "\n"))
	}
	if want := alone(b); !reflect.DeepEqual(warn.Lines, want.Lines) {
		t.Fatalf("warning lines:\n%s\nwant:\n%s", strings.Join(warn.Lines, "\n"), strings.Join(want.Lines, "\n"))
	}
	if !Attributed(oops, Suspect{Name: "klp_oops_4"}) || Attributed(warn, Suspect{Name: "klp_oops_4"}) {
		t.Fatalf("attribution: oops %v, warn %v", oops.Modules, warn.RIP)
	}
	if _, ok := g.Deadline(); ok || len(g.by) != 0 {
		t.Fatalf("%d classifiers held after every report closed", len(g.by))
	}
}
