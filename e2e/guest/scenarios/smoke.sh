#!/bin/sh
# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Guest half of e2e/smoke.sh (busybox initramfs, run as /init-scenario).
# Exercises our test modules directly with insmod/sysfs, no agent:
# cumulative levels with atomic replace, step back, a WARNING and an oops
# from level 4, and a stalled transition that is reversed.
# Modules are in /klp. Exit status: number of failed steps (0 = all passed).
# shellcheck source-path=SCRIPTDIR source=../klp-e2e.sh
. /lib/klp-e2e.sh

K=/klp
T0=$(klp_cs)
ORIG=$(cat /proc/cmdline)
TAINT0=$(cat /proc/sys/kernel/tainted)

# expect_level STEP N: /proc/cmdline is the original line plus " klp_level=N".
expect_level() {
	local got
	got=$(cat /proc/cmdline)
	[ "$got" = "$ORIG klp_level=$2" ] && return 0
	klp_fail "$1" "want '$ORIG klp_level=$2', /proc/cmdline is '$got'"
	return 1
}

# load STEP MODULE LEVEL [REPLACED]: insmod MODULE (a cumulative level),
# wait for its transition, check the level, and if it replaced REPLACED,
# check that patch is gone and unload its module.
load() {
	local step="$1" mod="$2" level="$3" old="${4:-}" t
	t=$(klp_cs)
	if ! insmod "$K/$mod.ko"; then
		klp_fail "$step" "insmod $mod"
		return 1
	fi
	if ! klp_wait 30 klp_transition_done "$mod"; then
		klp_fail "$step" "$mod transition did not finish"
		return 1
	fi
	local en tr
	en=$(klp_read "$KLP_LP/$mod/enabled")
	tr=$(klp_read "$KLP_LP/$mod/transition")
	if [ "$en/$tr" != 1/0 ]; then
		klp_fail "$step" "$mod enabled=$en transition=$tr, want 1/0"
		return 1
	fi
	expect_level "$step" "$level" || return 1
	if [ -n "$old" ]; then
		if ! klp_wait 10 klp_patch_gone "$old"; then
			klp_fail "$step" "$old still in $KLP_LP after the replace"
			return 1
		fi
		if ! klp_rmmod "$old"; then
			klp_fail "$step" "rmmod $old"
			return 1
		fi
	fi
	klp_pass "$step" "$mod enabled=1 transition=0 level=$level${old:+ replaced $old} ($(klp_since "$t")s)"
}

# --- cumulative levels and atomic replace -------------------------------
load level1 klp_cmdline_1 1
load level2-replace klp_cmdline_2 2 klp_cmdline_1
load level3-replace klp_cmdline_3 3 klp_cmdline_2
# Stepping back loads the older cumulative level over the newer one: the
# kernel stays patched throughout (no window at level "none").
load stepback-level2 klp_cmdline_2 2 klp_cmdline_3
patches=
for p in "$KLP_LP"/*; do
	[ -e "$p" ] && patches="$patches ${p##*/}"
done
klp_note "patches:$patches"

# --- level 4 with a WARNING ---------------------------------------------
step=warn4
w0=$(klp_dmesg_count 'WARNING:')
if load warn4-load klp_warn_4 4 klp_cmdline_2; then
	t=$(klp_cs)
	# Normal readers (this shell's cat) must not trigger it.
	cat /proc/cmdline >/dev/null
	if [ "$(klp_dmesg_count 'WARNING:')" != "$w0" ]; then
		klp_fail "$step" "a normal reader triggered a WARNING"
	else
		out=$(klp_trigger_read)
		rc=$?
		line=$(dmesg | grep -F 'WARNING:' | tail -n 1)
		case $line in
		*" [klp_warn_4]"*)
			if [ $rc = 0 ] && [ "$out" = "$ORIG klp_level=4" ] &&
				[ $(($(cat /proc/sys/kernel/tainted) & 512)) != 0 ]; then
				klp_pass "$step" "reader survived, taint W, '$line' ($(klp_since "$t")s)"
			else
				klp_fail "$step" "rc=$rc out='$out' tainted=$(cat /proc/sys/kernel/tainted)"
			fi
			;;
		*) klp_fail "$step" "no 'WARNING: ... [klp_warn_4]' in dmesg (last: '$line')" ;;
		esac
	fi
fi

# --- level 4 with an oops -----------------------------------------------
step=oops4
if load oops4-load klp_oops_4 4 klp_warn_4; then
	t=$(klp_cs)
	out=$(klp_trigger_read)
	rc=$?
	bug=$(klp_dmesg_count 'BUG: kernel NULL pointer dereference')
	rip=$(dmesg | grep -F 'RIP:' | grep -F ' [klp_oops_4]' | tail -n 1)
	tainted=$(cat /proc/sys/kernel/tainted)
	# The reader is killed (137 = SIGKILL after the oops); we live on.
	if [ "$rc" -ge 128 ] && [ "$bug" -ge 1 ] && [ -n "$rip" ] && [ $((tainted & 128)) != 0 ]; then
		klp_pass "$step" "reader killed (rc=$rc), taint D, '$rip' ($(klp_since "$t")s)"
	else
		klp_fail "$step" "rc=$rc out='$out' bug=$bug rip='$rip' tainted=$tainted"
	fi
	# Roll back to the last good level, as the agent would after a crash signal.
	load oops4-rollback-level3 klp_cmdline_3 3 klp_oops_4
fi

# --- stalled transition ---------------------------------------------------
step=stall
stall_test() {
	local t reader i tr ps self out
	t=$(klp_cs)
	insmod "$K/klp_victim.ko" sleep_secs=30 || {
		klp_fail "$step" "insmod klp_victim"
		return
	}
	cat /proc/klp_victim >/tmp/victim.out &
	reader=$!
	i=0
	until grep -q klp_victim_sleep "/proc/$reader/stack" 2>/dev/null; do
		i=$((i + 1))
		[ $i -lt 100 ] || {
			klp_fail "$step" "reader $reader never slept in klp_victim_sleep"
			return
		}
		sleep 0.1
	done
	insmod "$K/klp_stall.ko" || {
		klp_fail "$step" "insmod klp_stall"
		return
	}
	# Three seconds is three of the kernel's retries; still blocked.
	sleep 3
	tr=$(klp_read "$KLP_LP/klp_stall/transition")
	ps=$(klp_read "/proc/$reader/patch_state")
	self=$(klp_read "/proc/$$/patch_state")
	if [ "$tr" != 1 ] || [ "$ps" != 0 ] || [ "$self" != 1 ]; then
		klp_fail "$step" "transition=$tr reader patch_state=$ps self patch_state=$self, want 1 0 1"
		return
	fi
	klp_pass stall-blocked "transition=1 after 3s, reader $reader patch_state=0 (others 1), stack: $(grep -m1 klp_victim_sleep "/proc/$reader/stack")"
	# Reverse: the patch goes back to unpatched without waiting for the reader.
	t=$(klp_cs)
	if ! echo 0 >"$KLP_LP/klp_stall/enabled"; then
		klp_fail stall-reverse "writing 0 to enabled failed"
		return
	fi
	if ! klp_wait 15 klp_patch_gone klp_stall; then
		klp_fail stall-reverse "klp_stall still present: transition=$(klp_read "$KLP_LP/klp_stall/transition")"
		return
	fi
	if ! klp_rmmod klp_stall; then
		klp_fail stall-reverse "rmmod klp_stall"
		return
	fi
	klp_pass stall-reverse "reversed and unloaded while the reader still sleeps ($(klp_since "$t")s)"
	kill -9 "$reader" 2>/dev/null
	wait "$reader" 2>/dev/null
	# With no sleeper the same patch goes through, and takes effect.
	t=$(klp_cs)
	echo 0 >/sys/module/klp_victim/parameters/sleep_secs
	insmod "$K/klp_stall.ko" || {
		klp_fail stall-complete "insmod klp_stall again"
		return
	}
	if ! klp_wait 15 klp_transition_done klp_stall; then
		klp_fail stall-complete "transition did not finish without a sleeper"
		return
	fi
	out=$(cat /proc/klp_victim)
	if [ "$out" != "patched by klp_stall" ]; then
		klp_fail stall-complete "/proc/klp_victim says '$out'"
		return
	fi
	if ! { echo 0 >"$KLP_LP/klp_stall/enabled" && klp_wait 15 klp_patch_gone klp_stall &&
		klp_rmmod klp_stall && out=$(cat /proc/klp_victim) && [ "$out" = slept ] &&
		rmmod klp_victim; }; then
		klp_fail stall-complete "disable/unload after completion (victim says '$out')"
		return
	fi
	klp_pass stall-complete "patched, disabled, unloaded ($(klp_since "$t")s)"
}
stall_test
# klp_stall is replace=false: the cumulative level below it is untouched.
expect_level stall-level-kept 3 && klp_pass stall-level-kept "level 3 still active"

klp_note "tainted $TAINT0 -> $(cat /proc/sys/kernel/tainted), scenario $(klp_since "$T0")s"
exit "$KLP_FAILED"
