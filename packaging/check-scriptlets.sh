#!/usr/bin/env bash
# Runs the RPM's scriptlets against stub systemctl, systemd-tmpfiles,
# journalctl and klp-agent that record their arguments, and checks what an
# install, an upgrade and an erase ask of systemd: presets decide (never
# `enable`), nothing is started on install (Fedora's guidelines), an
# upgrade try-restarts, an erase disables and stops; and the final erase
# is refused, before systemd is touched, while `klp-agent uninstall --check`
# says livepatch packages would be left. Usage: check-scriptlets.sh RPM
set -euo pipefail
rpm=$1
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
for cmd in systemctl systemd-tmpfiles journalctl klp-agent; do
	printf '#!/bin/sh\necho "%s $*" >>"%s/log"\n' "$cmd" "$stub" >"$stub/$cmd"
	chmod +x "$stub/$cmd"
done
# uninstall --check answers as the state would: KLP_LEFT=1, packages left.
printf '[ "${KLP_LEFT:-0}" = 0 ] || { echo "klp-agent: erasing klp-agent alone would leave its livepatch packages installed (klp-cmdline): ... run klp-agent uninstall instead" >&2; exit 1; }\n' >>"$stub/klp-agent"
# The scriptlet names the binary by its path; run the stub instead.
scriptlet() { rpm -qp --qf "%{$1}" "$rpm" | sed "s|/usr/bin/klp-agent|$stub/klp-agent|g"; }
run() { # TAG ARG: the scriptlet with $1=ARG; its systemd and klp-agent calls, then "exit N"
	: >"$stub/log"
	rc=0
	scriptlet "$1" | PATH="$stub:$PATH" sh -s "$2" 2>"$stub/stderr" || rc=$?
	grep -E '^(systemctl|klp-agent) ' "$stub/log" | sed 's/ >.*//' || true
	echo "exit $rc"
}
fail() { echo "check-scriptlets: $*" >&2; exit 1; }
expect() { # WHAT GOT WANT
	[ "$2" = "$3" ] || fail "$1: calls
$2
want
$3"
}
expect "install (%post 1)" "$(run POSTIN 1)" "systemctl --no-reload preset klp-agent.service klp-agent-guard.service
systemctl daemon-reload
exit 0"
expect "upgrade (%post 2)" "$(run POSTIN 2)" "systemctl daemon-reload
exit 0"
expect "upgrade (%postun 1)" "$(run POSTUN 1)" "systemctl daemon-reload
systemctl try-restart klp-agent.service klp-agent-guard.service
exit 0"
expect "upgrade (%preun 1)" "$(run PREUN 1)" "exit 0"
expect "erase (%preun 0)" "$(run PREUN 0)" "klp-agent uninstall --check
systemctl --no-reload disable --now klp-agent.service klp-agent-guard.service
exit 0"
expect "erase with livepatch packages left (%preun 0)" "$(KLP_LEFT=1 run PREUN 0)" "klp-agent uninstall --check
exit 1"
grep -q 'klp-agent uninstall' "$stub/stderr" || fail "the refused erase does not name klp-agent uninstall"
expect "erase (%postun 0)" "$(run POSTUN 0)" "systemctl daemon-reload
exit 0"
scriptlet POSTIN | grep -v '^[[:space:]]*#' | grep -qE 'enable --now|systemctl[^|;]* (start|restart)' && fail "%post starts the unit"
echo "rpm scriptlets OK (presets enable, nothing starts; a bare erase that would leave livepatch packages is refused)"
