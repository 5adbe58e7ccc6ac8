#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Boots the cached Debian kernel under qemu (TCG: /dev/kvm hangs on these
# hosts) with an initramfs and optionally a disk, copies the serial console
# to a log file (and stdout), and judges the run by its markers.
#
# Usage: e2e/guest/run-qemu.sh -i INITRD [-d DISK.img] [-l LOG] [-t SECONDS]
#            [-a APPEND]... [-M MEM_MB] [-c CPUS] [-n] [-q] [-- QEMU_ARGS...]
#   -d   attach DISK.img as virtio-blk /dev/vda (root=/dev/vda is appended)
#   -l   serial log (default: ./klp-e2e-serial.log)
#   -t   hard timeout, default 180 s; qemu is killed after it
#   -a   extra kernel command line words (repeatable)
#   -c   vCPUs (default 2 on the 6.1 line, 1 on 6.12: see below)
#   -n   user networking (virtio-net); the host is 10.0.2.2 in the guest
#   -q   do not copy the console to stdout
# Exit: 0  "KLP-E2E: DONE rc=0" seen and no "KLP-E2E: ... FAIL"
#       1  a FAIL marker or DONE rc != 0
#       2  no DONE marker (timeout, panic, crash)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"

initrd='' disk='' log=klp-e2e-serial.log timeout_s=180 mem=1024 net=0 quiet=0 cpus=''
append=()
while getopts "i:d:l:t:a:M:c:nq" opt; do
	case $opt in
	i) initrd=$OPTARG ;;
	d) disk=$OPTARG ;;
	l) log=$OPTARG ;;
	t) timeout_s=$OPTARG ;;
	a) append+=("$OPTARG") ;;
	M) mem=$OPTARG ;;
	c) cpus=$OPTARG ;;
	n) net=1 ;;
	q) quiet=1 ;;
	*) klp_die "usage: $0 -i INITRD [-d DISK] [-l LOG] [-t SECONDS] [-a APPEND]... [-M MB] [-c CPUS] [-n] [-q] [-- QEMU_ARGS]" ;;
	esac
done
shift $((OPTIND - 1))
[[ -f $initrd ]] || klp_die "initrd '$initrd' not found (-i)"
klp_load_env
[[ -f $KLP_E2E_VMLINUZ ]] || klp_die "$KLP_E2E_VMLINUZ missing: run e2e/setup.sh"
# One vCPU on 6.12. From 6.5 on (PREEMPT_DYNAMIC), the start and the end of
# every livepatch transition rewrite each cond_resched()/might_resched()
# static-call site in the kernel with text_poke_bp(). Under multi-threaded
# TCG (Debian 12's QEMU 7.2) the second vCPU then runs into a stale int3
# ("Oops: int3", panic) within some 25 enable/disable cycles, and each
# poke's sync IPIs make a transition's end take seconds. With one vCPU
# neither happens (75 cycles clean); 6.1 patches no static calls and stays
# on two (75 cycles clean too).
if [[ -z $cpus ]]; then
	case ${KLP_E2E_LINE:-6.1} in
	6.1) cpus=2 ;;
	*) cpus=1 ;;
	esac
fi
[[ $timeout_s =~ ^[0-9]+$ && $mem =~ ^[0-9]+$ && $cpus =~ ^[1-9][0-9]*$ ]] || klp_die "-t, -M and -c take integers"

# loglevel=5: warnings, oopses and panics reach the console (and the log),
# routine notices do not interleave with the markers.
cmdline=(console=ttyS0 panic=-1 loglevel=5)
args=(-accel tcg -cpu max -m "$mem" -smp "$cpus" -nographic -no-reboot
	-kernel "$KLP_E2E_VMLINUZ" -initrd "$initrd")
if [[ -n $disk ]]; then
	[[ -f $disk ]] || klp_die "disk '$disk' not found"
	args+=(-drive "file=$disk,if=virtio,format=raw")
	cmdline+=(root=/dev/vda rw)
fi
if ((net)); then
	args+=(-nic "user,model=virtio-net-pci")
else
	args+=(-nic none)
fi
cmdline+=("${append[@]}")
args+=(-append "${cmdline[*]}" "$@")

mkdir -p "$(dirname "$log")"
start=$(klp_now)
set +e
if ((quiet)); then
	timeout -k 10 "$timeout_s" qemu-system-x86_64 "${args[@]}" </dev/null >"$log" 2>&1
	qrc=$?
else
	timeout -k 10 "$timeout_s" qemu-system-x86_64 "${args[@]}" </dev/null 2>&1 | tee "$log"
	qrc=${PIPESTATUS[0]}
fi
set -e
secs=$(klp_elapsed "$start")

# Console lines end in \r\n; markers may follow kernel text on a line.
markers=$(tr -d '\r' <"$log" | grep -ao 'KLP-E2E: .*' || true)
npass=$(grep -c ' PASS' <<<"$markers" || true)
nfail=$(grep -c ' FAIL' <<<"$markers" || true)
done_line=$(grep -m1 '^KLP-E2E: DONE ' <<<"$markers" || true)
if [[ $qrc == 124 || $qrc == 137 ]]; then
	klp_log "qemu killed after the ${timeout_s}s timeout"
fi
# The kernel's own line, with its timestamp: a scenario's output may quote
# an earlier boot's panic (boot4's kdump evidence does).
if grep -aqE '\[ *[0-9]+\.[0-9]+\] Kernel panic - not syncing' "$log"; then
	klp_log "the guest kernel panicked"
fi
klp_log "qemu exit $qrc after ${secs}s ($KLP_E2E_KREL, $cpus vCPU): $npass PASS, $nfail FAIL, ${done_line:-no DONE marker} (log $log)"
if ((nfail)); then
	grep ' FAIL' <<<"$markers" | sed 's/^/  /' >&2
	exit 1
fi
[[ -n $done_line ]] || exit 2
[[ $done_line == "KLP-E2E: DONE rc=0"* ]] || exit 1
exit 0
