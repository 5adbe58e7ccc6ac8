# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Power cuts during an apply. With klp_e2e.cut=STEP on the command line the
# daemon (a klp_crashpoint build) cuts the power at STEP (sysrq b: no sync,
# no unmount); without it this is the next boot, which must resume as
# klp_e2e.expect says: "soaking" (nothing of the patch ran: apply it again)
# or "blocked" (its module was in the kernel: blame it, run no patch). The
# test reads the disk's state.json and rpm-qa.txt afterwards.
. /lib/agent-lib.sh
agent_disk || exit 1
agent_net || klp_fail net "no network"
arg() { sed -n "s/.*klp_e2e\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
cut=$(arg cut)
if [ -n "$cut" ]; then
	export KLP_AGENT_CRASHPOINT="$cut"
	if [ "$cut" = in-transition ]; then
		# klp_stall patches klp_victim_sleep(): a reader asleep in it holds
		# the transition open, so the cut comes while it runs.
		insmod /klp/klp_victim.ko sleep_secs=120 || klp_fail victim "insmod klp_victim failed"
		cat /proc/klp_victim >/dev/null 2>&1 &
		sleep 1
	fi
	agent_start powercut-cut.log
	# Reaching the end of this wait is the failure: the power stays on.
	klp_wait 150 false
	klp_fail cut "the daemon never reached $cut: $($A status | tr '\n' ' ')"
	agent_stop
	agent_end
	exit 1
fi
expect=$(arg expect)
agent_start powercut-check.log
st() { tr -d '\n ' </var/lib/klp-agent/state.json; }
soaking() { case $(st) in *'"phase":"soaking"'*) return 0 ;; esac; return 1; }
blocked() { case $(st) in *'"phase":"none"'*'"blocked":'*) return 0 ;; esac; return 1; }
if klp_wait 120 "$expect"; then
	klp_pass "$expect" "$($A status | tr '\n' ' ')"
else
	klp_fail "$expect" "$($A status | tr '\n' ' ')"
fi
# One poll later (poll_interval 10s), the manifest still offering the patch:
# a blocked one stays out, an applied one stays in.
sleep 12
klp_pass level "$(klp_level)"
$RPM --dbpath /var/lib/rpm -qa 'klp-*' >/mnt/disk/rpm-qa.txt 2>&1
klp_pass rpm-qa "$(tr '\n' ' ' </mnt/disk/rpm-qa.txt)"
agent_stop
agent_end
