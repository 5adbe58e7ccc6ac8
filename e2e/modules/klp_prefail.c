// SPDX-License-Identifier: GPL-2.0
/*
 * klp_prefail - klp-agent test livepatch whose vmlinux pre-patch
 * callback always fails.
 *
 * klp_enable_patch() runs the pre_patch callback of every loaded
 * object before redirecting any function.  Returning an error there
 * makes the kernel log "pre-patch callback failed for object 'vmlinux'",
 * cancel the transition and hand the error back from module init, so
 * finit_module()/insmod fail with ENODEV and /proc/cmdline is never
 * changed.  The replacement function below only exists so the patch is
 * well-formed; its marker must never be visible.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

static int klpt_prefail_cmdline_show(struct seq_file *m, void *v)
{
	seq_puts(m, "klp-test marker: klp_prefail (MUST NOT BE VISIBLE)\n");
	return 0;
}

static int klpt_prefail_pre_patch(struct klp_object *obj)
{
	pr_info("pre_patch callback for %s: refusing with -ENODEV\n",
		obj->name ? obj->name : "vmlinux");
	return -ENODEV;
}

static void klpt_prefail_post_unpatch(struct klp_object *obj)
{
	/* Not expected to run: post_unpatch is skipped when pre_patch fails. */
	pr_info("post_unpatch callback for %s\n",
		obj->name ? obj->name : "vmlinux");
}

static struct klp_func klpt_funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = klpt_prefail_cmdline_show,
	},
	{ }
};

static struct klp_object klpt_objs[] = {
	{
		.funcs = klpt_funcs,
		.callbacks = {
			.pre_patch = klpt_prefail_pre_patch,
			.post_unpatch = klpt_prefail_post_unpatch,
		},
	},
	{ }
};

static struct klp_patch klpt_patch = {
	.mod = THIS_MODULE,
	.objs = klpt_objs,
	.replace = true,
};

static int __init klpt_prefail_init(void)
{
	return klp_enable_patch(&klpt_patch);
}

static void __exit klpt_prefail_exit(void)
{
}

module_init(klpt_prefail_init);
module_exit(klpt_prefail_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-agent test livepatch: pre-patch callback returns -ENODEV");
MODULE_INFO(livepatch, "Y");
