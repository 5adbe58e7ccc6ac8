package health

import (
	"regexp"
	"strings"
)

// The kernel's report headers: each a printk format anchored at the start
// of the record text, with the printk level the kernel prints it at. A
// report opens only on a kernel record (facility 0) whose text matches a
// whole header at no less urgent a level than the kernel uses: the kernel
// logs text users control (a segfaulting task's comm starts an INFO line,
// an OOM-killed one a WARNING-level line), so a substring is never enough.
// Sources: the kernel's own format strings, 4.18 to 6.19 (x86_64, arm64);
// docs/health.md lists them with versions and real samples.

// Printk levels.
const (
	levelEmerg   = 0
	levelAlert   = 1
	levelCrit    = 2
	levelErr     = 3
	levelWarn    = 4
	levelDefault = 4 // KERN_DEFAULT is stored as default_message_loglevel, 4 unless changed
	levelInfo    = 6
)

// role says how a header relates to a report already open.
type role int

const (
	// opens a report of its own, closing any open one (the zero role).
	_ role = iota
	// die is the x86/arm64 die() header: it completes a report a page
	// fault or BUG line opened just before (same incident), else opens one.
	roleDie
	// cut is "cut here", printed before a BUG or WARNING: it opens a
	// report the BUG or WARNING line then completes.
	roleCut
	// ftrace is ftrace_bug()'s block (5.8+): the function ftrace failed
	// to patch, printed before its "cut here" and WARNING. Like cut, it
	// is no report without its WARNING; its "cut here" continues it.
	roleFtrace
)

type header struct {
	name     string // for docs and tests
	kind     Kind
	re       *regexp.Regexp
	maxLevel int // the least urgent level the kernel prints it at
	role     role
	// sanitizer reports (KASAN, KFENCE, KMSAN, UBSAN) are framed by
	// "=====" lines; the closing one ends them.
	sanitizer bool
}

// x86 die() strings (arch/x86/kernel/traps.c, arch/x86/mm/fault.c): the
// header is "<str>: <err> [#<n>]<flags>", with "Oops: " before it since
// 6.10, and flags in capitals (PREEMPT SMP KASAN NOPTI ...), which a comm
// cannot forge: the die header's own fields end where a comm-first line
// would continue in lower case or with "[pid]".
const dieStrings = `Oops|general protection fault|segment-related general protection fault|invalid opcode|divide(?: |_)error|` +
	`stack segment|double fault|kernel stack overflow \((?:double-fault|page fault)\)|stack guard page|segment not present|invalid TSS|overflow|bounds|` +
	`coprocessor segment overrun|int3|fpu exception|simd exception|Bad pagetable|unexpected #NM exception|` +
	`machine check|alignment check|control protection fault|missing ENDBR: [A-Za-z0-9_.]+\+0x[0-9a-f]+/0x[0-9a-f]+`

// ptrPat is a %p the kernel printed: hashed, raw (no_hash_pointers), or
// not yet hashable early in boot.
const ptrPat = `(?:[0-9a-f]{8,16}|\(____ptrval____\))`

var headers = []header{
	// x86: the die header, 4.18 through 6.19; the kind is settled by what
	// came before it (a BUG line makes it a kernel-bug report).
	{name: "x86 die", kind: KindOops, maxLevel: levelDefault, role: roleDie,
		re: regexp.MustCompile(`^(?:Oops: )?(?:` + dieStrings + `)(?:, [^:\[\]]{1,120})?: [0-9a-f]{4} \[#\d+\](?: [A-Z][A-Z0-9_]*)*$`)},
	// x86 page faults, 5.1+ and 4.18-5.0 forms: the first line of an
	// oops, whose die header follows.
	{name: "x86 NULL pointer", kind: KindOops, maxLevel: levelAlert,
		re: regexp.MustCompile(`^BUG: kernel NULL pointer dereference, address: (?:0x)?[0-9a-f]+$`)},
	{name: "x86 page fault", kind: KindOops, maxLevel: levelAlert,
		re: regexp.MustCompile(`^BUG: unable to handle page fault for address: (?:0x)?[0-9a-f]+$`)},
	{name: "x86 page fault (4.x)", kind: KindOops, maxLevel: levelAlert,
		re: regexp.MustCompile(`^BUG: unable to handle kernel (?:NULL pointer dereference|paging request) at (?:\(null\)|(?:0x)?[0-9a-f]+)$`)},
	// x86 kernel stack overflow (CONFIG_VMAP_STACK, handle_stack_overflow
	// in arch/x86/kernel/traps.c): "BUG: stack guard page was hit at %p
	// (stack is %p..%p)" in mainline to 5.15, then (44b979fa302c, 5.16, and
	// stable backports) "BUG: %s stack guard page ..." with the stack's type
	// (TASK, IRQ, SOFTIRQ, NMI, #DF, ...), at KERN_EMERG. Its die header
	// follows: "kernel stack overflow (page fault|double-fault)" before
	// it, "stack guard page" with it.
	{name: "x86 stack guard page", kind: KindOops, maxLevel: levelEmerg,
		re: regexp.MustCompile(`^BUG: (?:[A-Z0-9_#]{2,16} |\(null\) )?stack guard page was hit at ` + ptrPat + ` \(stack is ` + ptrPat + `\.\.` + ptrPat + `\)$`)},
	// arm64.
	{name: "arm64 die", kind: KindOops, maxLevel: levelEmerg, role: roleDie,
		re: regexp.MustCompile(`^Internal error: (?:Oops|Oops - [A-Za-z0-9 ()_-]+|[A-Za-z0-9 ()_-]+): (?:0x)?[0-9a-f]+ \[#\d+\](?:  ?[A-Z][A-Z0-9_]*)*$`)},
	// arm64 kernel stack overflow (CONFIG_VMAP_STACK, 4.14+:
	// handle_bad_stack, later panic_bad_stack, pr_emerg in
	// arch/arm64/kernel/traps.c): the stacks and registers follow, then
	// "Kernel panic - not syncing: kernel stack overflow".
	{name: "arm64 stack overflow", kind: KindOops, maxLevel: levelEmerg,
		re: regexp.MustCompile(`^Insufficient stack space to handle exception!$`)},
	{name: "arm64 fault", kind: KindOops, maxLevel: levelAlert,
		re: regexp.MustCompile(`^Unable to handle kernel [a-z -]+ at virtual address [0-9a-f]+$`)},
	// BUG() and WARN().
	{name: "cut here", kind: KindWarning, maxLevel: levelWarn, role: roleCut,
		re: regexp.MustCompile(`^------------\[ cut here \]------------$`)},
	// ftrace_bug() (kernel/trace/ftrace.c, pr_info): since 5.8 it names
	// the function it failed to patch before its WARNING.
	{name: "ftrace bug", kind: KindWarning, maxLevel: levelInfo, role: roleFtrace,
		re: regexp.MustCompile(`^------------\[ ftrace bug \]------------$`)},
	{name: "kernel BUG", kind: KindKernelBug, maxLevel: levelCrit,
		re: regexp.MustCompile(`^(?:kernel BUG at [^ ]+:\d+!|Kernel BUG at .+ \[verbose debug info unavailable\])$`)},
	{name: "WARNING", kind: KindWarning, maxLevel: levelWarn,
		re: regexp.MustCompile(`^WARNING: (?:CPU: \d+ PID: \d+ at \S|(?:\[.*\] )?\S+:\d+ at \S.*, CPU#\d+: .*/\d+$|at \S+, CPU#\d+: .*/\d+$)`)},
	{name: "lockdep", kind: KindWarning, maxLevel: levelWarn,
		re: regexp.MustCompile(`^WARNING: (?:possible circular locking dependency detected|possible recursive locking detected|inconsistent lock state|` +
			`suspicious RCU usage|possible irq lock inversion dependency detected|bad unlock balance detected!|held lock freed!|` +
			`lock held when returning to user space!|bad contention detected!|nested lock was not taken|` +
			`(?:HARDIRQ|SOFTIRQ)-(?:safe|READ-safe) -> (?:HARDIRQ|SOFTIRQ)-(?:unsafe|READ-unsafe) lock order detected)$`)},
	// Sanitizers.
	{name: "KASAN/KFENCE/KMSAN/KCSAN", kind: KindBug, maxLevel: levelErr, sanitizer: true,
		re: regexp.MustCompile(`^BUG: (?:KASAN|KFENCE|KMSAN|KCSAN): [a-z-]+`)},
	{name: "UBSAN", kind: KindBug, maxLevel: levelErr, sanitizer: true,
		re: regexp.MustCompile(`^UBSAN: (?:Undefined behaviour in \S+:\d+:\d+|[a-z-]+ in \S+:\d+:\d+)$`)},
	// Other BUGs with a fixed shape.
	{name: "scheduling while atomic", kind: KindBug, maxLevel: levelErr,
		re: regexp.MustCompile(`^BUG: scheduling while atomic: .{1,64}/\d+/0x[0-9a-f]+$`)},
	{name: "sleeping in atomic", kind: KindBug, maxLevel: levelErr,
		re: regexp.MustCompile(`^BUG: sleeping function called from invalid context at \S+:\d+$`)},
	{name: "bad page", kind: KindBug, maxLevel: levelAlert,
		re: regexp.MustCompile(`^BUG: Bad (?:page state in process .{1,64}  ?pfn:[0-9a-f]+|page map in process .+|rss-counter state mm:\S+ .+)$`)},
	{name: "workqueue lockup", kind: KindBug, maxLevel: levelEmerg,
		re: regexp.MustCompile(`^BUG: workqueue lockup - pool `)},
	{name: "spinlock", kind: KindBug, maxLevel: levelEmerg,
		re: regexp.MustCompile(`^BUG: (?:spinlock|rwlock) [a-z ]+ on CPU#\d+, `)},
	// Panics, lockups, hung tasks, RCU stalls: one event each.
	{name: "panic", kind: KindPanic, maxLevel: levelEmerg,
		re: regexp.MustCompile(`^Kernel panic - not syncing: `)},
	{name: "soft lockup", kind: KindSoftLockup, maxLevel: levelEmerg,
		re: regexp.MustCompile(`^(?:NMI )?watchdog: BUG: soft lockup - CPU#\d+ stuck for \d+s! \[.*:\d+\]$`)},
	{name: "hard lockup", kind: KindHardLockup, maxLevel: levelEmerg,
		re: regexp.MustCompile(`^(?:NMI watchdog: |watchdog: )?(?:CPU\d+: )?Watchdog detected hard LOCKUP on cpu \d+`)},
	{name: "hung task", kind: KindHungTask, maxLevel: levelErr,
		re: regexp.MustCompile(`^INFO: task .{1,64}:\d+ blocked (?:in I/O wait )?for more than \d+ seconds\.$`)},
	// RCU stalls: tree RCU's, and RCU Tasks' ("INFO: rcu_tasks detected
	// stalls on tasks:", pr_err, in kernel/rcu/update.c up to 5.7, then
	// kernel/rcu/tasks.h, with rcu_tasks_trace's from 5.8).
	{name: "RCU stall", kind: KindRCUStall, maxLevel: levelErr,
		re: regexp.MustCompile(`^(?:rcu: )?INFO: [a-z_]+ (?:detected stalls on CPUs/tasks:|self-detected stall on CPU|detected expedited stalls on CPUs/tasks: )`)},
	{name: "RCU Tasks stall", kind: KindRCUStall, maxLevel: levelErr,
		re: regexp.MustCompile(`^(?:rcu: )?INFO: rcu_tasks(?:_trace)? detected stalls on tasks:$`)},
}

// matchHeader finds the header text opens at level (-1: the source does
// not say, as a kdump dmesg file does not).
func matchHeader(text string, level int) (*header, bool) {
	// Trailing blanks only: a header starts the record.
	t := strings.TrimRight(text, " \t\r")
	for i := range headers {
		h := &headers[i]
		if level >= 0 && level > h.maxLevel {
			continue
		}
		if h.re.MatchString(t) {
			return h, true
		}
	}
	return nil, false
}
