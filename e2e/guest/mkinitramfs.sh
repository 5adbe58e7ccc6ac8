#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Builds a busybox initramfs (newc cpio, gzip) for the e2e guest.
#
# Usage: e2e/guest/mkinitramfs.sh -o OUT.cpio.gz (-s SCENARIO | -r) [options]
#   -s FILE     scenario mode: FILE becomes /init-scenario, run by /init; the
#               guest prints its markers, then "KLP-E2E: DONE rc=N" and
#               powers off. /lib/klp-e2e.sh has helpers for it.
#   -r          rootfs mode: mount root= (default /dev/vda, ext4, virtio-blk)
#               and switch_root to systemd; see mkrootfs.sh. Implies the
#               modules for that (-m virtio_pci virtio_blk ext4 crc32c_generic).
#   -k FILE.ko  copy an (out-of-tree) module into /klp/ (repeatable)
#   -f SRC:DEST copy a file or directory into the initramfs at DEST (repeatable)
#   -m MODULE   a module of the cached kernel to insmod at boot, with its
#               dependencies, before the scenario / mount (repeatable)
# Needs e2e/setup.sh first (kernel modules cache); no root needed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"

usage() { klp_die "usage: $0 -o OUT (-s SCENARIO | -r) [-k KO]... [-f SRC:DEST]... [-m MODULE]..."; }

out='' scenario='' rootfs=0
kos=() files=() kmods=()
while getopts "o:s:rk:f:m:" opt; do
	case $opt in
	o) out=$OPTARG ;;
	s) scenario=$OPTARG ;;
	r) rootfs=1 ;;
	k) kos+=("$OPTARG") ;;
	f) files+=("$OPTARG") ;;
	m) kmods+=("$OPTARG") ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
if (($# != 0)) || [[ -z $out ]]; then
	usage
fi
if [[ -n $scenario && $rootfs == 1 ]] || [[ -z $scenario && $rootfs == 0 ]]; then
	klp_die "give exactly one of -s SCENARIO and -r"
fi
[[ -z $scenario || -f $scenario ]] || klp_die "scenario $scenario not found"
klp_load_env
busybox=$(command -v busybox) || klp_die "busybox missing: run e2e/setup.sh"
# A dynamically linked busybox would need its libraries in the initramfs.
if ldd "$busybox" >/dev/null 2>&1; then
	klp_die "$busybox is not static (install busybox-static)"
fi

start=$(klp_now)
stage=$(mktemp -d "${TMPDIR:-/tmp}/klp-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT
# The archive's "." becomes the guest's / (the kernel chmods it): 0755 as
# on any host, not mktemp's 0700, or no unprivileged process can open a
# file.
chmod 0755 "$stage"

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,lib,etc/klp-e2e,proc,sys,dev,tmp,run,klp}
install -m 0755 "$busybox" "$stage/bin/busybox"
while read -r applet; do
	[[ -e $stage/$applet ]] || ln -s /bin/busybox "$stage/$applet"
done < <("$busybox" --list-full)
install -m 0755 "$KLP_E2E_DIR/guest/init" "$stage/init"
install -m 0644 "$KLP_E2E_DIR/guest/klp-e2e.sh" "$stage/lib/klp-e2e.sh"

if ((rootfs)); then
	echo rootfs >"$stage/etc/klp-e2e/mode"
	# ext4 wants crc32c through the crypto API at mount time; nothing in
	# the initramfs can modprobe it on demand, so load it up front.
	kmods=(crc32c_generic ext4 virtio_pci virtio_blk "${kmods[@]}")
else
	echo scenario >"$stage/etc/klp-e2e/mode"
	install -m 0755 "$scenario" "$stage/init-scenario"
fi

for ko in "${kos[@]}"; do
	[[ -f $ko && $ko == *.ko ]] || klp_die "module file $ko not found"
	install -m 0644 "$ko" "$stage/klp/"
done

for spec in "${files[@]}"; do
	src=${spec%:*} dest=${spec##*:}
	[[ $spec == *:* && -e $src && $dest == /* ]] || klp_die "bad -f $spec (want SRC:/DEST)"
	if [[ -d $src ]]; then
		# Merge into DEST even if it exists (cp would nest src inside it).
		mkdir -p "$stage$dest"
		cp -a "$src/." "$stage$dest/"
	else
		mkdir -p "$stage$(dirname "$dest")"
		cp -a "$src" "$stage$dest"
	fi
done

# Kernel modules with their dependencies, in load order, from the cached
# kernel (not the host's): modprobe resolves, init insmods. Compressed
# modules (6.12 ships .ko.xz) are unpacked here: busybox insmod passes
# the file to the kernel as is, and the initramfs is gzipped anyway.
krel=$KLP_E2E_KREL
kroot=${KLP_E2E_MODULES%/lib/modules/*}
[[ $kroot/lib/modules/$krel == "$KLP_E2E_MODULES" ]] || klp_die "unexpected KLP_E2E_MODULES $KLP_E2E_MODULES"
declare -A seen=()
: >"$stage/etc/klp-e2e/modules.load"
for m in "${kmods[@]}"; do
	deps=$(modprobe -d "$kroot" -S "$krel" --show-depends "$m") || klp_die "module $m unknown to $krel"
	while read -r kind path _; do
		[[ $kind == insmod ]] || continue # "builtin NAME": nothing to load
		rel=${path#"$KLP_E2E_MODULES"/}
		[[ -z ${seen[$rel]:-} ]] || continue
		seen[$rel]=1
		dest=$stage/lib/modules/$krel/${rel%.ko*}.ko
		mkdir -p "$(dirname "$dest")"
		case $rel in
		*.ko) install -m 0644 "$path" "$dest" ;;
		*.ko.xz) xz -dc "$path" >"$dest" || klp_die "xz -d $path failed" ;;
		*.ko.gz) gzip -dc "$path" >"$dest" || klp_die "gzip -d $path failed" ;;
		*.ko.zst) zstd -dcq "$path" >"$dest" || klp_die "zstd -d $path failed" ;;
		*) klp_die "module $path: unknown file type" ;;
		esac
		echo "/lib/modules/$krel/${dest#"$stage/lib/modules/$krel/"}" >>"$stage/etc/klp-e2e/modules.load"
	done <<<"$deps"
done
if ((${#seen[@]})); then
	for f in modules.order modules.builtin modules.builtin.modinfo; do
		[[ ! -f $KLP_E2E_MODULES/$f ]] || install -m 0644 "$KLP_E2E_MODULES/$f" "$stage/lib/modules/$krel/$f"
	done
	depmod -b "$stage" "$krel"
fi

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z |
	cpio --quiet -o -0 -H newc -R 0:0 --reproducible) | gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
klp_log "$out ($(stat -c %s "$out") bytes, ${#seen[@]} kernel modules, $(klp_elapsed "$start")s)"
