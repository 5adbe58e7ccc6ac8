// SPDX-License-Identifier: GPL-2.0
/*
 * klp_victim: an ordinary (non-livepatch) module for the stalled-transition
 * test. Reading /proc/klp_victim sleeps sleep_secs seconds inside
 * klp_victim_sleep(), which klp_stall patches. A livepatch transition cannot
 * switch a task whose stack contains a patched function, so while a reader
 * sleeps here, enabling klp_stall stays in transition.
 *
 * The read returns what klp_victim_sleep() returned: "slept", "interrupted"
 * or, once klp_stall is active, klp_stall's text.
 *
 * interruptible=0 (default) sleeps TASK_KILLABLE: only SIGKILL ends it, so
 * the kernel's fake signals (sent after ~15 s of transition) do not
 * unblock the stall (checked: still in transition after 20 s).
 * interruptible=1 lets those fake signals end the sleep, to exercise the
 * kernel's own unblocking (checked: the transition completes ~15 s in).
 * Both are runtime-writable in /sys/module/klp_victim/parameters/. What the
 * interrupted reader gets depends on its read path: "interrupted", or with
 * sendfile (busybox cat) a transparently restarted read that already runs
 * the patched function.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/seq_file.h>

static unsigned int sleep_secs = 30;
module_param(sleep_secs, uint, 0644);
MODULE_PARM_DESC(sleep_secs, "seconds a read of /proc/klp_victim sleeps (default 30)");

static bool interruptible;
module_param(interruptible, bool, 0644);
MODULE_PARM_DESC(interruptible, "sleep interruptibly, so livepatch fake signals end it (default 0)");

/*
 * Exported and noinline so it stays a real, uniquely named function in
 * kallsyms (no .constprop/.isra clone) that livepatch can find; the work
 * after the sleep keeps the call from becoming a tail call, so this frame
 * is on the sleeping task's stack. The prototype is for -Wmissing-prototypes
 * (on by default since 6.8).
 */
const char *klp_victim_sleep(unsigned int secs);
noinline const char *klp_victim_sleep(unsigned int secs)
{
	unsigned long deadline = jiffies + (unsigned long)secs * HZ;

	while (time_before(jiffies, deadline)) {
		if (READ_ONCE(interruptible)) {
			schedule_timeout_interruptible(deadline - jiffies);
			if (signal_pending(current))
				return "interrupted";
		} else {
			schedule_timeout_killable(deadline - jiffies);
			if (fatal_signal_pending(current))
				return "interrupted";
		}
	}
	return "slept";
}
EXPORT_SYMBOL_GPL(klp_victim_sleep);

static int klp_victim_show(struct seq_file *m, void *v)
{
	unsigned int secs = READ_ONCE(sleep_secs);
	const char *res;

	pr_info("%s[%d] sleeps %u s\n", current->comm, task_pid_nr(current), secs);
	res = klp_victim_sleep(secs);
	seq_printf(m, "%s\n", res);
	return 0;
}

static int __init klp_victim_init(void)
{
	if (!proc_create_single("klp_victim", 0444, NULL, klp_victim_show))
		return -ENOMEM;
	return 0;
}

static void __exit klp_victim_exit(void)
{
	remove_proc_entry("klp_victim", NULL);
}

module_init(klp_victim_init);
module_exit(klp_victim_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-agent e2e: sleeps in klp_victim_sleep() to stall a livepatch transition");
