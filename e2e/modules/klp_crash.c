// SPDX-License-Identifier: GPL-2.0
/*
 * klp_crash: a livepatch of cmdline_proc_show() that produces real kernel
 * crash reports on demand, for klp-agent's health-monitor tests.
 *
 * /proc/cmdline reads "<original command line> klp_crash=1". The writable
 * parameter /sys/module/klp_crash/parameters/mode selects what happens
 * when, and only when, a task whose comm is exactly "klp-trigger" reads it:
 *
 *   none    nothing (default)
 *   gpf     load through a non-canonical pointer: "general protection
 *           fault, probably for non-canonical address 0xdead...", oops
 *   divide  integer division by a runtime zero: "divide error: 0000", oops
 *   bug     BUG(): "kernel BUG at klp_crash.c:N!", "invalid opcode", oops
 *   warn    WARN(): "WARNING: CPU: N PID: N at ..."; the reader goes on
 *   hang    sleep TASK_UNINTERRUPTIBLE for hang_secs seconds; with
 *           kernel.hung_task_timeout_secs below that, the hung-task
 *           detector reports "INFO: task klp-trigger:PID blocked for more
 *           than N seconds."; then the read completes
 *   lockup  spin with preemption disabled for spin_secs seconds; with
 *           kernel.watchdog_thresh below half of that, the soft-lockup
 *           detector reports "watchdog: BUG: soft lockup - CPU#N stuck for
 *           Ns! [klp-trigger:PID]"; then the read completes
 *
 * Each fault happens in a noinline helper of this module, called from the
 * patched function with work after the call (no tail call), so the RIP
 * and the call trace name " [klp_crash]". An oops kills only the reader
 * (Debian does not set PANIC_ON_OOPS).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/livepatch.h>
#include <linux/moduleparam.h>
#include <linux/module.h>
#include <linux/preempt.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/string.h>

#define KLP_CRASH_TRIGGER_COMM "klp-trigger"

static char mode[16] = "none";
module_param_string(mode, mode, sizeof(mode), 0644);
MODULE_PARM_DESC(mode, "none|gpf|divide|bug|warn|hang|lockup: what a klp-trigger read of /proc/cmdline does");

static unsigned int hang_secs = 8;
module_param(hang_secs, uint, 0644);
MODULE_PARM_DESC(hang_secs, "seconds mode=hang sleeps uninterruptibly (default 8)");

static unsigned int spin_secs = 8;
module_param(spin_secs, uint, 0644);
MODULE_PARM_DESC(spin_secs, "seconds mode=lockup spins with preemption disabled (default 8)");

/*
 * volatile: the compiler can neither fold the division nor prove the
 * pointer bad, so the real instructions run.
 */
static volatile unsigned long klp_crash_zero;
static unsigned long *volatile klp_crash_bad_ptr = (unsigned long *)0xdead000000000100UL;

/* saved_command_line: not exported; see klp_cmdline.c. */
static char **klp_saved_command_line;

static unsigned long klp_lookup_name(const char *name)
{
	typedef unsigned long (*lookup_fn)(const char *);
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	lookup_fn lookup;

	if (register_kprobe(&kp) < 0)
		return 0;
	lookup = (lookup_fn)kp.addr;
	unregister_kprobe(&kp);
	return lookup ? lookup(name) : 0;
}

static bool klp_crash_is_trigger(void)
{
	char comm[TASK_COMM_LEN];

	get_task_comm(comm, current);
	return strcmp(comm, KLP_CRASH_TRIGGER_COMM) == 0;
}

static noinline unsigned long klp_crash_gpf(void)
{
	unsigned long *p = klp_crash_bad_ptr;
	unsigned long v;

	pr_info("loading from %px for %s[%d]\n", p, current->comm, task_pid_nr(current));
	v = READ_ONCE(*p);
	pr_info("load from %px returned %lx\n", p, v);
	return v;
}

static noinline unsigned long klp_crash_divide(void)
{
	unsigned long n = task_pid_nr(current), d = klp_crash_zero;

	pr_info("dividing %lu by %lu for %s[%d]\n", n, d, current->comm, task_pid_nr(current));
	n /= d;
	pr_info("division returned %lu\n", n);
	return n;
}

static noinline unsigned long klp_crash_bug(void)
{
	pr_info("BUG() for %s[%d]\n", current->comm, task_pid_nr(current));
	BUG_ON(klp_crash_zero == 0);
	pr_info("BUG() returned\n");
	return 0;
}

static noinline unsigned long klp_crash_warn(void)
{
	/* Every trigger warns (not once per boot), so tests can repeat it. */
	WARN(1, "%s: deliberate warning for %s[%d]\n", KBUILD_MODNAME,
	     current->comm, task_pid_nr(current));
	return 0;
}

static noinline unsigned long klp_crash_hang(unsigned int secs)
{
	unsigned long deadline = jiffies + (unsigned long)secs * HZ;

	pr_info("sleeping uninterruptibly for %us for %s[%d]\n", secs, current->comm,
		task_pid_nr(current));
	/* One sleep: a wakeup would reset the hung-task detector's count. */
	while (time_before(jiffies, deadline))
		schedule_timeout_uninterruptible(deadline - jiffies);
	pr_info("slept %us\n", secs);
	return 0;
}

static noinline unsigned long klp_crash_lockup(unsigned int secs)
{
	unsigned long deadline = jiffies + (unsigned long)secs * HZ;
	unsigned long spins = 0;

	pr_info("spinning with preemption disabled for %us for %s[%d]\n", secs,
		current->comm, task_pid_nr(current));
	/*
	 * Interrupts stay on (jiffies advances, the watchdog's hrtimer runs),
	 * but this CPU's watchdog stopper thread cannot: a soft lockup. The
	 * loop is inline here, so the interrupted RIP is in this function.
	 */
	preempt_disable();
	while (time_before(READ_ONCE(jiffies), deadline)) {
		cpu_relax();
		spins++;
	}
	preempt_enable();
	pr_info("spun %us (%lu loops)\n", secs, spins);
	return spins;
}

static noinline unsigned long klp_crash_fire(void)
{
	char m[sizeof(mode)];
	unsigned long r = 0;

	kernel_param_lock(THIS_MODULE);
	strscpy(m, mode, sizeof(m));
	kernel_param_unlock(THIS_MODULE);

	if (sysfs_streq(m, "gpf"))
		r = klp_crash_gpf();
	else if (sysfs_streq(m, "divide"))
		r = klp_crash_divide();
	else if (sysfs_streq(m, "bug"))
		r = klp_crash_bug();
	else if (sysfs_streq(m, "warn"))
		r = klp_crash_warn();
	else if (sysfs_streq(m, "hang"))
		r = klp_crash_hang(READ_ONCE(hang_secs));
	else if (sysfs_streq(m, "lockup"))
		r = klp_crash_lockup(READ_ONCE(spin_secs));
	else if (!sysfs_streq(m, "none") && m[0] != '\0')
		pr_warn("unknown mode '%s'\n", m);
	/* Work after the calls: no tail call, this frame stays on the stack. */
	barrier();
	return r;
}

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	/*
	 * The result is used after the call, so klp_crash_fire() and the
	 * helper it calls stay on the stack (and in the report).
	 */
	unsigned long r = 0;

	if (klp_crash_is_trigger())
		r = klp_crash_fire();
	seq_puts(m, READ_ONCE(*klp_saved_command_line));
	seq_puts(m, " klp_crash=1\n");
	/* Never true (r is a pid quotient, a spin count or 0): keeps r live. */
	if (r == ULONG_MAX)
		pr_info("fired: %lu\n", r);
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = livepatch_cmdline_proc_show,
	},
	{}
};

static struct klp_object objs[] = {
	{
		/* name == NULL: vmlinux */
		.funcs = funcs,
	},
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.replace = true,
};

static int __init klp_crash_init(void)
{
	klp_saved_command_line = (char **)klp_lookup_name("saved_command_line");
	if (!klp_saved_command_line || !*klp_saved_command_line) {
		pr_err("cannot find saved_command_line\n");
		return -ENOENT;
	}
	return klp_enable_patch(&patch);
}

static void __exit klp_crash_exit(void)
{
}

module_init(klp_crash_init);
module_exit(klp_crash_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-agent e2e: livepatch of cmdline_proc_show that crashes on demand");
MODULE_INFO(livepatch, "Y");
