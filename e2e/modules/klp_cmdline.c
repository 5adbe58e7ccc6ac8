// SPDX-License-Identifier: GPL-2.0
/*
 * Cumulative livepatch of cmdline_proc_show() for klp-agent's e2e tests.
 *
 * One source, several modules: Kbuild compiles it once per module name with
 * -DKLP_LEVEL=N (and -DKLP_FAULT=... for the faulty levels 3 and 4). Every module
 * has its own name because atomic replace loads the new level while the old
 * one is still loaded, and two modules cannot share a name.
 *
 * /proc/cmdline then reads "<original command line> klp_level=N", so
 * userspace can see which level is active.
 *
 * KLP_FAULT_OOPS / KLP_FAULT_WARN: when, and only when, a task whose comm is
 * exactly "klp-trigger" reads /proc/cmdline, dereference NULL (an oops that
 * kills just that task; Debian does not set PANIC_ON_OOPS) or emit a
 * WARNING with a stack trace. The faulting frame is in this module, so the
 * report names it (" [klp_oops_4]" / " [klp_warn_4]").
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/string.h>

#ifndef KLP_LEVEL
#error "build with -DKLP_LEVEL=N (see Kbuild)"
#endif

#define KLP_FAULT_NONE 0
#define KLP_FAULT_OOPS 1
#define KLP_FAULT_WARN 2
#ifndef KLP_FAULT
#define KLP_FAULT KLP_FAULT_NONE
#endif

#define KLP_TRIGGER_COMM "klp-trigger"

/*
 * saved_command_line is neither exported nor reachable without klp
 * relocations (which need kpatch-build/klp-convert); a one-time kallsyms
 * lookup keeps this module buildable with plain kbuild.
 */
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

#if KLP_FAULT != KLP_FAULT_NONE
static bool klp_is_trigger(void)
{
	char comm[TASK_COMM_LEN];

	get_task_comm(comm, current);
	return strcmp(comm, KLP_TRIGGER_COMM) == 0;
}

/* A separate frame, so the call trace shows this module, not just RIP. */
static noinline void klp_fault(void)
{
#if KLP_FAULT == KLP_FAULT_OOPS
	static int *volatile klp_null;

	pr_info("dereferencing NULL for %s[%d]\n", current->comm, task_pid_nr(current));
	/* The compiler cannot prove klp_null is NULL: a real store to 0. */
	WRITE_ONCE(*klp_null, KLP_LEVEL);
#elif KLP_FAULT == KLP_FAULT_WARN
	/* Every trigger warns (not once per boot), so tests can repeat it. */
	WARN(1, "%s: deliberate warning for %s[%d]\n", KBUILD_MODNAME,
	     current->comm, task_pid_nr(current));
#else
#error "unknown KLP_FAULT"
#endif
}
#endif

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
#if KLP_FAULT != KLP_FAULT_NONE
	if (klp_is_trigger())
		klp_fault();
#endif
	seq_puts(m, READ_ONCE(*klp_saved_command_line));
	seq_printf(m, " klp_level=%d\n", KLP_LEVEL);
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
	/* Cumulative: this level replaces every older level atomically. */
	.replace = true,
};

static int __init klp_cmdline_init(void)
{
	klp_saved_command_line = (char **)klp_lookup_name("saved_command_line");
	if (!klp_saved_command_line || !*klp_saved_command_line) {
		pr_err("cannot find saved_command_line\n");
		return -ENOENT;
	}
	return klp_enable_patch(&patch);
}

static void __exit klp_cmdline_exit(void)
{
}

module_init(klp_cmdline_init);
module_exit(klp_cmdline_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-agent e2e: cumulative livepatch of cmdline_proc_show");
MODULE_INFO(livepatch, "Y");
