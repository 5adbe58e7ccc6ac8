# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Second boot, no network: the daemon re-applies its good level from the
# RPM kept in its state dir before its first poll (which fails).
. /lib/agent-lib.sh
agent_disk || exit 1
[ "$(klp_level)" = none ] || klp_fail fresh-boot "a livepatch is active before the agent ran"
agent_start agent-boot2.log
if klp_wait 60 level_is 3; then
	klp_pass reapplied-3 "$($A status | tr '\n' ' ')"
else
	klp_fail reapplied-3 "level $(klp_level)"
fi
# Re-applied before the first poll (which cannot reach the server).
klp_wait 30 grep -q "manifest poll failed" /mnt/disk/agent-boot2.log
first=$(grep -n -m1 -e "re-applied klp_cmdline_3" -e "manifest poll failed" /mnt/disk/agent-boot2.log)
case $first in
*re-applied*) klp_pass before-poll "$first" ;;
*) klp_fail before-poll "first of re-apply/poll in the log: '$first'" ;;
esac
agent_stop
agent_end
