#!/usr/bin/env bash
# The README's first command (`make demo`, as root): the whole system on a
# built-in default. A Debian 12 guest boots under systemd in qemu on the
# cached Debian kernel, installs the agent's own RPM with rpm, and the unit
# polls signed manifests served by nginx on the host: level 1 applied, the
# upgrade to 2, `klp-agent hold` keeping the next level off until `klp-agent
# resume` (with `status --check`'s exit codes), a faulty 3 rolled back to 2
# and blocked (first, enrolled held, a rollback with nothing applied
# refused by the daemon), a kill-switch boot, 2 re-applied after a reboot, `klp-agent history`,
# `status --check` failing once the daemon is stopped, and the
# full removal (`rpm -e klp-agent` alone refused, `klp-agent uninstall`
# erasing the livepatch package with the agent). It is TestSystemRealKernel (the same assertions CI runs); this
# script shows what the guest's `klp-agent status` and `journalctl -u
# klp-agent` said, and a summary with timings.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=${KLP_DEMO_OUT:-/tmp/klp-demo}
rm -rf "$out"
mkdir -p "$out"
cd "$repo"
echo "== setting up the kernel, headers and guest image (cached after the first run)"
e2e/setup.sh 6.1
echo "== running the demo (three guest boots under TCG; a few minutes; each step below as the guest reports it)"
# go test -v streams the harness's progress lines (each guest step as the
# guest prints it); the whole log is kept in test.log.
progress() {
	local start=$SECONDS line
	while IFS= read -r line; do
		case $line in
		*"progress "*) line=${line#*progress } ;;
		*"guest "*" ran "*) line=${line#*_test.go:*: } ;;
		*) continue ;;
		esac
		printf '[%3dm%02ds] %s\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) "$line"
	done
}
if ! KLP_DEMO_OUT=$out go test -tags e2e -count=1 -timeout 40m -run '^TestSystemRealKernel$' -v ./e2e/ 2>&1 | tee "$out/test.log" | progress; then
	grep -E -- '--- FAIL|_test.go:[0-9]+:' "$out/test.log" | tail -n 40 || true
	echo "demo FAILED: full log in $out/test.log" >&2
	exit 1
fi
show() { printf '\n== %s\n' "$1"; }
show "klp-agent status in the guest, after the faulty level 3 was rolled back (boot A)"
cat "$out/status-A.txt"
show "host controls in the guest (boot A): enrolled held, rollback with nothing applied (the daemon refuses), resume; status --check, hold, poll, resume"
for f in hold-enrol rollback-refused resume-enrol up-to-date hold poll-held check-held resume check-blocked; do
	if [ -f "$out/$f.txt" ]; then printf '%-18s %s\n' "$f:" "$(tr '\n' ' ' <"$out/$f.txt")"; fi
done
show "journalctl -u klp-agent in the guest (boot A; transitions only)"
grep -E 'applied|good|rolled back|blocked|reload|oops report|held|resumed' "$out/journal-A.txt" | cut -c1-200 || true
show "journalctl -u klp-agent after the reboot (boot B)"
grep -E 're-applied|applied|manifest version|good' "$out/journal-B.txt" | head -n 8 | cut -c1-200 || true
show "klp-agent history in the guest (boot B)"
cut -c1-200 "$out/history.txt"
show "rpm -e klp-agent alone (refused by its %preun)"
cat "$out/rpm-e.err"
show "systemctl stop klp-agent, then klp-agent status --check (exit 4: the daemon is not running)"
cat "$out/check-stopped.txt"
show "klp-agent uninstall"
cat "$out/uninstall.out"
show "/proc/cmdline after klp-agent uninstall (no patch)"
cat "$out/cmdline-after-erase"
echo
cat "$out/summary.txt"
