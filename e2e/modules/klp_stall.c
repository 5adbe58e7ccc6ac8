// SPDX-License-Identifier: GPL-2.0
/*
 * klp_stall: livepatch of klp_victim_sleep() in the module klp_victim.
 * Its transition cannot finish while a task sleeps in the old
 * klp_victim_sleep(), which is the stalled-transition test.
 *
 * Cumulative (.replace = true) like every patch the agent takes: a
 * non-cumulative one is refused before its transition could stall (on 6.12
 * by the replace attribute). The scenarios load it with no other patch
 * enabled.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/livepatch.h>
#include <linux/module.h>

static const char *livepatch_klp_victim_sleep(unsigned int secs)
{
	return "patched by klp_stall";
}

static struct klp_func funcs[] = {
	{
		.old_name = "klp_victim_sleep",
		.new_func = livepatch_klp_victim_sleep,
	},
	{}
};

static struct klp_object objs[] = {
	{
		.name = "klp_victim",
		.funcs = funcs,
	},
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.replace = true,
};

static int __init klp_stall_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit klp_stall_exit(void)
{
}

module_init(klp_stall_init);
module_exit(klp_stall_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-agent e2e: livepatch of klp_victim_sleep whose transition stalls");
MODULE_INFO(livepatch, "Y");
