# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Fourth boot, after the crash: the agent blocks level 4 (it was soaking
# and the boot did not end with a clean stop) and applies level 3.
. /lib/agent-lib.sh
agent_disk || exit 1
agent_start agent-boot4.log
if klp_wait 60 level_is 3; then
	klp_pass back-to-3 "$($A status | tr '\n' ' ')"
else
	klp_fail back-to-3 "level $(klp_level): $($A status | tr '\n' ' ')"
fi
st=$($A status --json)
case $st in
*'"name": "klp_warn_4"'*'"reason": "previous boot crashed while it was soaking"'*) klp_pass blocked-4 "$(echo "$st" | tr -d '\n')" ;;
*) klp_fail blocked-4 "$(echo "$st" | tr -d '\n')" ;;
esac
# The kdump-tools layout dump the host left (as the capture kernel would)
# is recognised and its cause recorded as evidence.
case $st in
*'"kdump /var/crash/'*'/dmesg.'*': panic: Kernel panic - not syncing: sysrq triggered crash'*) klp_pass kdump-evidence "$(echo "$st" | grep -m1 'kdump /var/crash')" ;;
*) klp_fail kdump-evidence "no kdump evidence in $(echo "$st" | tr -d '\n' | cut -c1-600)" ;;
esac
grep -q "blocked klp_warn_4@4" /mnt/disk/agent-boot4.log && klp_pass journal-blocked "$(grep -m1 'blocked klp_warn_4@4' /mnt/disk/agent-boot4.log)" || klp_fail journal-blocked "no 'blocked' log line"
# Stopped as soon as level 3 is in the kernel, which is often while the
# rollback's rpm -U still runs: the stop waits for it. rpm killed inside
# its transaction would leave klp-cmdline 3 and 4 both installed.
agent_stop
q=$($RPM --dbpath /var/lib/rpm -q klp-cmdline 2>/dev/null)
if [ "$(echo "$q" | wc -l)" = 1 ] && [ "${q#klp-cmdline-3-}" != "$q" ]; then
	klp_pass rpm-one-instance "$q"
else
	klp_fail rpm-one-instance "rpm -q klp-cmdline: $(echo "$q" | tr '\n' ' ')"
fi
grep -q '"phase": "good"' /var/lib/klp-agent/state.json && klp_pass settled "state says good after the stop" || klp_fail settled "$(tr -d '\n' </var/lib/klp-agent/state.json | cut -c1-400)"
agent_end
