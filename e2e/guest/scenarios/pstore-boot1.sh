# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# First boot of the pstore test: ramoops is set up (no kdump on this host),
# the daemon applies the faulty level 3 (klp_oops_3), and while it soaks a
# read of /proc/cmdline as "klp-trigger" oopses in the patch. With
# panic_on_oops the kernel panics at once: the daemon never sees the report,
# the kernel writes it to ramoops, and the machine resets.
. /lib/agent-lib.sh
. /lib/pstore-lib.sh
agent_disk || exit 1
agent_net || klp_fail net "no network"
pstore_setup || exit 1
if [ -n "$(ls /sys/fs/pstore)" ]; then
	klp_fail pstore-empty "records before the crash: $(ls /sys/fs/pstore | tr '\n' ' ')"
fi
agent_start pstore-boot1.log
oops3() { grep -q '"phase": "soaking"' /var/lib/klp-agent/state.json && grep -q '"name": "klp_oops_3"' /var/lib/klp-agent/state.json && [ "$(klp_level)" = 3 ]; }
if klp_wait 120 oops3; then
	klp_pass applied-oops-3 "level 3 soaking"
else
	klp_fail applied-oops-3 "level $(klp_level): $($A status | tr '\n' ' ')"
	agent_stop
	agent_end
	exit 1
fi
sync
echo 1 >/proc/sys/kernel/panic_on_oops
echo "KLP-E2E: note oopsing in klp_oops_3 with panic_on_oops"
klp_trigger_read >/dev/null 2>&1
klp_fail panic "the kernel survived the oops"
