# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Guest half of the demo (e2e/demo.sh): the agent's binary applies real
# cumulative livepatch RPMs to the running Debian kernel and shows what
# userspace sees after each step. Each upgrade names the running level's RPM
# (--previous-rpm), which rpm gets back if the kernel refuses the new one. Markers: "KLP-E2E: <step> PASS|FAIL".
. /lib/klp-e2e.sh
export PATH=/usr/local/bin:$PATH HOME=/root
A=/usr/bin/klp-agent
R=/rpms
mkdir -p /var/lib/rpm /root
/usr/local/bin/rpm --initdb >/dev/null 2>&1
echo "DEMO: kernel $(uname -r), /proc/cmdline: $(cat /proc/cmdline)"
step() {
	local name=$1 want=$2
	shift 2
	if out=$("$@" 2>&1) && [ "$(klp_level)" = "$want" ]; then
		klp_pass "$name" "$out"
		echo "DEMO: $name -> /proc/cmdline: $(cat /proc/cmdline)"
	else
		klp_fail "$name" "level $(klp_level): $out"
	fi
}
# pin LEVEL: the sha256 and size the signed manifest pins for LEVEL.
pin() { awk -v l="$1" '$1 == l { printf "--sha256 %s --size %s", $2, $3 }' $R/pins; }
# shellcheck disable=SC2046 # pin prints separate words on purpose
step apply-level-1 1 $A klp apply $(pin 1) --rpm $R/klp-cmdline-1-1.x86_64.rpm
# shellcheck disable=SC2046
step upgrade-to-2 2 $A klp apply $(pin 2) --rpm $R/klp-cmdline-2-1.x86_64.rpm --previous-rpm $R/klp-cmdline-1-1.x86_64.rpm
# shellcheck disable=SC2046
step upgrade-to-3 3 $A klp apply $(pin 3) --rpm $R/klp-cmdline-3-1.x86_64.rpm --previous-rpm $R/klp-cmdline-2-1.x86_64.rpm
# shellcheck disable=SC2046
step step-back-to-2 2 $A klp apply $(pin 2) --rpm $R/klp-cmdline-2-1.x86_64.rpm --previous-rpm $R/klp-cmdline-3-1.x86_64.rpm
echo "DEMO: livepatches: $($A klp list | tr '\n' ';')"
step disable none $A klp disable klp_cmdline_2
[ "$KLP_FAILED" = 0 ]
