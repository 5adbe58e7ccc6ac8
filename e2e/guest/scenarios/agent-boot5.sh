# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Fifth boot: the manifest now offers a faulty level 4 (klp_oops_4). The
# daemon applies it; reading /proc/cmdline as "klp-trigger" oopses in the
# patch; the daemon sees the report on /dev/kmsg, attributes it to
# klp_oops_4, rolls back to level 3 and blocks it.
. /lib/agent-lib.sh
agent_disk || exit 1
agent_net || klp_fail net "no network"
# netconsole, extended (with the release prefix where the kernel has it:
# 6.1 does not), to the test's receiver on the host (10.0.2.2 is the host's
# loopback under qemu user networking).
nc_port=$(cat /etc/netconsole-port)
mkdir -p /sys/kernel/config
mount -t configfs none /sys/kernel/config 2>/dev/null
NC=/sys/kernel/config/netconsole/e2e
if mkdir "$NC" && echo eth0 >"$NC/dev_name" && echo 10.0.2.2 >"$NC/remote_ip" && echo "$nc_port" >"$NC/remote_port" &&
	echo 52:55:0a:00:02:02 >"$NC/remote_mac" && echo 1 >"$NC/extended" &&
	{ [ ! -e "$NC/release" ] || echo 1 >"$NC/release"; } && echo 1 >"$NC/enabled"; then
	klp_pass netconsole "target 10.0.2.2:$nc_port extended$([ -e "$NC/release" ] && echo +release)"
else
	klp_fail netconsole "configfs target setup failed"
fi
agent_start agent-boot5.log
oops4() { grep -q '"phase": "soaking"' /var/lib/klp-agent/state.json && grep -q '"name": "klp_oops_4"' /var/lib/klp-agent/state.json && [ "$(klp_level)" = 4 ]; }
if klp_wait 120 oops4; then
	klp_pass applied-oops-4 "level 4 soaking"
else
	klp_fail applied-oops-4 "level $(klp_level): $($A status | tr '\n' ' ')"
	agent_stop
	agent_end
	exit 1
fi
t0=$(klp_cs)
klp_trigger_read >/dev/null 2>&1
if klp_wait 60 level_is 3; then
	klp_pass auto-rollback "back to level 3 $(klp_since "$t0")s after the oops"
else
	klp_fail auto-rollback "level $(klp_level): $($A status | tr '\n' ' ')"
fi
st=$($A status --json)
case $st in
*'"name": "klp_oops_4"'*'"reason": "oops attributed to klp_oops_4'*) klp_pass blocked-oops-4 "$(echo "$st" | grep -m1 '"reason": "oops')" ;;
*) klp_fail blocked-oops-4 "$(echo "$st" | tr -d '\n')" ;;
esac
grep -q "KLP_ATTRIBUTED.: true" /mnt/disk/agent-boot5.log && klp_pass attributed "$(grep -m1 'kmsg oops report' /mnt/disk/agent-boot5.log)" || klp_fail attributed "no attributed report in the log"
agent_stop
agent_end
