# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Second boot of the pstore test, without network: the kernel's ramoops
# record of the panic is under /sys/fs/pstore before the daemon starts. The
# daemon must block klp_oops_3 with the record named as the cause and leave
# the kernel without a patch.
. /lib/agent-lib.sh
. /lib/pstore-lib.sh
agent_disk || exit 1
pstore_setup || exit 1
recs=$(ls /sys/fs/pstore | tr '\n' ' ')
case $recs in
*dmesg-ramoops-*) klp_pass pstore-record "$recs" ;;
*) klp_fail pstore-record "no dmesg record in /sys/fs/pstore: '$recs'" ;;
esac
# The records, for the test to read (and keep as a real sample).
mkdir -p /mnt/disk/pstore && cp /sys/fs/pstore/* /mnt/disk/pstore/ 2>/dev/null
agent_start pstore-boot2.log
blocked3() { $A status --json 2>/dev/null | grep -q '"name": "klp_oops_3"' && grep -q '"blocked"' /var/lib/klp-agent/state.json; }
if klp_wait 60 blocked3; then
	klp_pass blocked-3 "level $(klp_level)"
else
	klp_fail blocked-3 "level $(klp_level): $($A status | tr '\n' ' ')"
fi
sleep 2
if [ "$(klp_level)" = none ]; then
	klp_pass no-patch "the kernel runs no livepatch"
else
	klp_fail no-patch "level $(klp_level) live"
fi
$A status --json >/mnt/disk/status-pstore-boot2.json 2>&1
agent_stop
agent_end
