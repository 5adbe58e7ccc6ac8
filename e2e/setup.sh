#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Prepares a Debian 12 amd64 machine (root) for the real-kernel e2e tests:
# installs the tools, the headers of Debian's current kernel ABI and unpacks
# that kernel's image and modules into a cache. Idempotent and safe to run
# concurrently (one flock); a warm run makes no network requests.
#
# Usage: e2e/setup.sh            (KLP_E2E_CACHE overrides /var/cache/klp-agent-e2e)
# Result: ${KLP_E2E_CACHE}/current.env with KLP_E2E_KREL, KLP_E2E_VMLINUZ,
#         KLP_E2E_MODULES, KLP_E2E_HEADERS (KEY=value lines, no quoting needed).
set -euo pipefail

CACHE=${KLP_E2E_CACHE:-/var/cache/klp-agent-e2e}
export DEBIAN_FRONTEND=noninteractive

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (apt-get, dpkg)"
# current.env is read by shells and by non-shell parsers; keep paths plain.
[[ $CACHE =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "KLP_E2E_CACHE must be an absolute path of [A-Za-z0-9._/+-]: $CACHE"
[[ $(dpkg --print-architecture) == amd64 ]] || die "only amd64 hosts are supported (the guest is qemu-system-x86_64)"

mkdir -p "$CACHE"
# Two setups at once (parallel CI jobs) must not race on dpkg or the cache.
exec 9>"$CACHE/.setup.lock"
flock 9

apt_updated=0
apt_update() {
	((apt_updated)) && return 0
	log "apt-get update"
	apt-get update -qq
	touch "$CACHE/.apt-updated"
	apt_updated=1
}

# Refresh the lists when neither our stamp nor any list is younger than a
# day (apt-get update leaves unchanged lists' mtimes alone, hence the
# stamp); the kernel ABI moves with security updates, and stale lists
# would name a package the mirror no longer has.
if [[ -z $(find "$CACHE/.apt-updated" /var/lib/apt/lists -maxdepth 1 \
	\( -name .apt-updated -o -name '*_Packages*' \) -mmin -1440 -print -quit 2>/dev/null) ]]; then
	apt_update
fi

resolve_abi() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { sub(/^linux-image-/, "", $2); print $2; exit }'
}
abi=$(resolve_abi || true)
if [[ -z $abi ]]; then
	apt_update
	abi=$(resolve_abi || true)
fi
[[ $abi =~ ^[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-amd64$ ]] || die "cannot resolve the kernel ABI from 'apt-cache depends linux-image-amd64' (got '$abi')"
log "kernel ABI $abi"

# No libelf-dev: linux-kbuild ships objtool prebuilt (it needs libelf1 only).
pkgs=(qemu-system-x86 rpm debootstrap kmod busybox-static cpio e2fsprogs gcc make
	util-linux "linux-headers-$abi")
missing=()
for p in "${pkgs[@]}"; do
	[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
		# A failed install after fresh lists is real; with old lists retry once.
		((apt_updated)) && die "apt-get install failed"
		apt_update
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
fi
headers=/usr/src/linux-headers-$abi
[[ -f $headers/Makefile ]] || die "$headers is missing after installing linux-headers-$abi"

kdir=$CACHE/$abi
vmlinuz=$kdir/boot/vmlinuz-$abi
modules=$kdir/lib/modules/$abi
if [[ ! -f $vmlinuz || ! -f $modules/modules.dep ]]; then
	tmp=$(mktemp -d "$CACHE/.dl.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	log "downloading linux-image-$abi"
	# As root apt-get download would warn that it cannot sandbox to _apt.
	if ! (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "linux-image-$abi"); then
		((apt_updated)) && die "apt-get download linux-image-$abi failed"
		apt_update
		(cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "linux-image-$abi")
	fi
	debs=("$tmp"/linux-image-"$abi"_*.deb)
	[[ -f ${debs[0]} ]] || die "apt-get download produced no .deb"
	dpkg -x "${debs[0]}" "$tmp/root"
	# The .deb has no modules.dep (postinst makes it); modprobe/initramfs need it.
	depmod -b "$tmp/root" "$abi"
	[[ -f $tmp/root/boot/vmlinuz-$abi && -f $tmp/root/lib/modules/$abi/modules.dep ]] ||
		die "unexpected layout in linux-image-$abi"
	# Rename last so a half-extracted tree is never taken for a complete one.
	rm -rf "$kdir"
	mv "$tmp/root" "$kdir"
	rm -rf "$tmp"
	trap - EXIT
fi

env_tmp=$(mktemp "$CACHE/.current.env.XXXXXX")
printf '%s\n' \
	"KLP_E2E_KREL=$abi" \
	"KLP_E2E_VMLINUZ=$vmlinuz" \
	"KLP_E2E_MODULES=$modules" \
	"KLP_E2E_HEADERS=$headers" >"$env_tmp"
chmod 0644 "$env_tmp"
mv "$env_tmp" "$CACHE/current.env"
log "wrote $CACHE/current.env"
printf '%s\n' "$abi"
