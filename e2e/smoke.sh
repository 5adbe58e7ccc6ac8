#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Real-kernel smoke test of the e2e harness itself (no agent involved):
#   1. setup.sh (packages, headers, kernel image cache)       needs root
#   2. build-rpms.sh (modules + RPMs)
#   3. the RPM convention with the real rpm in a scratch root: levels
#      upgrade with -U, step back with -U --oldpackage, kpatch-patch layout
#   4. a busybox initramfs with the .ko files and guest/scenarios/smoke.sh
#   5. qemu (TCG): cumulative levels 1-3 with atomic replace, step back to
#      2, a WARNING and an oops from level 4 attributed to their module,
#      rollback to 3, a stalled transition that is reversed.
#   6. with -r: a Debian rootfs (mkrootfs.sh) booted to systemd, where
#      the guest's rpm installs levels 1, 2, back to 1 and they are loaded
#      from the convention's path (guest/scenarios/rootfs-rpm.sh).
# Exits non-zero on any failure; keeps its work directory then (or with -k).
#
# Usage (as root): e2e/smoke.sh [-k] [-q] [-r]
#   -k keep the work directory, -q do not copy the consoles to stdout,
#   -r also the rootfs boot (a minute more the first time: debootstrap)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

keep=0 quiet=() rootfs=0
while getopts "kqr" opt; do
	case $opt in
	k) keep=1 ;;
	q) quiet=(-q) ;;
	r) rootfs=1 ;;
	*) klp_die "usage: $0 [-k] [-q] [-r]" ;;
	esac
done
[[ $(id -u) == 0 ]] || klp_die "run as root (setup installs packages; rpm --root)"

t0=$(klp_now)
work=$(mktemp -d "${TMPDIR:-/tmp}/klp-smoke.XXXXXX")
ok=0
finish() {
	if ((ok && !keep)); then
		rm -rf "$work"
	else
		klp_log "work directory kept: $work"
	fi
}
trap finish EXIT
times=()
stage() { times+=("$(printf '%-12s %6ss' "$1" "$(klp_elapsed "$2")")"); }

s=$(klp_now)
"$KLP_E2E_DIR/setup.sh" "${KLP_E2E_LINE:-6.1}" >/dev/null
stage setup "$s"
klp_load_env
klp_log "kernel $KLP_E2E_KREL"

s=$(klp_now)
"$KLP_E2E_DIR/build-rpms.sh" "$work/rpms"
stage rpms "$s"

# --- the RPM convention, with the real rpm -------------------------------
s=$(klp_now)
root=$work/rpmroot
mkdir -p "$root"
# Debian's rpm warns "use Alien instead" on every install unless told.
R=(rpm --root "$root")
# (grep on a captured string: grep -q in a pipe would SIGPIPE rpm under pipefail)
if [[ $(rpm --help 2>/dev/null) == *--force-debian* ]]; then
	R+=(--force-debian)
fi
rpm --root "$root" --initdb # rpmdb does not take --force-debian
rq() { "${R[@]}" -q --qf '%{NAME}-%{VERSION}-%{RELEASE}\n' "$@"; }
lpdir=$root/usr/lib/klp-agent/livepatches/$KLP_E2E_KREL
want_file() {
	local present
	present=$(cd "$lpdir" && ls)
	[[ $present == "$1" ]] || klp_die "rpm: $lpdir holds '$present', want $1"
}
r=$work/rpms
"${R[@]}" -U --quiet "$r/klp-cmdline-1-1.x86_64.rpm"
want_file klp_cmdline_1.ko
"${R[@]}" -U --quiet "$r/klp-cmdline-2-1.x86_64.rpm"
want_file klp_cmdline_2.ko
"${R[@]}" -U --quiet "$r/klp-cmdline-3-1.x86_64.rpm"
want_file klp_cmdline_3.ko
# Stepping back needs --oldpackage; without it rpm refuses.
if "${R[@]}" -U --quiet "$r/klp-cmdline-2-1.x86_64.rpm" 2>/dev/null; then
	klp_die "rpm: downgrade without --oldpackage was accepted"
fi
"${R[@]}" -U --oldpackage --quiet "$r/klp-cmdline-2-1.x86_64.rpm"
want_file klp_cmdline_2.ko
[[ $(rq klp-cmdline) == klp-cmdline-2-1 ]] || klp_die "rpm: klp-cmdline is $(rq klp-cmdline)"
[[ $("${R[@]}" -q --whatprovides "klp-livepatch($KLP_E2E_KREL)" --qf '%{NAME}\n') == klp-cmdline ]] ||
	klp_die "rpm: nothing provides klp-livepatch($KLP_E2E_KREL)"
# kernel-uname-r is a Red Hat kernel Provides; Debian's rpmdb lacks it.
read -r kp kpname < <(awk -F'\t' '$3 == "kpatch_cmdline_1" { print $1, $2 }' "$r/index.tsv")
if "${R[@]}" -U --quiet "$r/$kp" 2>/dev/null; then
	klp_die "rpm: $kp installed without kernel-uname-r"
fi
"${R[@]}" -U --nodeps --quiet "$r/$kp"
[[ -f $root/usr/lib/kpatch/$KLP_E2E_KREL/kpatch_cmdline_1.ko ]] || klp_die "rpm: kpatch layout file missing"
"${R[@]}" -e klp-cmdline "$kpname"
[[ -z $(find "$root/usr/lib/klp-agent" "$root/usr/lib/kpatch" -name '*.ko') ]] || klp_die "rpm -e left modules behind"
klp_log "rpm convention: PASS (upgrade 1->2->3, --oldpackage 3->2, kpatch-patch --nodeps, erase)"
stage rpm-check "$s"

# --- the guest --------------------------------------------------------------
s=$(klp_now)
kargs=()
for ko in "$r"/ko/*.ko; do
	kargs+=(-k "$ko")
done
"$KLP_E2E_DIR/guest/mkinitramfs.sh" -o "$work/smoke.cpio.gz" -s "$KLP_E2E_DIR/guest/scenarios/smoke.sh" "${kargs[@]}"
stage initramfs "$s"

s=$(klp_now)
rc=0
"$KLP_E2E_DIR/guest/run-qemu.sh" "${quiet[@]}" -i "$work/smoke.cpio.gz" -l "$work/serial.log" -t 300 || rc=$?
stage qemu "$s"
logs=("$work/serial.log")

if ((rootfs)); then
	s=$(klp_now)
	ov=$work/overlay
	mkdir -p "$ov/etc/klp-e2e" "$ov/root/klp-rpms"
	install -m 0755 "$KLP_E2E_DIR/guest/scenarios/rootfs-rpm.sh" "$ov/etc/klp-e2e/scenario"
	cp "$r"/klp-cmdline-[12]-1.x86_64.rpm "$ov/root/klp-rpms/"
	"$KLP_E2E_DIR/guest/mkrootfs.sh" -o "$work/rootfs.img" -O "$ov"
	"$KLP_E2E_DIR/guest/mkinitramfs.sh" -o "$work/rootfs.cpio.gz" -r
	stage mkrootfs "$s"
	s=$(klp_now)
	rrc=0
	"$KLP_E2E_DIR/guest/run-qemu.sh" "${quiet[@]}" -i "$work/rootfs.cpio.gz" -d "$work/rootfs.img" \
		-l "$work/serial-rootfs.log" -t 300 || rrc=$?
	stage qemu-rootfs "$s"
	logs+=("$work/serial-rootfs.log")
	((rrc == 0)) || rc=$rrc
fi

echo
echo "== results (from ${logs[*]})"
cat "${logs[@]}" | tr -d '\r' | grep -ao 'KLP-E2E: .*\(PASS\|FAIL\).*' | cut -c1-160 || true
echo "== timings"
printf '  %s\n' "${times[@]}"
printf '  %-12s %6ss\n' total "$(klp_elapsed "$t0")"
if ((rc != 0)); then
	klp_log "FAIL (run-qemu exit $rc)"
	exit 1
fi
ok=1
klp_log "PASS"
