package health

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// corpusFileNamed loads one report of the corpus.
func corpusFileNamed(t *testing.T, name string) corpusFile {
	t.Helper()
	for _, f := range loadCorpus(t, "reports") {
		if f.name == name {
			return f
		}
	}
	t.Fatalf("no corpus report %s", name)
	return corpusFile{}
}

// The x86 kernel stack overflow (both forms: "kernel stack overflow (page
// fault)" to 5.15, "[Oops: ]stack guard page" since 5.16), arm64's
// ("Insufficient stack space to handle exception!") and the RCU Tasks
// stall are reports of their own, opened by their first line, through
// every input path. Before these headers, none raised an event.
func TestStackOverflowAndRCUTasksReports(t *testing.T) {
	for name, first := range map[string]string{
		"stack-overflow-page-fault-btrfs-module-4.19.txt": "BUG: stack guard page was hit at 00000000f4d0d811 (stack is 000000002d0d1957..0000000094b2a7c8)",
		"stack-guard-page-nmi-sev-es-6.2.txt":             "BUG: NMI stack guard page was hit at 0000000003983d50 (stack is 000000007feb1fa4..00000000574369c2)",
		"stack-guard-page-oops-prefix-syzbot-6.12.txt":    "BUG: TASK stack guard page was hit at ffffc90001717fd8 (stack is ffffc90001718000..ffffc90001720000)",
		"stack-overflow-arm64-kprobe-6.2.txt":             "Insufficient stack space to handle exception!",
		"rcu-tasks-stall-5.11.txt":                        "INFO: rcu_tasks detected stalls on tasks:",
	} {
		f := corpusFileNamed(t, name)
		for path, feed := range map[string]func(*testing.T, corpusFile) []Event{"kmsg": viaKmsg, "netconsole": viaNetconsole, "kdump": viaKdump} {
			evs := feed(t, f)
			if got := kindsOf(evs); !slices.Equal(got, f.kinds) {
				t.Errorf("%s via %s: kinds %v, want %v", name, path, got, f.kinds)
				continue
			}
			if evs[0].Header != first {
				t.Errorf("%s via %s: header %q, want %q", name, path, evs[0].Header, first)
			}
		}
	}
	// The stack overflow's die header completes the report its BUG line
	// opened: one event, with the RIP.
	evs := viaKmsg(t, corpusFileNamed(t, "stack-overflow-page-fault-btrfs-module-4.19.txt"))
	if len(evs) != 1 || evs[0].RIP.Func != "memcpy_erms" || !Attributed(evs[0], Suspect{Name: "btrfs"}) {
		t.Fatalf("events %+v", evs)
	}
	// arm64's report carries the registers before its panic: the pc.
	evs = viaKmsg(t, corpusFileNamed(t, "stack-overflow-arm64-kprobe-6.2.txt"))
	if len(evs) != 2 || evs[0].RIP.Func != "__rcu_irq_enter_check_tick" {
		t.Fatalf("arm64 events %+v", evs)
	}
}

// Since 5.8 ftrace_bug() names the function it failed to patch before its
// "cut here" and WARNING. That function, a livepatch's target, is named
// nowhere else in the report: the WARNING report takes the block and is
// attributed to the patch that replaces it. A block whose WARNING never
// comes (FTRACE_WARN_ON_ONCE fired already) is no report.
func TestFtraceBugNamesThePatchedFunction(t *testing.T) {
	f := corpusFileNamed(t, "ftrace-bug-warning-panic_on_warn-arm64-5.7.txt")
	patch := Suspect{Name: "klp_irq", Functions: []Function{{Object: "vmlinux", Name: "bcm2835_handle_irq"}}}
	for path, feed := range map[string]func(*testing.T, corpusFile) []Event{"kmsg": viaKmsg, "netconsole": viaNetconsole, "kdump": viaKdump} {
		evs := feed(t, f)
		if len(evs) == 0 || evs[0].Kind != KindWarning {
			t.Fatalf("%s: events %v", path, kindsOf(evs))
		}
		if !strings.HasPrefix(evs[0].Header, "WARNING: CPU: 2 PID: 1635 at kernel/trace/ftrace.c:2078") || evs[0].Lines[0] != "------------[ ftrace bug ]------------" {
			t.Errorf("%s: header %q, first line %q", path, evs[0].Header, evs[0].Lines[0])
		}
		if !Attributed(evs[0], patch) {
			t.Errorf("%s: the ftrace bug WARNING is not attributed to the patch of bcm2835_handle_irq (frames %+v)", path, evs[0].Frames)
		}
	}
	orphan := f
	orphan.lines = f.lines[:9] // the block and its "cut here", no WARNING
	if evs := viaKmsg(t, orphan); len(evs) != 0 {
		t.Fatalf("an ftrace bug block without its WARNING raised %v", kindsOf(evs))
	}
}

// Up to 5.7 ftrace_bug() WARNs first and names the function after the
// WARNING's "---[ end trace" line: a WARNING at ftrace_bug keeps the
// ftrace lines that follow, and ends at the first other line (or when
// the stream goes quiet).
func TestFtraceBugLinesAfterTheWarning(t *testing.T) {
	// A real one (ARM, module loading): the function is a raw address
	// in the module being loaded.
	f := corpusFileNamed(t, "ftrace-bug-after-warning-arm-module-plts.txt")
	loading := Suspect{Name: "klp_loading", Text: []Range{{Start: 0xe9ef7000, End: 0xe9ef8000}}}
	for path, feed := range map[string]func(*testing.T, corpusFile) []Event{"kmsg": viaKmsg, "netconsole": viaNetconsole, "kdump": viaKdump} {
		evs := feed(t, f)
		if len(evs) != 2 {
			t.Fatalf("%s: events %v", path, kindsOf(evs))
		}
		if Attributed(evs[0], loading) || !Attributed(evs[1], loading) || !slices.Contains(evs[1].Lines, "ftrace failed to modify [<e9ef7006>] 0xe9ef7006") {
			t.Errorf("%s: the ftrace_bug WARNING lost the function after its end marker: %q", path, evs[1].Lines[len(evs[1].Lines)-4:])
		}
	}
	// x86 4.18 records, built from the kernel's format strings: lib/bug.c
	// __warn ("WARNING: CPU: %d PID: %d at %s:%d %pS"), v4.18
	// kernel/trace/ftrace.c ftrace_bug (pr_info("ftrace failed to modify
	// "), then print_ip_sym's printk("[<%p>] %pS\n") as a record of its
	// own, then print_ip_ins's " actual:   %02x:..."). An unrelated
	// record ends the report.
	patch := Suspect{Name: "klp_cmdline", Functions: []Function{{Object: "vmlinux", Name: "cmdline_proc_show"}}}
	var c Classifier
	var evs []Event
	for i, l := range []string{
		"------------[ cut here ]------------",
		"WARNING: CPU: 2 PID: 1200 at kernel/trace/ftrace.c:2023 ftrace_bug+0x28a/0x2f0",
		"RIP: 0010:ftrace_bug+0x28a/0x2f0",
		"Call Trace:",
		" ftrace_replace_code+0x1f9/0x230",
		"---[ end trace 5f0a0b7b1bb7bd52 ]---",
		"ftrace failed to modify ",
		"[<00000000a1b2c3d4>] cmdline_proc_show+0x0/0x30",
		" actual:   e8:93:6c:35:3f",
		"e1000: eth0 NIC Link is Up 1000 Mbps Full Duplex",
	} {
		got := c.Feed(Record{Text: l, Level: levelOf(l), Source: "kmsg"}, time.Unix(int64(i), 0))
		if len(got) != 0 && i != 9 {
			t.Fatalf("the report ended at %q", l)
		}
		evs = append(evs, got...)
	}
	if len(evs) != 1 || !Attributed(evs[0], patch) || evs[0].Lines[len(evs[0].Lines)-1] != " actual:   e8:93:6c:35:3f" {
		t.Fatalf("events %+v", evs)
	}
	// A WARNING at ftrace_bug with nothing after it ends when the stream
	// goes quiet.
	c = Classifier{}
	for i, l := range []string{"------------[ cut here ]------------", "WARNING: CPU: 2 PID: 1200 at kernel/trace/ftrace.c:2023 ftrace_bug+0x28a/0x2f0", "---[ end trace 5f0a0b7b1bb7bd52 ]---"} {
		if got := c.Feed(Record{Text: l, Level: levelOf(l)}, time.Unix(int64(i), 0)); len(got) != 0 {
			t.Fatalf("ended at %q", l)
		}
	}
	if got := c.Flush(time.Unix(60, 0)); len(got) != 1 || got[0].Kind != KindWarning {
		t.Fatalf("flush: %v", kindsOf(got))
	}
}

// A RIP the kernel can no longer name (the code was freed: "RIP:
// 0010:0x...", "Code: Bad RIP value.") and "[last unloaded: mod]" tie the
// report to mod, the patch the agent replaced and unloaded. The lines are
// the real 4.18 oops in unloaded module code (corpus
// oops-paging-request-raw-rip-unloaded-module-4.18.txt); its kept text
// has no "Modules linked in:" line, so the test adds one in
// print_modules' format (kernel/module/main.c, v6.0+ since 6f1dae1d84b6:
// " [last unloaded: %s%s]" with the module's taint letters; v4.18:
// " [last unloaded: %s]").
func TestAttributedByLastUnloaded(t *testing.T) {
	oops := []string{
		"BUG: unable to handle kernel paging request at ffffffffc0b28a5a",
		"PGD 97fe00d067 P4D 97fe00d067 PUD 97fe00f067 PMD a580cbf067 PTE 0",
		"Oops: 0010 [#1] SMP NOPTI",
		"CPU: 63 PID: 664 Comm: kworker/63:1 Kdump: loaded Not tainted 4.18.0.x86_64 #46",
		"Workqueue: events 0xffffffffc0b28a40",
		"RIP: 0010:0xffffffffc0b28a5a",
		"Code: Bad RIP value.",
		"Call Trace:",
		" ? process_one_work+0x195/0x390",
		" ? worker_thread+0x30/0x390",
		"MODULES",
		"---[ end trace c82a412d93f57412 ]---",
	}
	feed := func(modules string, rip string) Event {
		var c Classifier
		var evs []Event
		for i, l := range oops {
			switch l {
			case "MODULES":
				l = modules
			case "RIP: 0010:0xffffffffc0b28a5a":
				l = rip
			}
			evs = append(evs, c.Feed(Record{Text: l, Level: levelOf(l), Source: "kmsg"}, time.Unix(int64(i), 0))...)
		}
		if len(evs) != 1 {
			t.Fatalf("events %v", kindsOf(evs))
		}
		return evs[0]
	}
	for _, tc := range []struct {
		name, modules, rip, suspect string
		want                        bool
	}{
		{"4.18 form", "Modules linked in: ipmi_si klp_cmdline_2(OEK) [last unloaded: klp_cmdline_1]", "RIP: 0010:0xffffffffc0b28a5a", "klp_cmdline_1", true},
		{"6.0+ form with taints", "Modules linked in: ipmi_si klp_cmdline_2(OEK) [last unloaded: klp_cmdline_1(OEK)]", "RIP: 0010:0xffffffffc0b28a5a", "klp_cmdline_1", true},
		{"the live patch is not the unloaded one", "Modules linked in: ipmi_si klp_cmdline_2(OEK) [last unloaded: klp_cmdline_1(OEK)]", "RIP: 0010:0xffffffffc0b28a5a", "klp_cmdline_2", false},
		{"a named RIP is no freed code", "Modules linked in: ipmi_si klp_cmdline_2(OEK) [last unloaded: klp_cmdline_1(OEK)]", "RIP: 0010:process_one_work+0x195/0x390", "klp_cmdline_1", false},
		{"a user-mode RIP is no kernel code", "Modules linked in: ipmi_si klp_cmdline_2(OEK) [last unloaded: klp_cmdline_1(OEK)]", "RIP: 0033:0x7f99bf52fc00", "klp_cmdline_1", false},
		{"another module unloaded last", "Modules linked in: ipmi_si klp_cmdline_2(OEK) [last unloaded: ipmi_msghandler]", "RIP: 0010:0xffffffffc0b28a5a", "klp_cmdline_1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := feed(tc.modules, tc.rip)
			if got := Attributed(ev, Suspect{Name: tc.suspect}); got != tc.want {
				t.Fatalf("attributed to %s: %v, want %v (last unloaded %q, rip %+v)", tc.suspect, got, tc.want, ev.LastUnloaded, ev.RIP)
			}
			if slices.Contains(ev.Modules, ev.LastUnloaded) {
				t.Fatalf("the unloaded module %s listed as loaded: %v", ev.LastUnloaded, ev.Modules)
			}
		})
	}
}
