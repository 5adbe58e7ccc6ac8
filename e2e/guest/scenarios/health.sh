# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Real crash reports for the health monitor: the klp_crash livepatch
# (installed with the real rpm, loaded by `klp-agent klp apply`) makes the
# kernel print each kind of report once, from inside the module:
#   crash-warn crash-hang crash-lockup crash-gpf crash-divide crash-bug
# Then unprivileged decoys (/usr/local/bin/segv, uid 65534) segfault under
# comms that look like report headers. Last, the whole kernel log with its
# "<prio>" prefixes (busybox dmesg -r) goes to the console between
# "KLP-E2E: dmesg-begin" and "KLP-E2E: dmesg-end", each line prefixed
# "KLP-DMESG: " so kernel console output interleaved with it is not taken.
. /lib/klp-e2e.sh
A=/usr/bin/klp-agent
R=/rpms
SEGV=/usr/local/bin/segv
P=/sys/module/klp_crash/parameters
K=/proc/sys/kernel
export HOME=/root
export PATH=/usr/local/bin:$PATH
RPM=/usr/local/bin/rpm

mkdir -p /var/lib/rpm /root /usr/lib/klp-agent
# rpm's disk space check refuses the initramfs root (it reports no free
# space); installed modules go to a tmpfs, as in agent-lib.sh.
mount -t tmpfs tmpfs /usr/lib/klp-agent
if ! $RPM --initdb >/tmp/initdb.out 2>&1; then
	klp_fail rpm-initdb "rpm --initdb: $(tr '\n' ' ' </tmp/initdb.out)"
fi

# --- the kernel must survive every report: nothing may panic -----------------
settings=
for f in panic_on_oops panic_on_warn softlockup_panic hung_task_panic hardlockup_panic \
	panic_on_rcu_stall watchdog soft_watchdog nmi_watchdog watchdog_thresh \
	hung_task_timeout_secs hung_task_check_interval_secs hung_task_warnings \
	printk printk_ratelimit printk_ratelimit_burst tainted; do
	settings="$settings $f=$(tr '\t' ',' <"$K/$f" 2>/dev/null || echo absent)"
done
klp_note "sysctl before:$settings"
ok=1
for f in panic_on_oops panic_on_warn softlockup_panic hung_task_panic; do
	v=$(cat "$K/$f" 2>/dev/null || echo absent)
	[ "$v" = 0 ] || ok=0
done
if [ $ok = 1 ]; then
	klp_pass sysctl-nopanic "$settings"
else
	klp_fail sysctl-nopanic "a report would panic:$settings"
fi

# --- install and enable klp_crash through the agent ----------------------------
if $A klp apply --rpm "$R/klp-crash-1-1.x86_64.rpm" >/tmp/apply.out 2>&1 &&
	[ "$(klp_read $KLP_LP/klp_crash/enabled)" = 1 ] && klp_transition_done klp_crash &&
	grep -q ' klp_crash=1$' /proc/cmdline; then
	klp_pass apply "$(tr '\n' ' ' </tmp/apply.out)"
else
	klp_fail apply "$(tr '\n' ' ' </tmp/apply.out); cmdline: $(cat /proc/cmdline)"
	exit 1
fi
# A normal reader gets the patched text and no report, whatever the mode.
w0=$(klp_dmesg_count ' [klp_crash]')
echo gpf >$P/mode
out=$(cat /proc/cmdline)
echo none >$P/mode
if [ "${out% klp_crash=1}" != "$out" ] && [ "$(klp_dmesg_count ' [klp_crash]')" = "$w0" ]; then
	klp_pass normal-reader "cat /proc/cmdline with mode=gpf: '$out'"
else
	klp_fail normal-reader "cat /proc/cmdline with mode=gpf: '$out'"
fi

# --- detectors: a 2 s hung-task timeout, a 2 s soft-lockup threshold --------
echo 2 >$K/hung_task_timeout_secs
[ ! -e $K/hung_task_check_interval_secs ] || echo 1 >$K/hung_task_check_interval_secs
echo 1 >$K/watchdog_thresh
klp_note "detectors: hung_task_timeout_secs=$(cat $K/hung_task_timeout_secs)" \
	"hung_task_check_interval_secs=$(cat $K/hung_task_check_interval_secs 2>/dev/null || echo absent)" \
	"watchdog_thresh=$(cat $K/watchdog_thresh) watchdog=$(cat $K/watchdog)" \
	"soft_watchdog=$(cat $K/soft_watchdog) nmi_watchdog=$(cat $K/nmi_watchdog 2>/dev/null || echo absent)"

dmesg_lines() { dmesg | wc -l; }
# report_after N PATTERN: the first line matching PATTERN (fixed string)
# after the kernel log's first N lines.
report_after() { dmesg | tail -n +"$(($1 + 1))" | grep -F -m1 -- "$2"; }
has_report() { [ -n "$(report_after "$1" "$2")" ]; }
# frames_after N PATTERN: lines naming [klp_crash] in the 80 lines from
# PATTERN's report on.
frames_after() {
	dmesg | tail -n +"$(($1 + 1))" | awk -v p="$2" 'index($0, p) { on = 1 } on && n++ < 80' |
		grep -F ' [klp_crash]' | sed 's/^\[ *[0-9.]*\] *//' | tr '\n' '|'
}

# crash MODE PATTERN SURVIVES WAIT_SECS: trigger MODE, wait up to WAIT_SECS
# for the PATTERN line, then for the reader. SURVIVES=1: the read must
# complete with the patched text; 0: the kernel must kill the reader.
crash() {
	local mode=$1 pat=$2 survives=$3 wait=$4 step="crash-$1" n0 t0 pid rc line frames out secs
	n0=$(dmesg_lines)
	CRASH_N0=$n0
	t0=$(klp_cs)
	echo "$mode" >$P/mode
	klp_trigger_read >"/tmp/$step.out" 2>&1 &
	pid=$!
	klp_wait "$wait" has_report "$n0" "$pat"
	secs=$(klp_since "$t0")
	wait "$pid"
	rc=$?
	echo none >$P/mode
	line=$(report_after "$n0" "$pat")
	frames=$(frames_after "$n0" "$pat")
	out=$(cat "/tmp/$step.out")
	if [ -z "$line" ]; then
		klp_fail "$step" "no '$pat' in the kernel log after ${secs}s (reader rc=$rc out='$out')"
	elif [ -z "$frames" ]; then
		klp_fail "$step" "'$line' names no [klp_crash] frame"
	elif [ "$survives" = 1 ] && { [ $rc != 0 ] || [ "${out% klp_crash=1}" = "$out" ]; }; then
		klp_fail "$step" "reader did not survive: rc=$rc out='$out'; '$line'"
	elif [ "$survives" = 0 ] && [ $rc -lt 128 ]; then
		klp_fail "$step" "reader was not killed: rc=$rc out='$out'; '$line'"
	else
		klp_pass "$step" "after ${secs}s, reader rc=$rc: '$line' frames: $frames"
	fi
}

# Order matters: once an oops has tainted the kernel D (TAINT_DIE), 6.1's
# khungtaskd stops reporting (check_hung_uninterruptible_tasks() returns
# early: "the system crashed already"), so the hang comes before the oopses.
crash warn 'WARNING: CPU: ' 1 20
hang=$(cat $P/hang_secs)
crash hang 'INFO: task klp-trigger:' 1 $((hang + 20))
spin=$(cat $P/spin_secs)
crash lockup 'watchdog: BUG: soft lockup - CPU#' 1 $((spin + 20))
crash gpf 'general protection fault, probably for non-canonical address 0xdead000000000100' 0 20
crash divide 'divide error: 0000' 0 20
crash bug 'kernel BUG at ' 0 20
# On x86 BUG() is ud2: the die() header follows the BUG line.
line=$(report_after "$CRASH_N0" 'invalid opcode: 0000')
if [ -n "$line" ]; then
	klp_pass crash-bug-die "'$line'"
else
	klp_fail crash-bug-die "no 'invalid opcode: 0000' after the BUG line"
fi

# The same hang once the kernel is tainted D: the hung-task detector stays
# silent (what a health monitor sees on a real host after an oops). 6.1
# repeats the report at every check while the task stays blocked, each
# spending one of hung_task_warnings: restore them so silence is not that.
echo 10 >$K/hung_task_warnings
echo 5 >$P/hang_secs
n0=$(dmesg_lines)
echo hang >$P/mode
klp_trigger_read >/tmp/hang2.out 2>&1
rc=$?
echo none >$P/mode
echo "$hang" >$P/hang_secs
line=$(report_after "$n0" 'INFO: task ')
if [ -z "$line" ] && [ $rc = 0 ] && [ $(($(cat $K/tainted) & 128)) != 0 ]; then
	klp_pass hang-silent-after-oops "5 s in D after the oopses (tainted=$(cat $K/tainted), hung_task_warnings=$(cat $K/hung_task_warnings)): no hung-task report"
else
	klp_fail hang-silent-after-oops "rc=$rc tainted=$(cat $K/tainted): '$line'"
fi
klp_note "tainted=$(cat $K/tainted) after the crashes"

# Back to the defaults, so a slow TCG moment later is not reported.
echo 120 >$K/hung_task_timeout_secs
[ ! -e $K/hung_task_check_interval_secs ] || echo 0 >$K/hung_task_check_interval_secs
echo 10 >$K/watchdog_thresh

# --- decoys: user processes named like report headers ---------------------------
# show_signal_msg() and the traps line are printk_ratelimit()ed (10 per
# 5 s): no rate limit here, so every decoy logs.
echo 0 >$K/printk_ratelimit
n0=$(dmesg_lines)
nd=0
for name in "Oops: 0000 [#1]" "detected stalls" "BUG: kernel NUL" "Kernel panic - " \
	"WARNING: CPU: 0" "INFO: task x:1 " "kernel BUG at x" " [klp_crash]" "general protect" \
	"divide error: 0" "watchdog: BUG: " "rcu: INFO: rcu_"; do
	$SEGV 65534 "$name"
	rc=$?
	nd=$((nd + 1))
	[ $rc = 139 ] || klp_fail decoy-segv "'$name': exit $rc, want 139 (SIGSEGV)"
done
$SEGV 65534 "divide error: 0" div
rc=$?
nd=$((nd + 1))
[ $rc = 136 ] || klp_fail decoy-traps "exit $rc, want 136 (SIGFPE)"
nseg=$(dmesg | tail -n +"$((n0 + 1))" | grep -c ']: segfault at 0 ip ')
ntrap=$(dmesg | tail -n +"$((n0 + 1))" | grep -c '^.*traps: divide error: 0\[[0-9]*\] trap divide error ')
if [ "$nseg" = 12 ] && [ "$ntrap" = 1 ]; then
	klp_pass decoys "$nd decoys: $nseg segfault lines, $ntrap traps line"
else
	klp_fail decoys "$nd decoys: $nseg segfault lines (want 12), $ntrap traps lines (want 1)"
fi

# --- the whole kernel log, raw ----------------------------------------------------
echo "KLP-E2E: dmesg-begin"
dmesg -r | sed 's/^/KLP-DMESG: /'
echo "KLP-E2E: dmesg-end"

[ "$KLP_FAILED" = 0 ]
