# shellcheck shell=bash
# SPDX-License-Identifier: GPL-2.0
# Helpers sourced by the e2e host scripts (not by the guest).

# shellcheck disable=SC2034 # used by the scripts that source this
KLP_E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KLP_E2E_CACHE=${KLP_E2E_CACHE:-/var/cache/klp-agent-e2e}
KLP_E2E_PROG=${KLP_E2E_PROG:-$(basename "$0" .sh)}

klp_log() { printf '%s: %s\n' "$KLP_E2E_PROG" "$*" >&2; }
klp_die() {
	klp_log "error: $*"
	exit 1
}

# klp_env_file: the env file setup.sh wrote for KLP_E2E_LINE, the kernel
# line (6.1, the default, or 6.12); keep in step with setup.sh.
klp_env_file() {
	local line=${KLP_E2E_LINE:-6.1}
	case $line in
	6.1) echo "$KLP_E2E_CACHE/current.env" ;;
	6.12) echo "$KLP_E2E_CACHE/current-$line.env" ;;
	*) klp_die "unknown KLP_E2E_LINE '$line' (known: 6.1 6.12)" ;;
	esac
}

# Fills KLP_E2E_KREL/VMLINUZ/MODULES/HEADERS from the env file of the
# kernel line KLP_E2E_LINE (written by setup.sh); a variable already set in
# the environment wins. The file is parsed, not sourced, so only these
# four keys can come from it.
klp_load_env() {
	local f key val
	f=$(klp_env_file) || exit 1
	if [[ -r $f ]]; then
		while IFS='=' read -r key val; do
			case $key in
			KLP_E2E_KREL | KLP_E2E_VMLINUZ | KLP_E2E_MODULES | KLP_E2E_HEADERS)
				[[ -n ${!key:-} ]] || printf -v "$key" '%s' "$val"
				;;
			esac
		done <"$f"
	fi
	local v
	for v in KLP_E2E_KREL KLP_E2E_VMLINUZ KLP_E2E_MODULES KLP_E2E_HEADERS; do
		[[ -n ${!v:-} ]] || klp_die "$v unknown: run e2e/setup.sh ${KLP_E2E_LINE:-6.1} (as root) first ($f)"
		export "${v?}"
	done
}

# Seconds since the epoch with milliseconds, for stage timings.
klp_now() { date +%s.%3N; }
# klp_elapsed START -> "12.3"
klp_elapsed() { awk -v s="$1" -v e="$(klp_now)" 'BEGIN { printf "%.1f", e - s }'; }
