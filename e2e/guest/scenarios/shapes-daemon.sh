# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# The daemon meets the shapes the kernel refuses (TestShapesRealKernel):
# for each case a fresh host's daemon applies level 1 (/www/cases/NAME-1.json),
# then, on SIGHUP, meets NAME-2.json's level 2, a patch the kernel refuses
# deterministically: it blocks 2 with the kernel's own line as evidence,
# keeps level 1, and rpm holds exactly klp-cmdline 1.
. /lib/klp-e2e.sh
export PATH=/usr/local/bin:$PATH HOME=/root
A=/usr/bin/klp-agent
RPM="/usr/local/bin/rpm --dbpath /var/lib/rpm"
ST=/var/lib/klp-agent/state.json
mkdir -p /var/lib/rpm /root
$RPM --initdb || klp_fail rpmdb "rpm --initdb"
ip link set lo up
httpd -p 127.0.0.1:8080 -h /www

settled() {
	tr -d '\n ' <$ST 2>/dev/null | grep -q "\"blocked\":\[{\"name\":\"$1\"" && [ "$(klp_level)" = 1 ] &&
		grep -q '"phase": "good"' $ST
}
level1() { [ "$(klp_level)" = 1 ] && grep -q '"phase": "good"' $ST; }
for c in prefail:"pre-patch callback failed" nonreplace:"does not replace the livepatch before it"; do
	name=${c%%:*} want=${c#*:}
	rm -rf /var/lib/klp-agent && mkdir -m 0700 /var/lib/klp-agent
	cp "/www/cases/$name-1.json" /www/manifest.json
	$A run >"/tmp/agent-$name.log" 2>&1 &
	pid=$!
	# Level 1 first, soaked (no new level comes while one soaks): a
	# non-cumulative patch shows only over another one.
	klp_wait 60 level1 || klp_fail "daemon-$name" "level 1 never applied: $(tail -n 8 "/tmp/agent-$name.log" | tr '\n' ' ')"
	cp "/www/cases/$name-2.json" /www/manifest.json
	kill -HUP "$pid"
	if ! klp_wait 90 settled "klp_$name"; then
		klp_fail "daemon-$name" "not settled: level $(klp_level); state $(tr -d '\n' <$ST); log $(tail -n 8 "/tmp/agent-$name.log" | tr '\n' ' ')"
	else
		st=$(tr -d '\n' <$ST)
		pkgs=$($RPM -qa --qf '%{NAME}-%{VERSION} ' | grep -o 'klp-[a-z]*-[0-9]*' | tr '\n' ' ')
		case $st in
		*'"cause": "kernel-refused"'*) ;;
		*) st="no kernel-refused cause: $st" ;;
		esac
		case $st in
		*"$want"*)
			if [ "$pkgs" = "klp-cmdline-1 " ] && klp_module_gone "klp_$name"; then
				klp_pass "daemon-$name" "blocked with the kernel's line, level 1 applied, rpm: $pkgs"
			else
				klp_fail "daemon-$name" "rpm holds '$pkgs' (want klp-cmdline-1), klp_$name loaded: $(klp_module_gone "klp_$name" || echo yes)"
			fi
			;;
		*) klp_fail "daemon-$name" "block record lacks the cause or '$want': $st" ;;
		esac
	fi
	kill -TERM "$pid"
	wait "$pid"
	for m in klp_cmdline_1 "klp_$name"; do
		if [ -d "$KLP_LP/$m" ]; then
			echo 0 >"$KLP_LP/$m/enabled"
			klp_wait 30 klp_patch_gone "$m"
		fi
		[ ! -d "/sys/module/$m" ] || klp_rmmod "$m"
	done
	$RPM -e --nodeps klp-cmdline >/dev/null 2>&1
done

# klp_state: level 1 (state version 1) soaked, then level 2 (version 2).
# An operator's rollback --block of 2 cannot step back to 1, which the
# kernel refuses as a state downgrade: the host runs no patch, rpm holds no
# klp-state, and the refusal is in the journal with the kernel's line.
rm -rf /var/lib/klp-agent && mkdir -m 0700 /var/lib/klp-agent
cp /www/cases/state-1.json /www/manifest.json
$A run >/tmp/agent-state.log 2>&1 &
pid=$!
state_good() { grep -q "\"name\": \"klp_state_v$1\"" $ST && grep -q '"phase": "good"' $ST && [ -d "$KLP_LP/klp_state_v$1" ]; }
nopatch() { [ -z "$(ls $KLP_LP 2>/dev/null)" ] && grep -q '"phase": "none"' $ST; }
if ! klp_wait 60 state_good 1; then
	klp_fail daemon-state "level 1 never good: $(tail -n 8 /tmp/agent-state.log | tr '\n' ' ')"
else
	cp /www/cases/state-2.json /www/manifest.json
	kill -HUP "$pid"
	if ! klp_wait 90 state_good 2; then
		klp_fail daemon-state "level 2 never good: $(tail -n 8 /tmp/agent-state.log | tr '\n' ' ')"
	elif ! $A rollback --block --reason "e2e: step back past a state downgrade" >/tmp/rollback-state.out 2>&1; then
		klp_fail daemon-state "rollback: $(tr '\n' ' ' </tmp/rollback-state.out)"
	elif ! klp_wait 30 nopatch; then
		klp_fail daemon-state "not back to no patch: $(ls $KLP_LP) state $(tr -d '\n' <$ST)"
	else
		pkgs=$($RPM -qa 'klp-*' | tr '\n' ' ')
		refusal=$(grep -m1 'kernel refuses good level klp_state_v1@1' /tmp/agent-state.log)
		if [ -n "$pkgs" ]; then
			klp_fail daemon-state "rpm still holds '$pkgs' with no patch in the kernel"
		elif ! echo "$refusal" | grep -q 'not compatible with the already installed livepatches'; then
			klp_fail daemon-state "no refusal of level 1 with the kernel's line in the log: $(grep -i refus /tmp/agent-state.log | tr '\n' ' ')"
		else
			klp_pass daemon-state "level 1 refused ($refusal), no patch, rpm holds none"
		fi
	fi
fi
kill -TERM "$pid"
wait "$pid"
[ "$KLP_FAILED" = 0 ]
