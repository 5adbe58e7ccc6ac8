// SPDX-License-Identifier: GPL-2.0
/*
 * klp_nonreplace - klp-agent test livepatch (non-cumulative).
 *
 * Replaces cmdline_proc_show() so that /proc/cmdline prints a fixed
 * marker line.  The patch is registered with .replace = false, so it
 * stacks on top of any livepatches that are already enabled instead of
 * atomically replacing them.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

#define KLPT_MARKER "klp-test marker: klp_nonreplace (replace=false)"

static int klpt_nonreplace_cmdline_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", KLPT_MARKER);
	return 0;
}

static struct klp_func klpt_funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = klpt_nonreplace_cmdline_show,
	},
	{ }
};

static struct klp_object klpt_objs[] = {
	{
		/* .name == NULL means vmlinux */
		.funcs = klpt_funcs,
	},
	{ }
};

static struct klp_patch klpt_patch = {
	.mod = THIS_MODULE,
	.objs = klpt_objs,
	.replace = false,
};

static int __init klpt_nonreplace_init(void)
{
	pr_info("registering non-replace test patch\n");
	return klp_enable_patch(&klpt_patch);
}

static void __exit klpt_nonreplace_exit(void)
{
}

module_init(klpt_nonreplace_init);
module_exit(klpt_nonreplace_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-agent test livepatch: non-cumulative (replace=false)");
MODULE_INFO(livepatch, "Y");
