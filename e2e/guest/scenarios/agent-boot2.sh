# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Second boot, no network: the daemon re-applies its soaking level 3 from
# the RPM kept in its state dir before its first poll (which fails); a dump
# an unprivileged user planted in /var/crash does not block it.
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
# The test planted a dump in /var/crash owned by uid 65534, newer than 3's
# apply, with an oops in klp_cmdline_3: not root's, so ignored and named.
l=$(grep -m1 "kdump scan failed: .*untrusted dump ignored" /mnt/disk/agent-boot2.log)
[ -n "$l" ] && klp_pass untrusted-dump-ignored "$l" || klp_fail untrusted-dump-ignored "no 'untrusted dump ignored' in the log"
st=$($A status --json)
case $st in
*'"blocked": []'*) klp_pass not-blocked-3 "nothing blocked" ;;
*) klp_fail not-blocked-3 "$(echo "$st" | tr -d '\n')" ;;
esac
agent_stop
agent_end
