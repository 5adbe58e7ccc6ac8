#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Prepares a Debian 12 amd64 machine (root) for the real-kernel e2e tests:
# installs the tools and, for each kernel line tested, unpacks the headers
# of its current ABI (without installing them) and that kernel's image and
# modules into a cache.
# Idempotent and safe to run concurrently (one flock); a warm run makes no
# network requests.
#
# Kernel lines (each resolved from its metapackage at set-up time, never
# pinned; the ABI moves with every security upload):
#   6.1   linux-image-amd64       -> linux-image-6.1.0-NN-amd64      (Debian 12's default)
#   6.12  linux-image-6.12-amd64  -> linux-image-6.12.NNN+deb12-amd64 (bookworm-security)
#
# Usage: e2e/setup.sh [LINE...]  (default: every line; KLP_E2E_CACHE overrides
#                                  /var/cache/klp-agent-e2e;
#                                  KLP_E2E_HEADERS_UNPACK=1 unpacks headers
#                                  even where dpkg has them installed;
#                                  KLP_E2E_DEBS, default ${KLP_E2E_CACHE}/debs,
#                                  keeps the downloaded kernel .debs)
# Result: per line an env file in ${KLP_E2E_CACHE} with KLP_E2E_KREL,
#         KLP_E2E_VMLINUZ, KLP_E2E_MODULES, KLP_E2E_HEADERS (KEY=value lines,
#         no quoting needed): current.env for 6.1 (the default line, the
#         file every older reader knows), current-6.12.env for 6.12.
#         Prints each prepared line's ABI on stdout, one per line.
set -euo pipefail

CACHE=${KLP_E2E_CACHE:-/var/cache/klp-agent-e2e}
export DEBIAN_FRONTEND=noninteractive

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%3N; }
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'; }

# line  image metapackage  ABI pattern  env file (keep in step with
# e2e/lib.sh klp_env_file and harness_test.go kernelEnvFor)
declare -A meta=([6.1]=linux-image-amd64 [6.12]=linux-image-6.12-amd64)
declare -A abi_re=([6.1]='^6\.1\.[0-9]+-[0-9]+-amd64$' [6.12]='^6\.12\.[0-9]+\+deb[0-9]+-amd64$')
declare -A env_file=([6.1]=current.env [6.12]=current-6.12.env)
all_lines=(6.1 6.12)

lines=("$@")
((${#lines[@]})) || lines=("${all_lines[@]}")
for l in "${lines[@]}"; do
	[[ -n ${meta[$l]:-} ]] || die "unknown kernel line '$l' (known: ${all_lines[*]})"
done

[[ $(id -u) == 0 ]] || die "must run as root (apt-get, dpkg)"
# The env files are read by shells and by non-shell parsers; keep paths plain.
[[ $CACHE =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "KLP_E2E_CACHE must be an absolute path of [A-Za-z0-9._/+-]: $CACHE"
[[ $(dpkg --print-architecture) == amd64 ]] || die "only amd64 hosts are supported (the guest is qemu-system-x86_64)"

mkdir -p "$CACHE"
# Two setups at once (parallel CI jobs) must not race on dpkg or the cache.
exec 9>"$CACHE/.setup.lock"
flock 9
start=$(now)

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

# resolve_abi METAPACKAGE: the ABI its linux-image-<ABI> dependency names.
resolve_abi() {
	apt-cache depends "$1" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { sub(/^linux-image-/, "", $2); print $2; exit }'
}
declare -A abi=()
for l in "${lines[@]}"; do
	a=$(resolve_abi "${meta[$l]}" || true)
	if [[ -z $a ]]; then
		apt_update
		a=$(resolve_abi "${meta[$l]}" || true)
	fi
	hint=''
	[[ $l == 6.1 ]] || hint=' (is bookworm-security in the apt sources?)'
	[[ $a =~ ${abi_re[$l]} ]] || die "cannot resolve the $l kernel ABI from 'apt-cache depends ${meta[$l]}' (got '$a')$hint"
	abi[$l]=$a
	log "kernel $l: ABI $a (from ${meta[$l]})"
done

# The headers are not installed: linux-headers-<6.12 ABI> Depends on its
# linux-image, whose postinst builds an initramfs twice (about 10 minutes of
# a fresh machine's first run, for a kernel this host never boots). Each
# line's headers, common headers and kbuild .debs are unpacked into the
# cache instead (prepare, below); headers already installed by dpkg are used
# as they are. kbuild's prebuilt tools need libelf1; gcc-12 is the kernels'
# compiler. xz-utils: 6.12's modules ship as .ko.xz; mkinitramfs.sh unpacks
# them.
pkgs=(qemu-system-x86 rpm debootstrap kmod busybox-static cpio e2fsprogs gcc gcc-12 make
	util-linux xz-utils libelf1)
missing=()
for p in "${pkgs[@]}"; do
	[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
	s=$(now)
	log "installing ${missing[*]}"
	if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
		# A failed install after fresh lists is real; with old lists retry once.
		((apt_updated)) && die "apt-get install failed"
		apt_update
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	log "installed in $(elapsed "$s")s"
fi

# The kernel .debs, kept: a file is reused while apt names the same file
# with the same size and sha256 (a new upload has a new name), so a second
# clean root downloads nothing it already has.
DEBS=${KLP_E2E_DEBS:-$CACHE/debs}
[[ $DEBS =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "KLP_E2E_DEBS must be an absolute path of [A-Za-z0-9._/+-]: $DEBS"
mkdir -p "$DEBS"

# print_uris PKG...: sets URIS to apt-get download --print-uris's lines,
# "'URI' FILE SIZE SHA256:HEX" per package (lists refreshed once on failure).
print_uris() {
	if ! URIS=$(apt-get download --print-uris -qq "$@" 2>/dev/null) || [[ -z $URIS ]]; then
		((apt_updated)) && die "apt-get download --print-uris $* failed"
		apt_update
		URIS=$(apt-get download --print-uris -qq "$@") || die "apt-get download --print-uris $* failed"
	fi
}

# fetch_debs PKG...: sets DEB_FILES to the packages' .debs in $DEBS,
# downloading those not already there whole.
fetch_debs() {
	local uri file size sum ver need=()
	DEB_FILES=()
	print_uris "$@"
	while read -r uri file size sum; do
		[[ $file =~ ^[A-Za-z0-9._+%~-]+\.deb$ && $sum == SHA256:* ]] || die "unexpected apt-get --print-uris line: $uri $file $size $sum"
		DEB_FILES+=("$DEBS/$file")
		if [[ -f $DEBS/$file && $(stat -c %s "$DEBS/$file") == "$size" ]] &&
			sha256sum --status -c <<<"${sum#SHA256:}  $DEBS/$file"; then
			touch "$DEBS/$file"
			continue
		fi
		rm -f "$DEBS/$file"
		# NAME_VERSION_ARCH.deb, the epoch's colon as %3a.
		ver=${file#*_}
		ver=${ver%_*}
		need+=("${file%%_*}=${ver//%3a/:}")
	done <<<"$URIS"
	if ((${#need[@]})); then
		# As root apt-get download would warn that it cannot sandbox to _apt.
		(cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "${need[@]}") || die "apt-get download ${need[*]} failed"
	fi
	for file in "${DEB_FILES[@]}"; do
		[[ -f $file ]] || die "apt-get download left no $file"
	done
}

# unpacked_depends ROOT: the Depends and Pre-Depends of the .debs unpacked
# into ROOT (their control files kept in ROOT/.control), as one relation
# list for apt-get satisfy. Left out, as apt would: relations that the
# unpacked packages satisfy among themselves, and the kernel image (6.12's
# headers Depend on it: this host never boots it, and its postinst would
# build initramfs images).
unpacked_depends() {
	awk '
	/^[^ \t]/ { field = "" }
	/^Package:/ { unpacked[$2] = 1 }
	/^(Pre-)?Depends:/ { field = "d"; sub(/^[^:]*:[ \t]*/, ""); rel[++n] = $0; next }
	/^[ \t]/ && field == "d" { rel[n] = rel[n] " " $0 }
	END {
		out = ""
		for (i = 1; i <= n; i++) {
			k = split(rel[i], groups, /,/)
			for (j = 1; j <= k; j++) {
				g = groups[j]
				gsub(/^[ \t]+|[ \t]+$/, "", g)
				if (g == "") continue
				m = split(g, alts, /\|/)
				skip = 0
				for (a = 1; a <= m; a++) {
					name = alts[a]
					gsub(/^[ \t]+/, "", name)
					sub(/[ \t(:].*/, "", name)
					if (name in unpacked || name ~ /^linux-image-/) skip = 1
				}
				if (!skip && !(g in seen)) { seen[g] = 1; out = out (out == "" ? "" : ", ") g }
			}
		}
		print out
	}' "$1"/.control/*
}

# install_depends ROOT: installs what the .debs unpacked into ROOT depend
# on (6.12's kbuild needs pahole; both lines' headers, the kernel's
# compiler package). Checked on every run, cached tree or not: dpkg-deb -x
# skips Depends, and a machine that happened to have them hid the step.
install_depends() {
	local root=$1 rel s
	rel=$(unpacked_depends "$root")
	[[ -n $rel ]] || return 0
	if apt-get -s -qq satisfy "$rel" 2>/dev/null | grep -q '^Inst '; then
		s=$(now)
		log "installing what $(basename "$root") depends on: $rel"
		if ! apt-get satisfy -y -qq --no-install-recommends "$rel" >/dev/null; then
			((apt_updated)) && die "apt-get satisfy '$rel' failed"
			apt_update
			apt-get satisfy -y -qq --no-install-recommends "$rel" >/dev/null || die "apt-get satisfy '$rel' failed"
		fi
		log "installed in $(elapsed "$s")s"
	elif ! apt-get -s -qq satisfy "$rel" >/dev/null 2>&1; then
		apt_update
		apt-get satisfy -y -qq --no-install-recommends "$rel" >/dev/null || die "apt-get satisfy '$rel' failed"
	fi
}

# headers_for ABI: the kernel headers to build modules against: dpkg's, if
# installed (and KLP_E2E_HEADERS_UNPACK is not 1), else the headers, common
# headers and kbuild .debs unpacked under the cache (never installed), with
# the packages they depend on installed.
headers_for() {
	local a=$1 root=$CACHE/headers-$1
	local installed=/usr/src/linux-headers-$a
	if [[ ${KLP_E2E_HEADERS_UNPACK:-0} != 1 && -f $installed/Makefile &&
		$(dpkg-query -W -f='${Status}' "linux-headers-$a" 2>/dev/null) == "install ok installed" ]]; then
		HEADERS=$installed
		return
	fi
	HEADERS=$root/usr/src/linux-headers-$a
	# A tree unpacked before its control files were kept is unpacked anew.
	if [[ ! -f $root/.complete || ! -d $root/.control ]]; then
		unpack_headers "$a" "$root"
	fi
	install_depends "$root"
}

# unpack_headers ABI ROOT: the headers, common headers and kbuild .debs of
# ABI unpacked into ROOT, their control files in ROOT/.control.
unpack_headers() {
	local a=$1 root=$2 s tmp2 deps deb
	s=$(now)
	# The .debs this headers package needs from the kernel's source
	# package: its common headers and kbuild (scripts, objtool).
	mapfile -t deps < <(apt-cache depends "linux-headers-$a" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-(headers|kbuild)-/ { print $2 }')
	log "kernel headers $a: downloading linux-headers-$a ${deps[*]} (unpacked, not installed)"
	fetch_debs "linux-headers-$a" "${deps[@]}"
	tmp2=$(mktemp -d "$CACHE/.hdr.XXXXXX")
	mkdir "$tmp2/root" "$tmp2/root/.control"
	for deb in "${DEB_FILES[@]}"; do
		dpkg-deb -x "$deb" "$tmp2/root"
		dpkg-deb -f "$deb" >"$tmp2/root/.control/$(dpkg-deb -f "$deb" Package)"
	done
	local mk=$tmp2/root/usr/src/linux-headers-$a/Makefile
	[[ -f $mk ]] || die "linux-headers-$a has no Makefile"
	# Its Makefile includes the common headers' by absolute path.
	sed -i "s|^include /usr/src/|include $root/usr/src/|" "$mk"
	grep -q "^include $root/usr/src/" "$mk" || die "unexpected $mk: $(head -c 200 "$mk")"
	rm -rf "$root"
	mv "$tmp2/root" "$root"
	touch "$root/.complete"
	rm -rf "$tmp2"
	log "kernel headers $a: $root/usr/src/linux-headers-$a ready in $(elapsed "$s")s"
}

# prepare LINE: unpack the line's kernel into the cache, write its env file.
prepare() {
	local l=$1 a=${abi[$1]}
	local HEADERS
	headers_for "$a"
	local headers=$HEADERS
	[[ -f $headers/Makefile ]] || die "$headers is missing"
	local kdir=$CACHE/$a
	local vmlinuz=$kdir/boot/vmlinuz-$a
	local modules=$kdir/lib/modules/$a
	if [[ ! -f $vmlinuz || ! -f $modules/modules.dep ]]; then
		local s deb
		s=$(now)
		log "kernel $l: downloading linux-image-$a"
		fetch_debs "linux-image-$a"
		deb=${DEB_FILES[0]}
		log "kernel $l: $(basename "$deb"), $(($(stat -c %s "$deb") / 1048576)) MiB, in $(elapsed "$s")s; unpacking"
		tmp=$(mktemp -d "$CACHE/.dl.XXXXXX")
		trap 'rm -rf "$tmp"' EXIT
		# The image is data here (qemu boots it; depmod reads its modules):
		# nothing of it runs on this host, so its Depends (initramfs-tools,
		# linux-base) are not installed.
		dpkg -x "$deb" "$tmp/root"
		# The .deb has no modules.dep (postinst makes it); modprobe/initramfs
		# need it. depmod reads .ko.xz (6.12) as well as .ko (6.1).
		depmod -b "$tmp/root" "$a"
		[[ -f $tmp/root/boot/vmlinuz-$a && -f $tmp/root/lib/modules/$a/modules.dep ]] ||
			die "unexpected layout in linux-image-$a"
		# Rename last so a half-extracted tree is never taken for a complete one.
		rm -rf "$kdir"
		mv "$tmp/root" "$kdir"
		rm -rf "$tmp"
		trap - EXIT
		log "kernel $l: $kdir ready in $(elapsed "$s")s"
	fi

	local f=${env_file[$l]} env_tmp
	env_tmp=$(mktemp "$CACHE/.$f.XXXXXX")
	printf '%s\n' \
		"KLP_E2E_KREL=$a" \
		"KLP_E2E_VMLINUZ=$vmlinuz" \
		"KLP_E2E_MODULES=$modules" \
		"KLP_E2E_HEADERS=$headers" >"$env_tmp"
	chmod 0644 "$env_tmp"
	mv "$env_tmp" "$CACHE/$f"
	log "kernel $l: wrote $CACHE/$f"
}
for l in "${lines[@]}"; do
	prepare "$l"
done
log "done in $(elapsed "$start")s"
for l in "${lines[@]}"; do
	printf '%s\n' "${abi[$l]}"
done
