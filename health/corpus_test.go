package health

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The corpus: real kernel reports from mailing lists, bug trackers,
// syzkaller's fixtures and kpatch issues, and real decoys, each with its
// source (testdata/corpus/README.md). Every one goes through each input
// path the agent has: /dev/kmsg records, netconsole's extended datagrams,
// and a kdump dmesg file.

type corpusFile struct {
	name      string
	meta      map[string]string
	kinds     []Kind   // every report, in order
	inTrace   []string // modules the trace runs through
	lines     []corpusLine
	isDecoy   bool
	rawLevels bool // the source kept the printk levels ("<4>")
}

type corpusLine struct {
	text  string
	level int // -1: the source does not say
	usec  int64
}

var (
	syslogRE = regexp.MustCompile(`^(?:[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d \S+ kernel: |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d )`)
	// A serial console interleaves other output with the kernel's lines;
	// the kernel's record starts at its timestamp.
	embeddedRE = regexp.MustCompile(`^\S.*?(\[\s*\d+\.\d{6}\](?:\[\s*[TC]\d+\])? .*)$`)
	prioRE     = regexp.MustCompile(`^<(\d{1,3})>`)
	stampRE    = regexp.MustCompile(`^\[\s*(\d+)\.(\d+)\] ?`)
	callerRE   = regexp.MustCompile(`^\[\s*[TC]\d+\] ?`)
	quotedRE   = regexp.MustCompile(`^(?:> ?)+`)
	moduleSep  = regexp.MustCompile(`[ ,]+`)
)

func loadCorpus(t *testing.T, dir string) []corpusFile {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata/corpus", dir, "*.txt"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("corpus %s: %v", dir, err)
	}
	var out []corpusFile
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		head, body, ok := strings.Cut(string(b), "\n---\n")
		if !ok {
			t.Fatalf("%s: no --- line", p)
		}
		f := corpusFile{name: filepath.Base(p), meta: map[string]string{}, isDecoy: dir == "decoys"}
		for _, l := range strings.Split(head, "\n") {
			if k, v, ok := strings.Cut(strings.TrimPrefix(l, "# "), ": "); ok {
				f.meta[k] = strings.TrimSpace(v)
			}
		}
		if f.meta["source"] == "" {
			t.Fatalf("%s: no source", p)
		}
		if !f.isDecoy {
			for _, k := range strings.Fields(f.meta["kinds-all"]) {
				f.kinds = append(f.kinds, Kind(k))
			}
			if len(f.kinds) == 0 {
				t.Fatalf("%s: no kinds-all", p)
			}
			if m := f.meta["modules-in-trace"]; !strings.HasPrefix(m, "none") {
				for _, name := range moduleSep.Split(m, -1) {
					if regexp.MustCompile(`^[A-Za-z0-9_]+$`).MatchString(name) {
						f.inTrace = append(f.inTrace, name)
					}
				}
			}
		}
		f.lines = normalize(body, &f.rawLevels)
		out = append(out, f)
	}
	return out
}

// normalize undoes what carried the log to the page (mail quoting, a common
// indentation, syslog's prefix) and keeps what the kernel said: the text,
// its level where the source kept it, and its time.
func normalize(body string, rawLevels *bool) []corpusLine {
	raw := strings.Split(strings.TrimRight(body, "\n"), "\n")
	quoted := true
	for _, l := range raw {
		if strings.TrimSpace(l) != "" && !strings.HasPrefix(l, ">") {
			quoted = false
		}
	}
	var lines []string
	for _, l := range raw {
		if quoted {
			l = quotedRE.ReplaceAllString(l, "")
		}
		l = strings.TrimRight(syslogRE.ReplaceAllString(l, ""), " \r")
		if m := embeddedRE.FindStringSubmatch(l); m != nil && !stampRE.MatchString(l) && !prioRE.MatchString(l) {
			l = m[1]
		}
		lines = append(lines, l)
	}
	// The common indentation of a pasted block is not the kernel's.
	indent := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" || stampRE.MatchString(l) || prioRE.MatchString(l) {
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, " \t"))
		if indent < 0 || n < indent {
			indent = n
		}
	}
	var out []corpusLine
	usec := int64(1_000_000)
	for _, l := range lines {
		if indent > 0 && len(l) >= indent && strings.TrimSpace(l[:indent]) == "" {
			l = l[indent:]
		}
		cl := corpusLine{level: -1}
		if m := prioRE.FindStringSubmatch(l); m != nil {
			p, _ := strconv.Atoi(m[1])
			cl.level = p & 7
			*rawLevels = true
			l = l[len(m[0]):]
		}
		if m := stampRE.FindStringSubmatch(l); m != nil {
			s, _ := strconv.ParseInt(m[1], 10, 64)
			frac := (m[2] + "000000")[:6]
			f, _ := strconv.ParseInt(frac, 10, 64)
			usec = s*1_000_000 + f
			l = callerRE.ReplaceAllString(l[len(m[0]):], "")
		} else {
			usec += 10 // unstamped: a moment after the last
		}
		if strings.TrimSpace(l) == "" {
			continue
		}
		cl.text, cl.usec = l, usec
		out = append(out, cl)
	}
	return out
}

// level is the line's printk level as the source kept it, else as the
// kernel prints that line (levelOf).
func (l corpusLine) levelOrKernel() int {
	if l.level >= 0 {
		return l.level
	}
	return levelOf(l.text)
}

// viaKmsg feeds the lines as /dev/kmsg records.
func viaKmsg(t *testing.T, f corpusFile) []Event {
	var c Classifier
	var evs []Event
	for i, l := range f.lines {
		r, err := ParseKmsg([]byte(fmt.Sprintf("%d,%d,%d,-;%s\n", l.levelOrKernel(), i+1, l.usec, ncEscape(l.text))))
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		evs = append(evs, c.Feed(r, time.Unix(0, l.usec*1000))...)
	}
	return append(evs, c.Flush(time.Unix(1<<40, 0))...)
}

// viaNetconsole sends the lines as extended netconsole datagrams (long
// records fragmented as the kernel does) through a reassembler that takes
// only extended records of this host's release.
func viaNetconsole(t *testing.T, f corpusFile) []Event {
	r := &Reassembler{Release: ncRelease, ExtendedOnly: true, RequireRelease: true}
	var c Classifier
	var evs []Event
	for i, l := range f.lines {
		for _, d := range ncKernelExt(ncRelease, ncRec{prio: l.levelOrKernel(), seq: uint64(i + 1), usec: l.usec, text: l.text}) {
			for _, rec := range r.Feed(d, time.Unix(0, l.usec*1000)) {
				evs = append(evs, c.Feed(rec, time.Unix(0, l.usec*1000))...)
			}
		}
	}
	if r.Stats.Garbage != 0 {
		t.Fatalf("%s: netconsole garbage %+v", f.name, r.Stats)
	}
	return append(evs, c.Flush(time.Unix(1<<40, 0))...)
}

// viaKdump writes the lines as the dmesg file kdump leaves and parses it.
func viaKdump(t *testing.T, f corpusFile) []Event {
	var b strings.Builder
	for _, l := range f.lines {
		fmt.Fprintf(&b, "[%5d.%06d] %s\n", l.usec/1_000_000, l.usec%1_000_000, l.text)
	}
	return ParseDmesg(bufio.NewReader(strings.NewReader(b.String())), "kdump")
}

func kindsOf(evs []Event) []Kind {
	var ks []Kind
	for _, e := range evs {
		ks = append(ks, e.Kind)
	}
	return ks
}

func TestCorpus(t *testing.T) {
	reports, decoys := loadCorpus(t, "reports"), loadCorpus(t, "decoys")
	if len(reports) < 40 {
		t.Fatalf("%d reports in the corpus, want at least 40", len(reports))
	}
	paths := []struct {
		name string
		feed func(*testing.T, corpusFile) []Event
	}{{"kmsg", viaKmsg}, {"netconsole", viaNetconsole}, {"kdump", viaKdump}}
	// A livepatch no report names, and a function none runs.
	stranger := Suspect{Name: "klp_not_in_any_trace", Functions: []Function{{"vmlinux", "klp_no_such_function"}}}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			right, attributedHits, attributedWant := 0, 0, 0
			var wrong []string
			for _, f := range reports {
				evs := p.feed(t, f)
				got := kindsOf(evs)
				if slices.Equal(got, f.kinds) {
					right++
				} else {
					wrong = append(wrong, fmt.Sprintf("%s: got %v, want %v", f.name, got, f.kinds))
				}
				for _, ev := range evs {
					if Attributed(ev, stranger) {
						t.Errorf("%s: %s report attributed to a livepatch it never names", f.name, ev.Kind)
					}
					// Loaded is not guilty: a module that is only in
					// "Modules linked in:" is not the report's, unless
					// it was being loaded (TestAttributedWhileLoading).
					for _, m := range ev.Modules {
						if !slices.Contains(f.inTrace, m) && !slices.Contains(ev.Loading, m) && Attributed(ev, Suspect{Name: m}) {
							t.Errorf("%s: attributed to %s, which is loaded but not in the trace", f.name, m)
						}
					}
				}
				for _, m := range f.inTrace {
					attributedWant++
					if slices.ContainsFunc(evs, func(ev Event) bool { return Attributed(ev, Suspect{Name: m}) }) {
						attributedHits++
					} else {
						t.Logf("%s: no report attributed to %s, which its trace runs through", f.name, m)
					}
				}
			}
			share := float64(right) / float64(len(reports))
			t.Logf("%s: %d/%d reports (%.1f%%) give exactly their kinds; attribution recall %d/%d", p.name, right, len(reports), 100*share, attributedHits, attributedWant)
			sort.Strings(wrong)
			for _, w := range wrong {
				t.Logf("  %s", w)
			}
			if share < 0.95 {
				t.Errorf("%.1f%% of the corpus classified right, the bar is 95%%", 100*share)
			}
			for _, f := range decoys {
				if evs := p.feed(t, f); len(evs) != 0 {
					t.Errorf("decoy %s raised %d event(s): %v %q", f.name, len(evs), kindsOf(evs), evs[0].Header)
				}
			}
		})
	}
}

// The agent's own real-kernel run (testdata/corpus/realkernel): the
// Debian 6.1 kernel's log with every record's real facility and level,
// read as /dev/kmsg records and as a kdump dmesg file. Each report the
// klp_crash livepatch made is recognised and attributed to it; the
// segfault and traps lines of programs named like report headers, run
// as an unprivileged user, raise nothing.
func TestRealKernelSample(t *testing.T) {
	b, err := os.ReadFile("testdata/corpus/realkernel/debian-6.1.0-57-klp_crash.dmesg-r.txt")
	if err != nil {
		t.Fatal(err)
	}
	head, body, _ := strings.Cut(string(b), "\n---\n")
	var want []Kind
	for _, l := range strings.Split(head, "\n") {
		if v, ok := strings.CutPrefix(l, "# kinds-all: "); ok {
			for _, k := range strings.Fields(v) {
				want = append(want, Kind(k))
			}
		}
	}
	lineRE := regexp.MustCompile(`^<(\d+)>\[\s*(\d+)\.(\d{6})\] (.*)$`)
	var c Classifier
	var kmsg []Event
	for i, l := range strings.Split(body, "\n") {
		m := lineRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		prio, _ := strconv.Atoi(m[1])
		s, _ := strconv.ParseInt(m[2], 10, 64)
		us, _ := strconv.ParseInt(m[3], 10, 64)
		usec := s*1_000_000 + us
		r, err := ParseKmsg([]byte(fmt.Sprintf("%d,%d,%d,-;%s\n", prio, i, usec, ncEscape(m[4]))))
		if err != nil {
			t.Fatal(err)
		}
		kmsg = append(kmsg, c.Feed(r, time.Unix(0, usec*1000))...)
	}
	kmsg = append(kmsg, c.Flush(time.Unix(1<<40, 0))...)
	kdump := ParseDmesg(strings.NewReader(body), "kdump")
	for name, evs := range map[string][]Event{"kmsg": kmsg, "kdump": kdump} {
		if got := kindsOf(evs); !slices.Equal(got, want) {
			t.Errorf("%s: kinds %v, want %v", name, got, want)
		}
		for _, ev := range evs {
			if !Attributed(ev, Suspect{Name: "klp_crash"}) {
				t.Errorf("%s: %s report %q not attributed to klp_crash (rip %+v)", name, ev.Kind, ev.Header, ev.RIP)
			}
			if Attributed(ev, Suspect{Name: "klp_cmdline_1", Functions: []Function{{"vmlinux", "version_proc_show"}}}) {
				t.Errorf("%s: %s report attributed to a patch it does not run through", name, ev.Kind)
			}
		}
	}
}

// Every header the classifier knows opens a real report in the corpus:
// none is there on a guess (docs/health.md lists them with the samples).
func TestEveryHeaderHasARealSample(t *testing.T) {
	files := append(loadCorpus(t, "reports"), loadCorpus(t, "realkernel")...)
	for _, h := range headers {
		found := ""
		for _, f := range files {
			for _, l := range f.lines {
				if h.re.MatchString(l.text) {
					found = f.name
					break
				}
			}
			if found != "" {
				break
			}
		}
		if found == "" {
			t.Errorf("header %q opens no report in the corpus", h.name)
		}
	}
}

// A livepatch listed with the "+" flag in "Modules linked in:" was being
// loaded when the report came (kernel/module/main.c module_flags: '+' is
// MODULE_STATE_COMING): the report is the load's. Four real reports of
// kpatch and livepatch modules crashing the kernel as they load, none of
// which names the patch in its trace, are attributed to the patch and to
// no other module they list.
func TestAttributedWhileLoading(t *testing.T) {
	want := map[string]string{
		"oops-paging-request-kpatch-load-4.1-notimestamps.txt": "kpatch_meminfo_string",
		"oops-paging-request-kpatch-core-module-4.4.txt":       "kpatch_new",
		"hard-lockup-nmi-kpatch-syslog-4.4.txt":                "kpatch_4_4_83_529_ph_1512286016",
		"oops-gpf-old-form-livepatch-modules-4.9.txt":          "livepatch_4_9_88_1_20180518_1",
	}
	seen := 0
	for _, f := range loadCorpus(t, "reports") {
		patch, ok := want[f.name]
		if !ok {
			continue
		}
		seen++
		evs := viaKmsg(t, f)
		if len(evs) == 0 {
			t.Fatalf("%s: no report", f.name)
		}
		for _, ev := range evs {
			if !Attributed(ev, Suspect{Name: patch}) {
				t.Errorf("%s: %s report not attributed to %s, loading (modules %v, loading %v)", f.name, ev.Kind, patch, ev.Modules, ev.Loading)
			}
			for _, m := range ev.Modules {
				if m != patch && !slices.Contains(f.inTrace, m) && Attributed(ev, Suspect{Name: m}) {
					t.Errorf("%s: attributed to %s, loaded but not loading", f.name, m)
				}
			}
		}
	}
	if seen != len(want) {
		t.Fatalf("%d of the %d files found", seen, len(want))
	}
}
