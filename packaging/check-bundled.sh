#!/usr/bin/env bash
# The RPM's bundled(golang(...)) Provides must name exactly the Go modules
# linked into its binary, at their versions (go version -m), so scanners
# see every bundled library. Versions as Fedora writes them: v1.2.3 is
# 1.2.3; a pseudo-version v0.0.0-20191010083416-a7dc8b61c822 is
# 0^20191010083416ga7dc8b61c822. Usage: check-bundled.sh RPM
set -euo pipefail
rpm=$1
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
rpm2cpio "$rpm" | (cd "$root" && cpio -idm --quiet ./usr/bin/klp-agent)
want=$(go version -m "$root/usr/bin/klp-agent" | awk '$1 == "dep" { print $2, $3 }' |
	sed -E 's/\+incompatible$//; s/ v([0-9]+)\.0\.0-([0-9]{14})-([0-9a-f]{12})$/ \1^\2g\3/; s/ v/ /' |
	awk '{ printf "bundled(golang(%s)) = %s\n", $1, $2 }' | sort)
got=$(rpm -qp --provides "$rpm" | grep '^bundled(golang(' | sort)
if [ "$got" != "$want" ]; then
	echo "check-bundled: the spec's bundled Provides differ from the binary's modules (- spec, + binary):" >&2
	diff <(echo "$got") <(echo "$want") >&2 || true
	exit 1
fi
echo "bundled(golang()) Provides OK ($(echo "$want" | wc -l) modules)"
