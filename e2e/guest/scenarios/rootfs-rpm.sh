#!/bin/sh
# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Guest half of `e2e/smoke.sh -r`: runs in the Debian rootfs under systemd
# (installed as /etc/klp-e2e/scenario by mkrootfs.sh -O). Installs livepatch
# RPMs with the guest's own rpm from /root/klp-rpms and loads the modules
# from the convention's path, as the agent will.
# shellcheck source-path=SCRIPTDIR source=../klp-e2e.sh
. /usr/local/lib/klp-e2e.sh

T0=$(klp_cs)
KREL=$(uname -r)
DIR=/usr/lib/klp-agent/livepatches/$KREL
RPMS=/root/klp-rpms
# Debian's rpm asks for --force-debian, or it warns on every install.
RPM="rpm --force-debian"

step() {
	local name="$1" rpmfile="$2" mod="$3" level="$4" old="${5:-}" t got
	t=$(klp_cs)
	# shellcheck disable=SC2086 # $RPM is two words on purpose
	if ! $RPM -U --oldpackage "$RPMS/$rpmfile"; then
		klp_fail "$name" "rpm -U $rpmfile"
		return 1
	fi
	if ! insmod "$DIR/$mod.ko"; then
		klp_fail "$name" "insmod $DIR/$mod.ko"
		return 1
	fi
	if ! klp_wait 30 klp_transition_done "$mod"; then
		klp_fail "$name" "$mod transition did not finish"
		return 1
	fi
	got=$(klp_level)
	if [ "$got" != "$level" ]; then
		klp_fail "$name" "level $got, want $level"
		return 1
	fi
	if [ -n "$old" ] && ! { klp_wait 10 klp_patch_gone "$old" && klp_rmmod "$old"; }; then
		klp_fail "$name" "$old not replaced/unloaded"
		return 1
	fi
	klp_pass "$name" "$(rpm -q klp-cmdline) $mod level=$level ($(klp_since "$t")s)"
}

step rootfs-rpm-level1 klp-cmdline-1-1.x86_64.rpm klp_cmdline_1 1
step rootfs-rpm-level2 klp-cmdline-2-1.x86_64.rpm klp_cmdline_2 2 klp_cmdline_1
step rootfs-rpm-stepback1 klp-cmdline-1-1.x86_64.rpm klp_cmdline_1 1 klp_cmdline_2
klp_note "rootfs scenario $(klp_since "$T0")s"
exit "$KLP_FAILED"
