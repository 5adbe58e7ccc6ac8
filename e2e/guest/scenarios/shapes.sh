# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Livepatches shaped as others ship them (issue 13), through
# `klp-agent klp apply` on the real kernel with the real rpm: a
# non-cumulative patch, klp_state v1 -> v2 and the refused downgrade, a
# failing pre-patch callback, Meta's klp-<krel>/hotfixN packaging and Red
# Hat's kpatch-patch, both with scriptlets the agent must not run. After
# every step `rpm -q` must name exactly the package whose module the kernel
# runs. Booted with module.sig_enforce=1 it checks the unsigned refusal
# instead.
. /lib/klp-e2e.sh
A=/usr/bin/klp-agent
R=/rpms
KREL=$(uname -r)
export HOME=/root
export PATH=/usr/local/bin:$PATH
RPM=/usr/local/bin/rpm
META=klp-$KREL
KPATCH=kpatch-patch-$(echo "$KREL" | tr . _)

klp_rpm_initdb $RPM

# installed: the livepatch packages rpm holds, as NAME-VERSION, sorted.
installed() {
	$RPM -qa --qf '%{NAME}-%{VERSION}\n' 2>/dev/null | grep -E '^(klp-|kpatch-patch-)' | sort | tr '\n' ' ' | sed 's/ $//'
}
# enabled: the livepatches the kernel has enabled, sorted.
enabled() {
	local d out=""
	for d in "$KLP_LP"/*; do
		[ -d "$d" ] || continue
		[ "$(klp_read "$d/enabled")" = 1 ] && out="$out ${d##*/}"
	done
	echo "${out# }"
}
# check NAME WANT_ENABLED WANT_RPMS WANT_CMDLINE_SUBSTRING: the kernel's and
# rpm's view after a step; prints why not.
check() {
	local e i c
	e=$(enabled)
	i=$(installed)
	c=$(cat /proc/cmdline)
	if [ "$e" != "$2" ]; then
		echo "enabled livepatches '$e', want '$2'"
		return 1
	fi
	if [ "$i" != "$3" ]; then
		echo "rpm -qa '$i', want '$3'"
		return 1
	fi
	case $c in
	*"$4"*) ;;
	*)
		echo "/proc/cmdline '$c' lacks '$4'"
		return 1
		;;
	esac
	for f in /tmp/scriptlet-*; do
		if [ -e "$f" ]; then
			echo "a package scriptlet ran: $f"
			return 1
		fi
	done
}
# ok NAME WANT_ENABLED WANT_RPMS WANT_CMDLINE: the step succeeded and left
# this state.
ok() {
	local name=$1 rc=$2 why
	shift 2
	if [ "$rc" != 0 ]; then
		klp_fail "$name" "exit $rc: $(klp_oneline "$name")"
	elif why=$(check "$name" "$@"); then
		klp_pass "$name" "$(klp_oneline "$name")"
	else
		klp_fail "$name" "$why; agent: $(klp_oneline "$name")"
	fi
}
# refused NAME PATTERN WANT_ENABLED WANT_RPMS WANT_CMDLINE: the step failed
# with PATTERN in its error and left this state.
refused() {
	local name=$1 rc=$2 pat=$3 why
	shift 3
	if [ "$rc" = 0 ]; then
		klp_fail "$name" "accepted: $(klp_oneline "$name")"
	elif ! grep -q "$pat" "/tmp/$name.out"; then
		klp_fail "$name" "error lacks '$pat': $(klp_oneline "$name")"
	elif why=$(check "$name" "$@"); then
		klp_pass "$name" "$(klp_oneline "$name")"
	else
		klp_fail "$name" "$why; agent: $(klp_oneline "$name")"
	fi
}

if [ "$(klp_read /sys/module/module/parameters/sig_enforce)" = Y ]; then
	# --- module.sig_enforce=1: the unsigned patch is refused with the
	# kernel's words, and rpm keeps nothing.
	klp_run sig-refused $A klp apply --rpm "$R/klp-cmdline-1-1.x86_64.rpm"
	refused sig-refused $? "Loading of unsigned module is rejected" "" "" "console=ttyS0"
	grep -q "signature was rejected" /tmp/sig-refused.out ||
		klp_fail sig-reason "the reason is not named: $(klp_oneline sig-refused)"
	[ "$KLP_FAILED" = 0 ]
	exit
fi

# --- a cumulative base level ------------------------------------------------
klp_run base $A klp apply --rpm "$R/klp-cmdline-1-1.x86_64.rpm"
ok base $? "klp_cmdline_1" "klp-cmdline-1" "klp_level=1"

# --- non-cumulative (replace=false) over it: backed out, level 1 stays ------
klp_run nonreplace $A klp apply --rpm "$R/klp-cmdline-2-1.nonreplace.x86_64.rpm" --previous-rpm "$R/klp-cmdline-1-1.x86_64.rpm"
refused nonreplace $? "does not replace" "klp_cmdline_1" "klp-cmdline-1" "klp_level=1"
klp_module_gone klp_nonreplace || klp_fail nonreplace-unloaded "klp_nonreplace still loaded"

# --- a failing pre-patch callback: the kernel's line, level 1 stays ---------
klp_run prefail $A klp apply --rpm "$R/klp-cmdline-2-1.prefail.x86_64.rpm" --previous-rpm "$R/klp-cmdline-1-1.x86_64.rpm"
refused prefail $? "pre-patch callback failed" "klp_cmdline_1" "klp-cmdline-1" "klp_level=1"

# --- klp_state v1 replaces level 1 (another package: rpm erases it), v2
# replaces v1, and the downgrade to v1 is refused with the kernel's line ----
klp_run state-1 $A klp apply --rpm "$R/klp-state-1-1.x86_64.rpm" --previous-rpm "$R/klp-cmdline-1-1.x86_64.rpm"
ok state-1 $? "klp_state_v1" "klp-state-1" "klp_state_v1"
klp_run state-2 $A klp apply --rpm "$R/klp-state-2-1.x86_64.rpm" --previous-rpm "$R/klp-state-1-1.x86_64.rpm"
ok state-2 $? "klp_state_v2" "klp-state-2" "klp_state_v2"
klp_run state-downgrade $A klp apply --rpm "$R/klp-state-1-1.x86_64.rpm" --previous-rpm "$R/klp-state-2-1.x86_64.rpm"
refused state-downgrade $? "not compatible with the already installed livepatches" "klp_state_v2" "klp-state-2" "klp_state_v2"

# A patch without the state may not replace one with it either: back to
# no patch before the next family.
klp_run state-off $A klp disable klp_state_v2 && $RPM -e klp-state >>/tmp/state-off.out 2>&1
ok state-off $? "" "" "console=ttyS0"

# --- Meta's packaging: klp-<krel>, Version hotfixN, /var/lib/kpatch, the
# module named per hotfix, Requires: kpatch, %post kpatch load --all -------
set -- "$R/$META-hotfix1-1.x86_64.rpm"
klp_run meta-1 $A klp apply --nodeps --level 1 --rpm "$1"
ok meta-1 $? "klp_cmdline_1" "$META-hotfix1" "klp_level=1"
klp_run meta-2 $A klp apply --nodeps --level 2 --rpm "$R/$META-hotfix2-1.x86_64.rpm" --previous-rpm "$1"
ok meta-2 $? "klp_cmdline_2" "$META-hotfix2" "klp_level=2"
klp_run meta-back $A klp apply --nodeps --level 1 --rpm "$1" --previous-rpm "$R/$META-hotfix2-1.x86_64.rpm"
ok meta-back $? "klp_cmdline_1" "$META-hotfix1" "klp_level=1"

# --- Red Hat's kpatch-patch (/usr/lib/kpatch, %post kpatch install) --------
set -- "$R"/kpatch-patch-*.rpm
klp_run kpatch $A klp apply --nodeps --rpm "$1" --previous-rpm "$R/$META-hotfix1-1.x86_64.rpm"
ok kpatch $? "kpatch_cmdline_1" "$KPATCH-1" "klp_level=1"

[ "$KLP_FAILED" = 0 ]
