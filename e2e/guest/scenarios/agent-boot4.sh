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
# rollback is still in flight. The stop may land before the rollback's
# rpm -U (the rollback stays recorded and the next start finishes it) or
# while it runs (the stop waits for it), never inside it: rpm killed
# inside its transaction would leave klp-cmdline 3 and 4 both installed.
agent_stop
q=$($RPM --dbpath /var/lib/rpm -q klp-cmdline 2>/dev/null)
ph=$(sed -n 's/^ *"phase": "\([a-z-]*\)".*/\1/p' /var/lib/klp-agent/state.json | head -n 1)
case $(echo "$q" | wc -l):$ph:$q in
1:good:klp-cmdline-3-*) klp_pass stop-consistent "rollback done before the stop: $q" ;;
1:rolling-back:klp-cmdline-[34]-*) klp_pass stop-consistent "stopped inside the rollback, recorded for the next start: $q" ;;
*) klp_fail stop-consistent "phase '$ph', rpm -q klp-cmdline: $(echo "$q" | tr '\n' ' ')" ;;
esac
agent_end
