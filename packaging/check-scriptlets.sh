#!/usr/bin/env bash
# Runs the RPM's scriptlets against stub systemctl, systemd-tmpfiles and
# journalctl that record their arguments, and checks what an install, an
# upgrade and an erase ask of systemd: presets decide (never `enable`), a
# unit the preset enabled is started on the first install only, an upgrade
# try-restarts, an erase disables and stops. Usage: check-scriptlets.sh RPM
set -euo pipefail
rpm=$1
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
for cmd in systemctl systemd-tmpfiles journalctl; do
	printf '#!/bin/sh\necho "%s $*" >>"%s/log"\n' "$cmd" "$stub" >"$stub/$cmd"
	chmod +x "$stub/$cmd"
done
# is-enabled answers as the preset left the unit: KLP_PRESET=disable.
printf '[ "$1 ${KLP_PRESET:-enable}" != "is-enabled disable" ]\n' >>"$stub/systemctl"
scriptlet() { rpm -qp --qf "%{$1}" "$rpm"; }
run() { # TAG ARG: the scriptlet with $1=ARG, its systemd calls on stdout
	: >"$stub/log"
	scriptlet "$1" | PATH="$stub:$PATH" sh -s "$2"
	grep -E '^systemctl ' "$stub/log" | sed 's/ >.*//' || true
}
fail() { echo "check-scriptlets: $*" >&2; exit 1; }
expect() { # WHAT GOT WANT
	[ "$2" = "$3" ] || fail "$1: systemctl calls
$2
want
$3"
}
expect "install (%post 1)" "$(run POSTIN 1)" "systemctl --no-reload preset klp-agent.service
systemctl daemon-reload
systemctl is-enabled --quiet klp-agent.service
systemctl start --no-block klp-agent.service"
expect "install, preset disable (%post 1)" "$(KLP_PRESET=disable run POSTIN 1)" "systemctl --no-reload preset klp-agent.service
systemctl daemon-reload
systemctl is-enabled --quiet klp-agent.service"
expect "upgrade (%post 2)" "$(run POSTIN 2)" "systemctl daemon-reload"
expect "upgrade (%postun 1)" "$(run POSTUN 1)" "systemctl daemon-reload
systemctl try-restart klp-agent.service"
expect "upgrade (%preun 1)" "$(run PREUN 1)" ""
expect "erase (%preun 0)" "$(run PREUN 0)" "systemctl --no-reload disable --now klp-agent.service"
expect "erase (%postun 0)" "$(run POSTUN 0)" "systemctl daemon-reload"
scriptlet POSTIN | grep -q 'enable --now' && fail "%post runs enable --now"
echo "rpm scriptlets OK (presets respected)"
