# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# `make bench` on the real kernel (TestBenchRealKernel): in one guest run,
#   apply latency  klp-agent klp apply (verify, rpm, load, transition), the
#                  bare floor (rpm -U && insmod && poll every 10 ms) and
#                  kpatch's way (the same, polling once a second), each
#                  taking levels 1 -> 2 -> 3 by atomic replace, ROUNDS times;
#   rollback       the daemon (manifest from busybox httpd in the guest)
#                  applies level 3 and soaks it (good), then the faulty
#                  klp_oops_4; the oops is triggered; time until 4 is
#                  gone (3 loaded from the agent's kept copy, transition
#                  0), against the floor: the report as the kernel printed
#                  it + a bare insmod of klp_cmdline_3 over klp_oops_4 +
#                  the transition. Both sides are read off the kernel's own
#                  printk clock (kts: the oops's first and last lines,
#                  "enabling patch", "patching complete", and a marker the
#                  floor writes to /dev/kmsg before its insmod), so no
#                  user-space clock or polling granularity enters them.
# Timings print as "KLP-E2E: time NAME MS [detail]".
. /lib/klp-e2e.sh
export PATH=/usr/local/bin:$PATH HOME=/root
A=/usr/bin/klp-agent
RPM="/usr/local/bin/rpm --dbpath /var/lib/rpm"
R=/rpms
KREL=$(uname -r)
DIR=/usr/lib/klp-agent/livepatches/$KREL
ROUNDS=$(cat /etc/bench-rounds)
mkdir -p /var/lib/rpm /root
$RPM --initdb || klp_fail rpmdb "rpm --initdb"
ip link set lo up

ms_since() { echo $((($(klp_cs) - $1) * 10)); }
# kts TEXT: the printk timestamp (seconds) of the first kernel log line
# containing TEXT, or "?".
kts() {
	[ "$1" != -- ] || shift
	dmesg | grep -m1 -F -- "$1" | sed -n 's/^\[ *\([0-9]*\.[0-9]*\)\].*/\1/p' | grep . || echo '?'
}
# poll_transition PERIOD MOD: wait for MOD's transition to finish, checking
# every PERIOD seconds (the kernel itself retries every second).
poll_transition() {
	while [ "$(klp_read "$KLP_LP/$2/transition")" != 0 ] || [ "$(klp_read "$KLP_LP/$2/enabled")" != 1 ]; do
		sleep "$1"
	done
}
reset() {
	for m in klp_cmdline_1 klp_cmdline_2 klp_cmdline_3 klp_oops_4; do
		if [ -d "$KLP_LP/$m" ]; then
			echo 0 >"$KLP_LP/$m/enabled" 2>/dev/null
			klp_wait 30 klp_patch_gone "$m"
		fi
		[ ! -d "/sys/module/$m" ] || klp_rmmod "$m"
	done
	$RPM -e --nodeps klp-cmdline >/dev/null 2>&1
}

for r in $(seq "$ROUNDS"); do
	for lvl in 1 2 3; do
		t0=$(klp_cs)
		# From level 2 on, the running level's RPM is named: rpm gets it
		# back if the kernel refuses the new one.
		prev=
		[ "$lvl" = 1 ] || prev="--previous-rpm $R/klp-cmdline-$((lvl - 1))-1.x86_64.rpm"
		# shellcheck disable=SC2086 # prev is two words or none
		if out=$($A klp apply --rpm-dbpath /var/lib/rpm --rpm "$R/klp-cmdline-$lvl-1.x86_64.rpm" $prev 2>&1); then
			echo "KLP-E2E: time agent-$lvl-r$r $(ms_since "$t0")ms $out"
		else
			klp_fail agent-apply "$out"
		fi
	done
	reset
	for mode in bare:0.01 kpatch:1; do
		name=${mode%%:*} period=${mode#*:}
		for lvl in 1 2 3; do
			t0=$(klp_cs)
			$RPM -U --oldpackage "$R/klp-cmdline-$lvl-1.x86_64.rpm" && insmod "$DIR/klp_cmdline_$lvl.ko" &&
				poll_transition "$period" "klp_cmdline_$lvl"
			echo "KLP-E2E: time $name-$lvl-r$r $(ms_since "$t0")ms"
			[ "$(klp_level)" = "$lvl" ] || klp_fail "$name" "level $(klp_level), want $lvl"
			[ "$lvl" = 1 ] || klp_rmmod "klp_cmdline_$((lvl - 1))"
		done
		reset
	done
done
klp_pass apply-rounds "$ROUNDS rounds"

# Rollback reaction through the daemon: level 3 soaks and is good, then
# level 4 (faulty) arrives with a long soak (manifest and config swapped,
# SIGHUP) and its oops is triggered.
httpd -p 127.0.0.1:8080 -h /www
cp /etc/klp-agent/config.yaml /tmp/config.long
sed 's/^  soak: .*/  soak: 2s/' /tmp/config.long >/tmp/config.short
good3() { grep -q '"good"' /var/lib/klp-agent/state.json 2>/dev/null && tr -d '\n ' </var/lib/klp-agent/state.json | grep -q '"good":\[{"name":"klp_cmdline_3"'; }
oops_soaking() { grep -q '"phase": "soaking"' /var/lib/klp-agent/state.json 2>/dev/null && [ "$(klp_level)" = 4 ]; }
oops_gone() { [ ! -d "$KLP_LP/klp_oops_4" ] || { [ "$(klp_read "$KLP_LP/klp_oops_4/enabled")" = 0 ] && [ "$(klp_read "$KLP_LP/klp_oops_4/transition")" = 0 ]; }; }
for r in $(seq "$ROUNDS"); do
	rm -rf /var/lib/klp-agent && mkdir -m 0700 -p /var/lib/klp-agent
	cp /tmp/config.short /etc/klp-agent/config.yaml
	cp /www/manifest-3.json /www/manifest.json
	$A run >/tmp/agent-$r.log 2>&1 &
	pid=$!
	if ! klp_wait 90 good3; then
		klp_fail rollback-r$r "level 3 never good: $(tail -n 5 /tmp/agent-$r.log | tr '\n' ' ')"
		kill "$pid"
		break
	fi
	cp /tmp/config.long /etc/klp-agent/config.yaml
	cp /www/manifest-34.json /www/manifest.json
	kill -HUP "$pid"
	if ! klp_wait 60 oops_soaking; then
		klp_fail rollback-r$r "level 4 never soaked: $(tail -n 5 /tmp/agent-$r.log | tr '\n' ' ')"
		kill "$pid"
		break
	fi
	dmesg -c >/dev/null
	t0=$(klp_cs)
	klp_trigger_read >/dev/null 2>&1
	# The poll itself is 10 ms granular; the daemon acts on its own.
	while ! oops_gone; do usleep 10000; done
	ms=$(ms_since "$t0")
	detect=$(grep -o '"KLP_DETECT_US": [0-9]*' /tmp/agent-$r.log | head -n 1 | grep -o '[0-9]*$')
	[ "$(klp_level)" = 3 ] || klp_fail rollback-r$r "after the rollback level $(klp_level), want 3"
	echo "KLP-E2E: time rollback-r$r ${ms}ms detect_us=${detect:-?} report=$(kts 'BUG: kernel NULL pointer dereference') end=$(kts -- '---[ end trace') enabling=$(kts "livepatch: enabling patch 'klp_cmdline_3'") complete=$(kts "'klp_cmdline_3': patching complete")"
	kill -TERM "$pid"
	wait "$pid"
	reset
	# The floor in the same guest: klp_oops_4 enabled, then a bare insmod
	# of klp_cmdline_3 replacing it, polled every 10 ms.
	insmod /klp/klp_oops_4.ko && klp_wait 60 klp_transition_done klp_oops_4 || klp_fail floor "insmod klp_oops_4"
	dmesg -c >/dev/null
	echo "klp-bench: floor insmod" >/dev/kmsg
	t0=$(klp_cs)
	insmod /klp/klp_cmdline_3.ko && poll_transition 0.01 klp_cmdline_3
	echo "KLP-E2E: time floor-r$r $(ms_since "$t0")ms start=$(kts 'klp-bench: floor insmod') enabling=$(kts "livepatch: enabling patch 'klp_cmdline_3'") complete=$(kts "'klp_cmdline_3': patching complete")"
	[ "$(klp_level)" = 3 ] || klp_fail floor "floor level $(klp_level), want 3"
	reset
done
[ "$KLP_FAILED" = 0 ]
