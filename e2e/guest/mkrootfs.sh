#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Builds an ext4 disk image of a minimal Debian 12 with systemd, rpm and
# kmod for the e2e guest (boot it with an initramfs from
# `mkinitramfs.sh -r` and `run-qemu.sh -d IMAGE`).
#
# Usage: e2e/guest/mkrootfs.sh -o IMAGE [-O OVERLAY_DIR]... [-S SIZE]
#   -O DIR   copy DIR's contents over the root (repeatable, in order), e.g.
#            DIR/etc/klp-e2e/scenario (executable) is run once the guest
#            reaches multi-user; its markers, "KLP-E2E: DONE rc=N", poweroff.
#   -S SIZE  image size for mke2fs (default 1200M; the file is sparse)
# The debootstrap tree is cached in $KLP_E2E_CACHE/rootfs-<hash>, the hash
# covering this script, e2e/guest/rootfs/, the mirror and package list;
# building it takes about a minute, an image from it seconds.
# Env: KLP_E2E_MIRROR (http://deb.debian.org/debian), KLP_E2E_ROOTFS_PACKAGES
# (extra packages, comma-separated). Root is needed (debootstrap, ownership).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"

out='' size=1200M
overlays=()
while getopts "o:O:S:" opt; do
	case $opt in
	o) out=$OPTARG ;;
	O) overlays+=("$OPTARG") ;;
	S) size=$OPTARG ;;
	*) klp_die "usage: $0 -o IMAGE [-O OVERLAY_DIR]... [-S SIZE]" ;;
	esac
done
shift $((OPTIND - 1))
if (($# != 0)) || [[ -z $out ]]; then
	klp_die "usage: $0 -o IMAGE [-O OVERLAY_DIR]... [-S SIZE]"
fi
[[ $(id -u) == 0 ]] || klp_die "must run as root (debootstrap, file ownership in the image)"
for d in "${overlays[@]}"; do
	[[ -d $d ]] || klp_die "overlay $d is not a directory"
done
klp_load_env

mirror=${KLP_E2E_MIRROR:-http://deb.debian.org/debian}
packages=systemd,systemd-sysv,rpm,kmod,udev,iproute2${KLP_E2E_ROOTFS_PACKAGES:+,$KLP_E2E_ROOTFS_PACKAGES}
suite=bookworm
files=$KLP_E2E_DIR/guest/rootfs

# The cache key: everything that shapes the base tree.
key=$({
	cat "$0"
	(cd "$files" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
	printf '%s\n' "$mirror" "$packages" "$suite"
} | sha256sum | cut -c1-16)
base=$KLP_E2E_CACHE/rootfs-$key
start=$(klp_now)

mkdir -p "$KLP_E2E_CACHE"
exec 8>"$KLP_E2E_CACHE/.rootfs.lock"
flock 8
if [[ ! -d $base ]]; then
	klp_log "debootstrap $suite ($packages) into $base"
	tmp=$(mktemp -d "$KLP_E2E_CACHE/.rootfs.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	# Its .debs are kept beside the kernel's (setup.sh's KLP_E2E_DEBS): a
	# download cache, reused while their checksums match the archive's.
	debs=${KLP_E2E_DEBS:-$KLP_E2E_CACHE/debs}/debootstrap
	mkdir -p "$debs"
	debootstrap --variant=minbase --cache-dir="$debs" --include="$packages" "$suite" "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
		tail -n 30 "$tmp.log" >&2
		klp_die "debootstrap failed (log $tmp.log)"
	}
	rm -f "$tmp.log"
	cp -a "$files/." "$tmp/"
	# Serial login for debugging without a password; a test VM only.
	chroot "$tmp" passwd -qd root
	printf '127.0.0.1 localhost\n127.0.1.1 klp-e2e\n' >"$tmp/etc/hosts"
	chroot "$tmp" systemctl --quiet enable systemd-networkd.service klp-e2e-ready.service
	# A fixed machine-id: an empty one means "first boot", where
	# systemd-firstboot may prompt on the console and hang the boot.
	[[ -s $tmp/etc/machine-id ]] || chroot "$tmp" systemd-machine-id-setup
	rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
	mv "$tmp" "$base"
	trap - EXIT
	klp_log "base rootfs ready ($(du -sh "$base" | cut -f1), $(klp_elapsed "$start")s)"
fi
flock -u 8

# Stage with hard links (cheap; same file system as the cache), then copy
# overlay files with --remove-destination so the cached base is never
# written through a link.
stage=$(mktemp -d "$KLP_E2E_CACHE/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
cp -al "$base/." "$stage/"
mkdir -p "$stage/lib/modules"
cp -al "$KLP_E2E_MODULES" "$stage/lib/modules/"
mkdir -p "$stage/usr/local/lib"
cp -a --remove-destination "$KLP_E2E_DIR/guest/klp-e2e.sh" "$stage/usr/local/lib/klp-e2e.sh"
for d in "${overlays[@]}"; do
	cp -a --remove-destination "$d/." "$stage/"
done

mkdir -p "$(dirname "$out")"
rm -f "$out.tmp"
mke2fs -q -F -t ext4 -L klp-e2e -d "$stage" "$out.tmp" "$size" >/dev/null
mv "$out.tmp" "$out"
klp_log "$out ($(du -h "$out" | cut -f1) used of $size, $(klp_elapsed "$start")s)"
