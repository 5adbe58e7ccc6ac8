# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# The health monitor on the real kernel, through the running daemon. In one
# boot, without a disk (the state dir lives in the initramfs):
#   a. the daemon, with the default health policy and a netconsole receiver
#      that allows only 10.0.2.2, applies klp_crash level 1 from the signed
#      manifest on the host's nginx and soaks it (apply.soak 1h);
#   b. decoys it must not act on: unprivileged processes (segv, uid 65534)
#      that segfault or trap under names like report headers, and forged
#      extended-netconsole datagrams (an oops in [klp_crash]) sent from
#      inside the guest to 127.0.0.1:6666: no health event at all, the patch
#      still soaking, nothing blocked;
#   c. a reload to a policy that only observes, then each klp_crash report
#      (warn, hang, lockup, gpf, divide, bug): each must be an event of its
#      kind attributed to klp_crash, every hung-task report its own event;
#   d. the daemon stopped, its status --json between "KLP-E2E: status-begin"
#      and "status-end" ("KLP-STATUS: " lines) and the whole kernel log,
#      raw (busybox dmesg -r, "<prio>" prefixes), between "KLP-E2E:
#      dmesg-begin" and "dmesg-end" ("KLP-DMESG: " lines), so kernel console
#      output interleaved with either is not taken.
. /lib/agent-lib.sh
AGENT_LOG_DIR=/tmp
LOG=/tmp/agent-health.log
SEGV=/usr/local/bin/segv
P=/sys/module/klp_crash/parameters
K=/proc/sys/kernel

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

# --- a. the daemon applies klp_crash and soaks it ---------------------------------
agent_rpm
agent_net || klp_fail net "no network"
agent_start agent-health.log
soaking() {
	grep -q '"phase": "soaking"' /var/lib/klp-agent/state.json 2>/dev/null &&
		grep -q '"name": "klp_crash"' /var/lib/klp-agent/state.json &&
		[ "$(klp_read $KLP_LP/klp_crash/enabled)" = 1 ] && klp_transition_done klp_crash &&
		grep -q ' klp_crash=1$' /proc/cmdline
}
if klp_wait 120 soaking; then
	klp_pass applied "$($A status | tr '\n' ' ')"
else
	klp_fail applied "$($A status | tr '\n' ' ')"
	agent_stop
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
# The netconsole receiver's socket (port 6666 = 1A0A; Go listens on a
# dual-stack socket for 0.0.0.0): "queues drops" of it.
nc_socket() { grep -h ':1A0A ' /proc/net/udp /proc/net/udp6 2>/dev/null | awk '{ print $5, $NF }'; }
if klp_wait 30 test -n "$(nc_socket)"; then
	klp_pass netconsole-listening "tx:rx queues, drops: $(nc_socket)"
else
	klp_fail netconsole-listening "no socket on port 6666: $(cat /proc/net/udp /proc/net/udp6 2>/dev/null | tr '\n' '|')"
fi

# status_events: the daemon's recent health events from status --json, one
# per line: kind|source|attributed|patch|rolled_back|header
status_events() {
	$A status --json | awk '
		function val(s) { sub(/^ *"[a-z_]*": /, "", s); sub(/,$/, "", s); gsub(/^"|"$/, "", s); return s }
		/^  "events": \[$/ { on = 1; next }
		on && /^  \]/ { on = 0 }
		!on { next }
		/^    \{/ { k = src = h = p = a = r = "" }
		/^      "kind": / { k = val($0) }
		/^      "source": / { src = val($0) }
		/^      "header": / { h = val($0) }
		/^      "patch": / { p = val($0) }
		/^      "attributed": / { a = val($0) }
		/^      "rolled_back": / { r = val($0) }
		/^    \}/ { print k "|" src "|" a "|" p "|" r "|" h }'
}
# log_events: health event lines in the daemon's log (each has KLP_EVENT_KIND).
log_events() { grep -c '"KLP_EVENT_KIND": ' $LOG; }

# --- b. decoys: nothing here is the kernel's report ------------------------------
# show_signal_msg() and the traps line are printk_ratelimit()ed (10 per
# 5 s): no rate limit here, so every decoy logs.
echo 0 >$K/printk_ratelimit
n0=$(dmesg | wc -l)
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
# A local user forges netconsole: extended records of the kernel's facility
# claiming an oops in [klp_crash] (the test's /etc/klp-e2e/spoof.txt, one
# datagram a line), to the daemon's port from 127.0.0.1, not an allowed
# sender.
if out=$($SEGV udp 65534 127.0.0.1 6666 /etc/klp-e2e/spoof.txt 2>&1); then
	klp_pass spoof-sent "$out"
else
	klp_fail spoof-sent "$out"
fi
sleep 5
ne=$(log_events)
ev=$(status_events)
st=$($A status --json)
sock=$(nc_socket)
case $st in
*'"phase": "soaking"'*'"name": "klp_crash"'*'"blocked": []'*) st_ok=1 ;;
*) st_ok=0 ;;
esac
if [ "$ne" = 0 ] && [ -z "$ev" ] && [ $st_ok = 1 ] && [ "${sock% *}" = 00000000:00000000 ] && [ "${sock#* }" = 0 ] &&
	[ "$(klp_read $KLP_LP/klp_crash/enabled)" = 1 ]; then
	klp_pass decoys-ignored "no health event, klp_crash soaking, nothing blocked; netconsole socket drained (queues, drops: $sock)"
else
	klp_fail decoys-ignored "$ne event lines in the log: $(grep '"KLP_EVENT_KIND": ' $LOG | tr '\n' '|'); status events: $(echo "$ev" | tr '\n' '|'); socket: $sock; status: $(echo "$st" | tr -d '\n' | cut -c1-800)"
fi

# --- c. observe only, then every report ----------------------------------------
mkdir -p /etc/klp-agent/config.d
cat >/etc/klp-agent/config.d/50-observe.yaml <<'EOF'
health:
  policy:
    attributed: []
    soak_unattributed: []
    thresholds: {}
EOF
reloaded() { grep -q 'configuration reloaded' $LOG; }
if out=$($A reload --pid "$AGENT_PID" 2>&1) && klp_wait 30 reloaded; then
	klp_pass reload-observe "$out"
else
	klp_fail reload-observe "$out; $(grep -m1 'reload' $LOG)"
fi

# Detectors: a 2 s hung-task timeout, a 2 s soft-lockup threshold.
echo 2 >$K/hung_task_timeout_secs
[ ! -e $K/hung_task_check_interval_secs ] || echo 1 >$K/hung_task_check_interval_secs
echo 1 >$K/watchdog_thresh
klp_note "detectors: hung_task_timeout_secs=$(cat $K/hung_task_timeout_secs)" \
	"hung_task_check_interval_secs=$(cat $K/hung_task_check_interval_secs 2>/dev/null || echo absent)" \
	"watchdog_thresh=$(cat $K/watchdog_thresh) watchdog=$(cat $K/watchdog)" \
	"soft_watchdog=$(cat $K/soft_watchdog) nmi_watchdog=$(cat $K/nmi_watchdog 2>/dev/null || echo absent)"

dmesg_lines() { dmesg | wc -l; }
# report_after N PATTERN: the first line matching PATTERN (fixed string)
# after the kernel log's first N lines; reports_after counts them.
report_after() { dmesg | tail -n +"$(($1 + 1))" | grep -F -m1 -- "$2"; }
reports_after() { dmesg | tail -n +"$(($1 + 1))" | grep -cF -- "$2"; }
has_report() { [ -n "$(report_after "$1" "$2")" ]; }
# frames_after N PATTERN: lines naming [klp_crash] in the 80 lines from
# PATTERN's report on.
frames_after() {
	dmesg | tail -n +"$(($1 + 1))" | awk -v p="$2" 'index($0, p) { on = 1 } on && n++ < 80' |
		grep -F ' [klp_crash]' | sed 's/^\[ *[0-9.]*\] *//' | tr '\n' '|'
}
# attributed KIND: the daemon's kmsg events of KIND attributed to klp_crash.
attributed() { grep -c "kmsg $1 report: .*\"KLP_ATTRIBUTED\": true.*\"KLP_PATCH\": \"klp_crash\"" $LOG; }
at_least() { [ "$(attributed "$1")" -ge "$2" ]; }

# crash MODE PATTERN SURVIVES WAIT_SECS KIND: trigger MODE, wait up to
# WAIT_SECS for the PATTERN line, then for the reader. SURVIVES=1: the read
# must complete with the patched text; 0: the kernel must kill the reader.
# Then the daemon must have one KIND event attributed to klp_crash per
# PATTERN line, and status must show the last one, attributed.
crash() {
	local mode=$1 pat=$2 survives=$3 wait=$4 kind=$5 step="crash-$1" n0 t0 pid rc line frames out secs a0 nrep a1 hdr last
	n0=$(dmesg_lines)
	CRASH_N0=$n0
	a0=$(attributed "$kind")
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
	# The reader is done: no more reports of this trigger come.
	nrep=$(reports_after "$n0" "$pat")
	klp_wait 20 at_least "$kind" $((a0 + nrep))
	a1=$(attributed "$kind")
	# Status has the event of this trigger's last report (by its header:
	# another task's report may come meanwhile).
	hdr=$(dmesg | tail -n +"$((n0 + 1))" | grep -F -- "$pat" | tail -n 1 | sed 's/^\[ *[0-9.]*\] //')
	last=$(status_events | awk -F'|' -v h="$hdr" '$6 == h { l = $0 } END { print l }')
	case $last in
	"$kind|kmsg|true|klp_crash|false|"*) st_ok=1 ;;
	*) st_ok=0 ;;
	esac
	if [ "$nrep" -ge 1 ] && [ $((a1 - a0)) = "$nrep" ] && [ $st_ok = 1 ]; then
		klp_pass "agent-$mode" "$((a1 - a0)) $kind event(s) attributed to klp_crash for $nrep report(s); status: $last"
	else
		klp_fail "agent-$mode" "$((a1 - a0)) $kind events attributed to klp_crash for $nrep '$pat' report(s); status: '$last'; log: $(grep " report: " $LOG | tail -n 8 | tr '\n' '|')"
	fi
}

# Order matters: once an oops has tainted the kernel D (TAINT_DIE), 6.1's
# khungtaskd stops reporting (check_hung_uninterruptible_tasks() returns
# early: "the system crashed already"), so the hang comes before the oopses.
crash warn 'WARNING: CPU: ' 1 20 warning
hang=$(cat $P/hang_secs)
crash hang 'INFO: task klp-trigger:' 1 $((hang + 20)) hung-task
spin=$(cat $P/spin_secs)
crash lockup 'watchdog: BUG: soft lockup - CPU#' 1 $((spin + 20)) soft-lockup
crash gpf 'general protection fault, probably for non-canonical address 0xdead000000000100' 0 20 oops
crash divide 'divide error: 0000' 0 20 oops
crash bug 'kernel BUG at ' 0 20 kernel-bug
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

# --- d. the daemon's events and the whole kernel log, raw ------------------------
# Stopped first: its log on the console would split the dumps' lines.
agent_stop
[ "$AGENT_RC" = 0 ] && klp_pass clean-stop "exit 0 on SIGTERM" || klp_fail clean-stop "exit $AGENT_RC"
$A status --json >/tmp/status.json
echo "KLP-E2E: status-begin"
sed 's/^/KLP-STATUS: /' /tmp/status.json
echo "KLP-E2E: status-end"
echo "KLP-E2E: dmesg-begin"
dmesg -r | sed 's/^/KLP-DMESG: /'
echo "KLP-E2E: dmesg-end"

[ "$KLP_FAILED" = 0 ]
