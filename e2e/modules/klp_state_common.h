/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared body for the klp_state_v1 / klp_state_v2 test livepatches.
 *
 * The including file defines KLPT_STATE_VERSION (and nothing else).
 * Both variants are cumulative (.replace = true) and declare the same
 * system state id with a different version.  The kernel's
 * klp_is_patch_compatible() refuses to enable a cumulative patch whose
 * version of an already-installed state is lower, so loading v2 and
 * then v1 must fail with -EINVAL ("state downgrade").
 */
#ifndef KLPT_STATE_COMMON_H
#define KLPT_STATE_COMMON_H

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

#ifndef KLPT_STATE_VERSION
#error "KLPT_STATE_VERSION must be defined before including klp_state_common.h"
#endif

/* Any non-zero id; id 0 terminates the states array. */
#define KLPT_STATE_ID 1UL

#define KLPT_STR2(x) #x
#define KLPT_STR(x) KLPT_STR2(x)

static int klpt_state_cmdline_show(struct seq_file *m, void *v)
{
	seq_printf(m, "klp-test marker: klp_state_v%u (state id %lu, version %u)\n",
		   KLPT_STATE_VERSION, KLPT_STATE_ID, KLPT_STATE_VERSION);
	return 0;
}

static struct klp_func klpt_funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = klpt_state_cmdline_show,
	},
	{ }
};

static struct klp_object klpt_objs[] = {
	{
		.funcs = klpt_funcs,
	},
	{ }
};

static struct klp_state klpt_states[] = {
	{
		.id = KLPT_STATE_ID,
		.version = KLPT_STATE_VERSION,
	},
	{ }
};

static struct klp_patch klpt_patch = {
	.mod = THIS_MODULE,
	.objs = klpt_objs,
	.states = klpt_states,
	.replace = true,
};

static int __init klpt_state_init(void)
{
	pr_info("registering cumulative test patch with state %lu version %u\n",
		KLPT_STATE_ID, KLPT_STATE_VERSION);
	return klp_enable_patch(&klpt_patch);
}

static void __exit klpt_state_exit(void)
{
}

module_init(klpt_state_init);
module_exit(klpt_state_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-agent test livepatch: klp_state id 1 version "
		   KLPT_STR(KLPT_STATE_VERSION));
MODULE_INFO(livepatch, "Y");

#endif /* KLPT_STATE_COMMON_H */
