#!/bin/sh
# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# The whole system as an operator runs it (TestSystemRealKernel, make demo):
# the Debian rootfs under systemd installs the agent's own RPM with rpm; the
# operator starts the unit; it polls a signed manifest from nginx on the host
# (10.0.2.2). Installed as /etc/klp-e2e/scenario; it runs once per boot.
#
# Boot A: level 1 applied; `systemctl reload` with a drop-in pointing at the
#   next manifest upgrades to 2 (`status --check` exits 0); `klp-agent hold`,
#   then the next manifest offers a faulty level 3, which waits (`poll` says
#   held, `status --check` exits 1); `klp-agent resume` lets it in; it oopses
#   when used and is rolled back to 2 and blocked (`status --check` exits 2).
# Boot A starts unconfigured: the RPM's %post enables the unit by its preset
#   and starts nothing; started by hand, it exits 78 and is not restarted;
#   configured, it is started.
# Boot K (with /etc/klp-e2e/killswitch): klp_agent.enable=0 on the command
#   line; the unit applies nothing and says so.
# Boot B: the unit re-applies 2 before its first poll; `klp-agent history`
#   lists the applies, the rollback with its cause, the block, the hold and
#   the kill-switch boot; `rpm -e klp-agent` alone is refused (klp-cmdline
#   would stay in rpm with nothing to load it); `klp-agent uninstall` takes
#   the kernel to no patch and erases klp-cmdline and klp-agent together.
# What the host asserts on (journal JSON, status JSON, /proc/cmdline) goes to
# /var/lib/klp-e2e/out, read from the image after poweroff.
# shellcheck source-path=SCRIPTDIR source=../klp-e2e.sh
. /usr/local/lib/klp-e2e.sh

OUT=/var/lib/klp-e2e/out
A=/usr/bin/klp-agent
RPMDB="--dbpath /var/lib/rpm"
DROPIN=/etc/klp-agent/config.d/60-e2e-manifest.yaml
mkdir -p "$OUT"
phase=$(cat /var/lib/klp-e2e/phase 2>/dev/null || echo A)

level_is() { [ "$(klp_level)" = "$1" ]; }
active() { [ "$(systemctl is-active klp-agent)" = active ]; }
unit_failed() { [ "$(systemctl is-active klp-agent)" = failed ]; }
phase_is() { $A status --json 2>/dev/null | grep -q "\"phase\": \"$1\""; }
good_level() { level_is "$1" && phase_is good; }
soaking_level() { level_is "$1" && phase_is soaking; }
# poll_ok: a poll through the daemon succeeds (1 s apart: the network may
# still be coming up).
poll_ok() { $A poll >/dev/null 2>&1 || { sleep 1; false; }; }
agent_state() { $A status 2>&1 | tr '\n' ' ' | cut -c1-400; }

# use_manifest N: point the agent at manifest-N.json and reload it.
use_manifest() {
	printf 'manifest:\n  url: %s/manifest-%s.json\n' "$(cat /etc/klp-e2e/base-url)" "$1" >"$DROPIN"
	systemctl reload klp-agent
}

# wait_step NAME SECONDS CHECK ARGS...: PASS with the time it took, or FAIL
# with the agent's status.
wait_step() {
	local name="$1" secs="$2" t
	shift 2
	t=$(klp_cs)
	if klp_wait "$secs" "$@"; then
		klp_pass "$name" "$(klp_since "$t")s"
	else
		klp_fail "$name" "$(agent_state)"
		return 1
	fi
}

# check_code NAME CODE: `klp-agent status --check` exits CODE; its line is
# kept in $OUT/NAME.txt for the demo.
check_code() {
	local code=0
	$A status --check >"$OUT/$1.txt" 2>&1 || code=$?
	if [ "$code" = "$2" ]; then
		klp_pass "$1" "exit $code: $(cat "$OUT/$1.txt")"
	else
		klp_fail "$1" "exit $code, want $2: $(cat "$OUT/$1.txt")"
	fi
}

# save SUFFIX: what the host asserts on, and what the demo shows.
save() {
	$A status >"$OUT/status-$1.txt" 2>&1
	$A status --json >"$OUT/status-$1.json" 2>&1
	journalctl -b -u klp-agent -o json >"$OUT/journal-$1.json"
	journalctl -b -u klp-agent -o short-monotonic --no-hostname >"$OUT/journal-$1.txt"
	cat /proc/cmdline >"$OUT/cmdline-$1"
	systemctl show klp-agent >"$OUT/unit-$1.txt"
	cp /var/lib/prometheus/node-exporter/klp-agent.prom "$OUT/metrics-$1.prom" 2>/dev/null
}

boot_a() {
	local t wd1 wd2
	t=$(klp_cs)
	rpm $RPMDB --initdb
	# First as a fresh host: the site's configuration (drop-in and key) is
	# not there yet, only the RPM's own.
	mv /etc/klp-agent/config.d/50-site.yaml /etc/klp-agent/keys/release.pub /root/
	# --nodeps: Debian's rpm database does not know dpkg's systemd and kmod.
	if rpm -i --nodeps --force-debian $RPMDB /root/klp-agent.rpm 2>"$OUT/rpm-i.err"; then
		klp_pass agent-installed "$(rpm -q $RPMDB klp-agent) in $(klp_since "$t")s"
	else
		klp_fail agent-installed "$(tr '\n' ' ' <"$OUT/rpm-i.err")"
		return 1
	fi
	[ "$(systemctl is-enabled klp-agent)" = enabled ] && klp_pass enabled "by its preset in %post" || klp_fail enabled "$(systemctl is-enabled klp-agent)"
	# Presets enable, nothing starts: the install left the unit inactive.
	sleep 2
	case $(systemctl is-active klp-agent) in
	inactive) klp_pass not-started "inactive after rpm -i, NRestarts=$(systemctl show -P NRestarts klp-agent)" ;;
	*) klp_fail not-started "rpm -i started it: $(systemctl is-active klp-agent)" ;;
	esac
	# Unconfigured, a start exits 78 (EX_CONFIG) and the unit does not
	# restart it (RestartSec=5s: 12 s would have seen two restarts).
	systemctl start --no-block klp-agent
	klp_wait 30 unit_failed
	sleep 12
	local st
	st="$(systemctl show -P ActiveState klp-agent) status=$(systemctl show -P ExecMainStatus klp-agent) restarts=$(systemctl show -P NRestarts klp-agent)"
	if [ "$st" = "failed status=78 restarts=0" ] && journalctl -b -u klp-agent | grep -q 'not configured'; then
		klp_pass unconfigured-calm "$st: $(journalctl -b -u klp-agent -o cat | grep -m1 'not configured' | cut -c1-160)"
	else
		klp_fail unconfigured-calm "$st; journal: $(journalctl -b -u klp-agent -o cat | tail -n 5 | tr '\n' ' ')"
	fi
	# Configured (as configuration management would), and enrolled held
	# (no daemon runs: the command records the hold itself), then started.
	mv /root/50-site.yaml /etc/klp-agent/config.d/
	mv /root/release.pub /etc/klp-agent/keys/
	if $A hold --reason "demo: enrolled held" >"$OUT/hold-enrol.txt" 2>&1; then
		klp_pass enrolled-held "$(cat "$OUT/hold-enrol.txt")"
	else
		klp_fail enrolled-held "$(tr '\n' ' ' <"$OUT/hold-enrol.txt")"
	fi
	systemctl start --no-block klp-agent
	# Type=notify: "active" only once the agent sent READY=1.
	wait_step ready 30 active || return 1
	klp_note "status text: $(systemctl show -P StatusText klp-agent)"
	# Held, nothing applied: the running daemon refuses a rollback, and the
	# command says so with the daemon's own reason and exits 1.
	local code=0
	$A rollback --reason "demo: nothing to roll back" >"$OUT/rollback-refused.txt" 2>&1 || code=$?
	if [ "$code" = 1 ] && level_is none && grep -q 'daemon (pid [0-9]*) answered' "$OUT/rollback-refused.txt" &&
		grep -q 'no patch applied' "$OUT/rollback-refused.txt"; then
		klp_pass rollback-refused "exit 1: $(cat "$OUT/rollback-refused.txt")"
	else
		klp_fail rollback-refused "exit $code, level $(klp_level): $(tr '\n' ' ' <"$OUT/rollback-refused.txt")"
	fi
	$A resume >"$OUT/resume-enrol.txt" 2>&1 && klp_pass enrolled-resumed "$(cat "$OUT/resume-enrol.txt")" ||
		klp_fail enrolled-resumed "$(tr '\n' ' ' <"$OUT/resume-enrol.txt")"
	wait_step applied-1 120 good_level 1 || return 1
	# WatchdogSec=6s from the test's unit drop-in: a ping every 3 s.
	wd1=$(systemctl show -P WatchdogTimestampMonotonic klp-agent)
	sleep 7
	wd2=$(systemctl show -P WatchdogTimestampMonotonic klp-agent)
	if [ -n "$wd1" ] && [ "$wd1" != 0 ] && [ "$wd2" != "$wd1" ]; then
		klp_pass watchdog "pinged: $wd1 -> $wd2 us"
	else
		klp_fail watchdog "WatchdogTimestampMonotonic $wd1 -> $wd2"
	fi
	use_manifest 2
	wait_step upgraded-2 120 good_level 2 || return 1
	if journalctl -b -u klp-agent | grep -q 'configuration reloaded'; then
		klp_pass reload "config re-read on systemctl reload"
	else
		klp_fail reload "no 'configuration reloaded' in the journal"
	fi
	# status --check: 0 up to date (level 2 good, nothing newer offered).
	check_code up-to-date 0
	# Host controls: held, the next manifest's level 3 waits (poll now says
	# why, status --check exits 1); resumed, it goes in.
	if $A hold --reason "demo: change freeze" >"$OUT/hold.txt" 2>&1; then
		klp_pass held "$(cat "$OUT/hold.txt")"
	else
		klp_fail held "$(tr '\n' ' ' <"$OUT/hold.txt")"
	fi
	use_manifest 3
	$A poll >"$OUT/poll-held.txt" 2>&1
	if level_is 2 && grep -q 'held by' "$OUT/poll-held.txt"; then
		klp_pass poll-held "$(cat "$OUT/poll-held.txt")"
	else
		klp_fail poll-held "level $(klp_level): $(tr '\n' ' ' <"$OUT/poll-held.txt")"
	fi
	check_code check-held 1
	$A resume >"$OUT/resume.txt" 2>&1 && klp_pass resumed "$(cat "$OUT/resume.txt")" || klp_fail resumed "$(cat "$OUT/resume.txt")"
	wait_step applied-3 120 soaking_level 3 || return 1
	t=$(klp_cs)
	klp_trigger_read >/dev/null 2>&1
	if klp_wait 60 good_level 2; then
		klp_pass rolled-back-2 "$(klp_since "$t")s after the oops"
	else
		klp_fail rolled-back-2 "$(agent_state)"
	fi
	# 2: degraded, a level above the applied one (3) is blocked here.
	check_code check-blocked 2
	# With /etc/klp-e2e/killswitch the host boots a K boot next, with
	# klp_agent.enable=0 on the kernel command line (run-qemu.sh -a).
	if [ -e /etc/klp-e2e/killswitch ]; then echo K; else echo B; fi >/var/lib/klp-e2e/phase
}

# boot_k: booted with klp_agent.enable=0 (the kill switch): the unit runs
# but applies nothing, says so in the journal and status;
# the next boot (B) re-applies level 2 as usual.
boot_k() {
	wait_step ready-k 30 active || return 1
	if grep -qw 'klp_agent.enable=0' /proc/cmdline; then
		klp_pass killswitch-cmdline "$(cut -c1-120 /proc/cmdline)"
	else
		klp_fail killswitch-cmdline "not on /proc/cmdline: $(cat /proc/cmdline)"
	fi
	sleep 5 # its first poll comes at once: time to apply, were it allowed to
	if level_is none && journalctl -b -u klp-agent | grep -q 'kill switch'; then
		klp_pass killswitch-nothing-applied "no livepatch; the journal says kill switch"
	else
		klp_fail killswitch-nothing-applied "level $(klp_level): $(agent_state)"
	fi
	# Its first poll may have come before the guest's network was up, and
	# the last good one (boot A) is over 3 poll intervals old: status
	# --check would rightly say 5 (not polling). A poll through the daemon
	# first, so the code below is the patch's.
	klp_wait 60 poll_ok || klp_note "no poll succeeded in this boot: $($A poll 2>&1 | tr '\n' ' ')"
	# 2, not 1: level 3 stays blocked here (degraded wins over the switch).
	check_code check-killswitch 2
	if $A status | grep -qi 'kill switch'; then
		klp_pass killswitch-status "$($A status | grep -i -m1 'kill switch')"
	else
		klp_fail killswitch-status "status does not mention the kill switch: $(agent_state)"
	fi
	save K
	echo B >/var/lib/klp-e2e/phase
}

boot_b() {
	local t
	wait_step reapplied-2 60 level_is 2 || return 1
	active && klp_pass active-after-boot "$(systemctl show -P ActiveEnterTimestampMonotonic klp-agent)" || klp_fail active-after-boot "$(systemctl is-active klp-agent)"
	wait_step good-2 60 phase_is good
	save B
	# What happened on this host, from the agent's own history.
	$A history >"$OUT/history.txt" 2>&1
	$A history --json >"$OUT/history.json" 2>&1
	local missing="" k
	for k in "apply .*klp_cmdline_1@1" "rollback .*klp_oops_3@3 .*cause health" "block .*klp_oops_3@3" " hold " " resume " "kill-switch" "reapply .*klp_cmdline_2@2"; do
		grep -q -- "$k" "$OUT/history.txt" || missing="$missing [$k]"
	done
	[ -z "$missing" ] && klp_pass history "$(wc -l <"$OUT/history.txt") lines" || klp_fail history "missing$missing: $(tr '\n' ' ' <"$OUT/history.txt" | cut -c1-400)"
	# rpm -e klp-agent alone would leave klp-cmdline in rpm with nothing to
	# load it after a reboot: its %preun refuses, naming the command.
	if rpm -e --nodeps $RPMDB klp-agent 2>"$OUT/rpm-e.err"; then
		klp_fail erase-refused "rpm -e klp-agent alone succeeded"
	elif grep -q 'klp-agent uninstall' "$OUT/rpm-e.err" && rpm -q $RPMDB klp-agent >/dev/null && rpm -q $RPMDB klp-cmdline >/dev/null && active; then
		klp_pass erase-refused "$(grep -m1 'klp-agent uninstall' "$OUT/rpm-e.err" | cut -c1-200)"
	else
		klp_fail erase-refused "$(tr '\n' ' ' <"$OUT/rpm-e.err"); $(rpm -qa $RPMDB | tr '\n' ' '); $(systemctl is-active klp-agent)"
	fi
	t=$(klp_cs)
	systemctl stop klp-agent
	# The daemon stopped: status --check says so (4), never "up to date".
	check_code check-stopped 4
	if $A uninstall >"$OUT/uninstall.out" 2>&1; then
		klp_pass agent-erased "$(klp_since "$t")s: $(tr '\n' ' ' <"$OUT/uninstall.out" | cut -c1-200)"
	else
		klp_fail agent-erased "$(tr '\n' ' ' <"$OUT/uninstall.out")"
	fi
	case $(systemctl is-active klp-agent) in
	active | activating | deactivating) klp_fail erase-stops "$(systemctl is-active klp-agent)" ;;
	*) klp_pass erase-stops "$(systemctl is-active klp-agent)" ;;
	esac
	# rpm, the kernel and a scanner agree: no patch.
	if [ -z "$(rpm -qa $RPMDB | grep -E '^klp-(agent|cmdline)')" ] && [ ! -e /sys/kernel/livepatch/klp_cmdline_2 ] && [ "$(klp_level)" = none ]; then
		klp_pass rpm-kernel-agree "rpm: $(rpm -qa $RPMDB | tr '\n' ' ')none of ours; kernel: no livepatch"
	else
		klp_fail rpm-kernel-agree "rpm: $(rpm -qa $RPMDB | tr '\n' ' '); kernel level $(klp_level); $(ls /sys/kernel/livepatch)"
	fi
	cat /proc/cmdline >"$OUT/cmdline-after-erase"
	echo done >/var/lib/klp-e2e/phase
}

# Saved whatever happened, for the host's assertions or a failure's story.
case $phase in
A)
	boot_a
	save A
	;;
K) boot_k || save K ;;
B) boot_b || save B ;;
*) klp_fail phase "unexpected phase $phase" ;;
esac
sync
exit "$KLP_FAILED"
