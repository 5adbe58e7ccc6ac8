# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# First boot of a fresh host: the daemon polls the signed manifest from
# nginx on the host, applies level 2 (the highest it may have), soaks it,
# then upgrades to level 3 once 3's rollout starts; stopped cleanly.
. /lib/agent-lib.sh
agent_disk || exit 1
agent_net || klp_fail net "no network"
agent_start agent-boot1.log
if klp_wait 90 level_is 2; then
	klp_pass applied-2 "$($A status | tr '\n' ' ')"
else
	klp_fail applied-2 "level $(klp_level)"
fi
if klp_wait 120 level_is 3; then
	klp_pass upgraded-3 "$($A status | tr '\n' ' ')"
else
	klp_fail upgraded-3 "level $(klp_level): $($A status | tr '\n' ' ')"
fi
agent_stop
[ "$AGENT_RC" = 0 ] && klp_pass clean-stop "exit 0 on SIGTERM" || klp_fail clean-stop "exit $AGENT_RC"
$A status --json >/mnt/disk/status-boot1.json
echo "KLP-E2E: note status $(tr -d '\n' </mnt/disk/status-boot1.json)"
agent_end
