# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Third boot: the good level 3 is re-applied, the manifest now offers level
# 4 and the daemon applies it; while 4 soaks the kernel crashes (sysrq c).
# The next boot must not re-apply 4.
. /lib/agent-lib.sh
agent_disk || exit 1
agent_net || klp_fail net "no network"
agent_start agent-boot3.log
if klp_wait 120 level_is 4; then
	klp_pass applied-4 "$($A status | tr '\n' ' ')"
else
	klp_fail applied-4 "level $(klp_level): $($A status | tr '\n' ' ')"
	agent_stop
	agent_end
	exit 1
fi
# /proc/cmdline changes as the transition starts; the agent records
# "soaking" once it is complete.
soaking4() { grep -q '"phase": "soaking"' /var/lib/klp-agent/state.json && grep -q '"name": "klp_warn_4"' /var/lib/klp-agent/state.json; }
if klp_wait 60 soaking4; then
	klp_pass soaking-4 "state says level 4 is soaking"
else
	klp_fail soaking-4 "$(tr -d '\n' </var/lib/klp-agent/state.json)"
fi
sync
# The guest's own clock (TCG guests drift from the host's): the test stamps
# the kdump-tools dump it leaves with it, as the capture kernel would.
echo "KLP-E2E: crash-at PASS $(date +%s)"
echo "KLP-E2E: note crashing the kernel while level 4 soaks"
echo c >/proc/sysrq-trigger
