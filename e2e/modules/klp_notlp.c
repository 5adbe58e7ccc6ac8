// SPDX-License-Identifier: GPL-2.0
/*
 * klp_notlp: an ordinary module with no MODULE_INFO(livepatch). Packaged
 * like a livepatch, it must be refused by klp-agent.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>

static int __init klp_notlp_init(void)
{
	pr_info("loaded (not a livepatch)\n");
	return 0;
}

static void __exit klp_notlp_exit(void)
{
}

module_init(klp_notlp_init);
module_exit(klp_notlp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klp-agent e2e: a module that is not a livepatch");
