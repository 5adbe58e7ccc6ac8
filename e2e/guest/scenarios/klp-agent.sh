# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# The klp package on a real kernel, driven through the agent's binary
# (klp-agent klp apply|disable|list) inside a busybox guest with the real
# rpm. Each step prints "KLP-E2E: <name> PASS|FAIL detail"; timings print
# as "KLP-E2E: time <name> ..." for the Go test to report.
. /lib/klp-e2e.sh
A=/usr/bin/klp-agent
R=/rpms
KREL=$(uname -r)
export HOME=/root
# The real rpm (the test puts it in /usr/local/bin) before busybox's applet;
# busybox ash prefers its own applets, so the scenario names it in full.
export PATH=/usr/local/bin:$PATH
RPM=/usr/local/bin/rpm

klp_rpm_initdb $RPM

# --- refusals, before anything is loaded --------------------------------
if klp_run refuse-kernel $A klp apply --rpm "$R/klp-cmdline-1-1.otherkrel.x86_64.rpm"; then
	klp_fail refuse-kernel "accepted an RPM for another kernel: $(klp_oneline refuse-kernel)"
elif grep -q "kernel release mismatch" "/tmp/refuse-kernel.out" && [ -z "$(ls $KLP_LP)" ] && ! $RPM -q klp-cmdline >/dev/null 2>&1; then
	klp_pass refuse-kernel "$(klp_oneline refuse-kernel)"
else
	klp_fail refuse-kernel "$(klp_oneline refuse-kernel)"
fi
if klp_run refuse-notlp $A klp apply --rpm "$R/klp-notlp-1-1.x86_64.rpm"; then
	klp_fail refuse-notlp "accepted a non-livepatch module: $(klp_oneline refuse-notlp)"
elif grep -q "not a livepatch" "/tmp/refuse-notlp.out" && klp_module_gone klp_notlp && ! $RPM -q klp-notlp >/dev/null 2>&1; then
	klp_pass refuse-notlp "$(klp_oneline refuse-notlp)"
else
	klp_fail refuse-notlp "$(klp_oneline refuse-notlp)"
fi

# --- cumulative levels by atomic replace ---------------------------------
# apply NAME RPM LEVEL [PREV PREVRPM]: the agent applies; userspace must see
# LEVEL and PREV's module must be gone. PREVRPM is the running level's RPM,
# which rpm gets back if the kernel refuses this one (without it, an upgrade
# of the running livepatch's package is refused).
apply() {
	local name=$1 rpmf=$2 level=$3 prev=${4:-} prevrpm=${5:-}
	if ! klp_run "$name" $A klp apply --rpm "$R/$rpmf" ${prevrpm:+--previous-rpm "$R/$prevrpm"}; then
		klp_fail "$name" "$(klp_oneline "$name")"
		return
	fi
	local got
	got=$(klp_level)
	if [ "$got" != "$level" ]; then
		klp_fail "$name" "/proc/cmdline shows level $got, want $level"
		return
	fi
	if [ -n "$prev" ] && ! klp_module_gone "$prev"; then
		klp_fail "$name" "replaced module $prev still loaded"
		return
	fi
	klp_pass "$name" "$(klp_oneline "$name")"
	echo "KLP-E2E: time $name $(sed -n 's/.*verified->transition 0: \([0-9.]*ms\).*/\1/p' "/tmp/$name.out")"
}
apply enable-1 klp-cmdline-1-1.x86_64.rpm 1
# What this kernel shows per patch: 6.1 has no replace, 6.11+ does (6.12:
# klp_cmdline_1 replace=1), stack_order comes with 6.14. The Go test pins
# which line shows what; klp_stall (replace=false) is read below.
klp_attr() {
	if [ -e "$KLP_LP/$1/$2" ]; then
		echo "$2=$(klp_read "$KLP_LP/$1/$2")"
	else
		echo "$2=absent"
	fi
}
attrs_1="klp_cmdline_1 $(klp_attr klp_cmdline_1 replace) $(klp_attr klp_cmdline_1 stack_order) files=$(echo $(ls $KLP_LP/klp_cmdline_1) | tr ' ' ',')"
apply upgrade-2 klp-cmdline-2-1.x86_64.rpm 2 klp_cmdline_1 klp-cmdline-1-1.x86_64.rpm
apply upgrade-3 klp-cmdline-3-1.x86_64.rpm 3 klp_cmdline_2 klp-cmdline-2-1.x86_64.rpm
apply stepback-2 klp-cmdline-2-1.x86_64.rpm 2 klp_cmdline_3 klp-cmdline-3-1.x86_64.rpm
if [ "$($RPM -q --qf '%{VERSION}' klp-cmdline)" = 2 ]; then
	klp_pass stepback-rpm "rpm database holds klp-cmdline 2 after the downgrade"
else
	klp_fail stepback-rpm "rpm -q klp-cmdline: $($RPM -q klp-cmdline 2>&1)"
fi

# --- disable to none --------------------------------------------------------
if klp_run disable $A klp disable klp_cmdline_2 && [ "$(klp_level)" = none ] && klp_module_gone klp_cmdline_2 && [ -z "$(ls $KLP_LP)" ]; then
	klp_pass disable "$(klp_oneline disable)"
else
	klp_fail disable "level $(klp_level): $(klp_oneline disable)"
fi

# --- kpatch-patch layout ----------------------------------------------------
set -- "$R"/kpatch-patch-*.rpm
if klp_run kpatch $A klp apply --nodeps --rpm "$1" &&
	[ "$(klp_level)" = 1 ] && [ -d $KLP_LP/kpatch_cmdline_1 ]; then
	klp_pass kpatch "$(klp_oneline kpatch)"
	if ! klp_run kpatch-disable $A klp disable kpatch_cmdline_1; then
		klp_fail kpatch-disable "$(klp_oneline kpatch-disable); livepatches: $(ls $KLP_LP); refcnt $(klp_read /sys/module/kpatch_cmdline_1/refcnt)"
	fi
else
	klp_fail kpatch "$(klp_oneline kpatch)"
fi

# --- stalled transition: reversed within the timeout, blocker named ---------
insmod /klp/klp_victim.ko sleep_secs=20 || klp_fail stall "insmod klp_victim failed"
# The reader sleeps inside klp_victim_sleep(), the function klp_stall
# patches; its comm is "cat" once exec'd.
cat /proc/klp_victim >/tmp/victim.out 2>&1 &
reader=$!
sleep 1
t0=$(klp_cs)
if klp_run stall $A klp apply --transition-timeout 3s --rpm "$R/klp-stall-1-1.x86_64.rpm"; then
	klp_fail stall "stalled transition reported success: $(klp_oneline stall)"
else
	secs=$(klp_since "$t0")
	if grep -q "transition stalled" /tmp/stall.out && grep -q "cat (pid $reader tid $reader)" /tmp/stall.out &&
		grep -q "klp_victim_sleep" /tmp/stall.out && klp_patch_gone klp_stall && klp_module_gone klp_stall; then
		klp_pass stall "reversed and unloaded after ${secs}s: $(klp_oneline stall)"
	else
		klp_fail stall "after ${secs}s (reader pid $reader): $(klp_oneline stall); livepatches: $(ls $KLP_LP) modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
	fi
fi
kill "$reader" 2>/dev/null
wait "$reader" 2>/dev/null

# --- EBUSY: load while another patch's transition runs -----------------------
echo 30 >/sys/module/klp_victim/parameters/sleep_secs
cat /proc/klp_victim >/tmp/victim2.out 2>&1 &
reader=$!
sleep 1
# A stalled klp_stall transition, started by hand: the reader sleeps in
# klp_victim_sleep() until it is killed.
$RPM -U --replacepkgs "$R/klp-stall-1-1.x86_64.rpm"
insmod "/usr/lib/klp-agent/livepatches/$KREL/klp_stall.ko"
if [ "$(klp_read $KLP_LP/klp_stall/transition)" != 1 ]; then
	klp_fail ebusy "klp_stall transition did not stall"
fi
attrs_stall="klp_stall $(klp_attr klp_stall replace) $(klp_attr klp_stall stack_order)"
# The agent's apply runs meanwhile: rpm -U, then finit_module answers EBUSY
# and the agent retries. Once rpm has installed its module the load is
# milliseconds away; a second later (several retries) the reader is killed,
# the stall ends and a retry loads. No timing of the guest's speed matters.
klp_run ebusy $A klp apply --rpm "$R/klp-cmdline-1-1.x86_64.rpm" &
apply=$!
i=0
while [ ! -f "/usr/lib/klp-agent/livepatches/$KREL/klp_cmdline_1.ko" ] && [ $i -lt 600 ]; do
	sleep 0.1
	i=$((i + 1))
done
sleep 1
kill -9 "$reader" 2>/dev/null
if wait "$apply" && grep -q "EBUSY retries" /tmp/ebusy.out && [ "$(klp_level)" = 1 ]; then
	klp_pass ebusy "$(klp_oneline ebusy)"
else
	klp_fail ebusy "level $(klp_level): $(klp_oneline ebusy)"
fi
wait "$reader" 2>/dev/null
$A klp disable klp_cmdline_1 >/dev/null 2>&1
rmmod klp_stall 2>/dev/null
$RPM -e --nodeps klp-stall >/dev/null 2>&1

# --- the floor: bare rpm -U && insmod && wait, in this same guest ------------
for lvl in 1 2 3; do
	t0=$(klp_cs)
	$RPM -U --replacepkgs --oldpackage "$R/klp-cmdline-$lvl-1.x86_64.rpm" &&
		insmod "/usr/lib/klp-agent/livepatches/$KREL/klp_cmdline_$lvl.ko" &&
		klp_wait 60 klp_transition_done "klp_cmdline_$lvl"
	echo "KLP-E2E: time bare-$lvl $(($(klp_cs) - t0))0ms"
	[ "$(klp_level)" = "$lvl" ] || klp_fail bare "bare level $lvl not visible"
	prev=$((lvl - 1))
	[ $prev = 0 ] || klp_rmmod "klp_cmdline_$prev"
done
klp_run list $A klp list --json
# The agent reports replace where the kernel has it (6.11+), and only there.
if [ -e $KLP_LP/klp_cmdline_3/replace ]; then
	want_replace='"replace": true'
	grep -q "$want_replace" /tmp/list.out
else
	want_replace='no "replace"'
	! grep -q '"replace"' /tmp/list.out
fi
replace_ok=$?
if grep -q '"name": "klp_cmdline_3"' /tmp/list.out && grep -q '"enabled": true' /tmp/list.out && [ $replace_ok = 0 ]; then
	klp_pass list-foreign "a livepatch the agent did not load is listed: $(klp_oneline list)"
else
	klp_fail list-foreign "want $want_replace: $(klp_oneline list)"
fi

# --- the sysfs attributes seen, for the Go test to check per kernel line -------
case "$attrs_1 $attrs_stall" in
*"replace=absent"*"replace=absent"* | *"replace=1"*"replace=1"*)
	klp_pass sysfs-attrs "$attrs_1; $attrs_stall" ;;
*) klp_fail sysfs-attrs "two replace=true patches read $attrs_1; $attrs_stall" ;;
esac
[ "$KLP_FAILED" = 0 ]
