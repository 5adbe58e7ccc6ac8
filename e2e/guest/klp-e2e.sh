# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Guest-side helpers for e2e scenarios (busybox ash or any POSIX sh with
# `local`). Installed as /lib/klp-e2e.sh in the initramfs and as
# /usr/local/lib/klp-e2e.sh in the rootfs.
#
# Results go to the serial console as one line each:
#   KLP-E2E: <name> PASS|FAIL [detail]
# The host (run-qemu.sh) decides from these lines and the final
# "KLP-E2E: DONE rc=N" line.

# shellcheck disable=SC2034 # read by the scenarios
KLP_FAILED=0
KLP_LP=/sys/kernel/livepatch

klp_pass() { echo "KLP-E2E: $1 PASS${2:+ $2}"; }
klp_fail() {
	echo "KLP-E2E: $1 FAIL${2:+ $2}"
	# shellcheck disable=SC2034
	KLP_FAILED=1
	# The console may not have shown the kernel's side; show it here.
	echo "---- dmesg tail for $1 ----"
	dmesg | tail -n 40
	echo "---- end dmesg tail ----"
}
klp_note() { echo "KLP-E2E: note $*"; }

# Uptime in centiseconds (integer shell arithmetic only).
klp_cs() {
	local up rest
	read -r up rest </proc/uptime
	echo "${up%.*}${up#*.}"
}

# klp_since CS: seconds since CS, e.g. 1.25
klp_since() {
	local d
	d=$(($(klp_cs) - $1))
	printf '%d.%02d' $((d / 100)) $((d % 100))
}

# klp_wait SECONDS CMD [ARGS...]: run CMD every 0.1 s until it succeeds.
klp_wait() {
	local limit end
	limit=$1
	shift
	end=$(($(klp_cs) + limit * 100))
	while ! "$@"; do
		[ "$(klp_cs)" -lt "$end" ] || return 1
		sleep 0.1
	done
}

klp_read() { cat "$1" 2>/dev/null; }

klp_transition_done() {
	[ ! -d "$KLP_LP/$1" ] || [ "$(klp_read "$KLP_LP/$1/transition")" = 0 ]
}
klp_patch_gone() { [ ! -d "$KLP_LP/$1" ]; }
klp_module_gone() { [ ! -d "/sys/module/$1" ]; }
klp_refcnt_zero() { [ "$(klp_read "/sys/module/$1/refcnt")" = 0 ]; }

# klp_rmmod NAME: unload once the kernel has dropped its reference (after a
# completed replace or disable), as the kernel documentation requires.
klp_rmmod() {
	klp_wait 20 klp_refcnt_zero "$1" && rmmod "$1" && klp_wait 5 klp_module_gone "$1"
}

# Active cumulative level from /proc/cmdline ("... klp_level=N"), or "none".
klp_level() {
	local line
	line=$(cat /proc/cmdline)
	case $line in
	*" klp_level="*) echo "${line##* klp_level=}" ;;
	*) echo none ;;
	esac
}

# Read /proc/cmdline as a task whose comm is "klp-trigger", which is what
# the faulty modules (klp_oops_3, klp_oops_4, klp_warn_4) react to. Runs in a subshell so only it dies
# on an oops; prints what it read and returns the subshell's status.
klp_trigger_read() {
	(
		printf 'klp-trigger' >/proc/self/comm
		read -r line </proc/cmdline
		echo "$line"
	)
}

# Counts of a fixed string in the kernel log.
klp_dmesg_count() { dmesg | grep -cF -- "$1" || true; }

# klp_rpm_initdb RPM: give the real rpm a database (and root a home to own
# files), failing the step rpm-initdb with rpm's own words.
klp_rpm_initdb() {
	mkdir -p /var/lib/rpm /root
	if ! $1 --initdb >/tmp/initdb.out 2>&1; then
		klp_fail rpm-initdb "rpm --initdb: $(tr '\n' ' ' </tmp/initdb.out)"
	fi
}

# klp_run NAME CMD...: run CMD, keeping its output in /tmp/NAME.out;
# klp_oneline NAME prints that output on one line.
klp_run() {
	local name=$1
	shift
	"$@" >"/tmp/$name.out" 2>&1
}
klp_oneline() { tr '\n' ' ' <"/tmp/$1.out"; }
