#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
# Builds e2e/modules against the cached kernel's headers and packages every
# livepatch into an RPM with rpmbuild (e2e/rpm/livepatch.spec).
#
# Usage: e2e/build-rpms.sh OUTDIR        (after e2e/setup.sh)
#        KLP_E2E_LINE=6.12 e2e/build-rpms.sh OUTDIR   (another kernel line)
# Writes into OUTDIR:
#   *.rpm       see the table below
#   ko/*.ko     every built module, including the non-packaged klp_victim
#   index.tsv   header line, then one line per RPM:
#               file rpm_name module level kernel_release sha256 size
# Env: KLP_E2E_FAKE_KREL (default 6.1.0-0-fake-amd64), KLP_E2E_RPM_ARCH (x86_64).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

(($# == 1)) || klp_die "usage: $0 OUTDIR"
out=$1
klp_load_env
krel=$KLP_E2E_KREL
fake_krel=${KLP_E2E_FAKE_KREL:-6.1.0-0-fake-amd64}
arch=${KLP_E2E_RPM_ARCH:-x86_64}
for v in "$krel" "$fake_krel"; do
	[[ $v =~ ^[A-Za-z0-9._+-]+$ ]] || klp_die "bad kernel release '$v'"
done
command -v rpmbuild >/dev/null || klp_die "rpmbuild missing: run e2e/setup.sh"

start=$(klp_now)
work=$(mktemp -d "${TMPDIR:-/tmp}/klp-rpms.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Build in a copy: kbuild writes next to the sources, and the repo must stay
# clean (and concurrent builds must not share objects).
# Sources only: a build in the source tree leaves objects, .cmd files and
# generated wrappers that must not leak into this one.
mkdir -p "$work/src"
for f in "$KLP_E2E_DIR"/modules/{Kbuild,Makefile,*.c,*.h}; do
	case $f in
	*.mod.c) continue ;;
	esac
	[[ $(<"$f") != '#include "klp_cmdline.c"' ]] || continue
	install -m 0644 "$f" "$work/src/"
done
klp_log "building modules against $KLP_E2E_HEADERS"
# The prefix map keeps the temporary path out of the objects (__FILE__ in
# WARNING lines, DWARF): the same sources give byte-identical modules.
if ! make -s -C "$KLP_E2E_HEADERS" M="$work/src" KCFLAGS="-ffile-prefix-map=$work/src/=" \
	-j"$(nproc)" modules >"$work/make.log" 2>&1; then
	cat "$work/make.log" >&2
	klp_die "module build failed"
fi
klp_log "modules built in $(klp_elapsed "$start")s"

mods=(klp_cmdline_1 klp_cmdline_2 klp_cmdline_3 klp_oops_3 klp_oops_4 klp_warn_4 kpatch_cmdline_1
	klp_victim klp_stall klp_notlp klp_crash klp_nonreplace klp_state_v1 klp_state_v2 klp_prefail)
mkdir -p "$out/ko"
for m in "${mods[@]}"; do
	ko=$work/src/$m.ko
	[[ -f $ko ]] || klp_die "$m.ko was not built"
	vm=$(modinfo -F vermagic "$ko")
	[[ $vm == "$krel "* ]] || klp_die "$m.ko vermagic '$vm' is not for $krel"
	install -m 0644 "$ko" "$out/ko/$m.ko"
done

# RHEL names kpatch-patch RPMs after the kernel's version-release with the
# dots turned into underscores (5.14.0-284.11.1.el9_2 -> kpatch-patch-
# 5_14_0-284_11_1); hyphens stay, and so does 6.12's '+' (kpatch-patch-
# 6_12_117+deb12-amd64), which rpm allows in a name.
kpatch_name=kpatch-patch-${krel//./_}
# Meta's klp.spec: Name klp-<uname -r>, Version hotfixN, the file named
# after the short kernel version (6.1.0-57-amd64 -> klp_6.1.0-57.ko) while
# the module inside is named per hotfix.
meta_name=klp-$krel
meta_file=klp_${krel%-*}.ko

# layout  rpm-name  version  kernel-release  module  file-tag
# file-tag keeps NEVRA-identical packages apart in OUTDIR: the faulty level 3
# is klp-cmdline-3-1 like the good one (it must upgrade level 2), both faulty
# level 4 variants are klp-cmdline-4-1 (each must upgrade level 3), and the
# other-kernel package is klp-cmdline-1-1 too.
rpms=(
	"klp klp-cmdline 1 $krel klp_cmdline_1 -"
	"klp klp-cmdline 2 $krel klp_cmdline_2 -"
	"klp klp-cmdline 3 $krel klp_cmdline_3 -"
	"klp klp-cmdline 3 $krel klp_oops_3 oops"
	"klp klp-cmdline 4 $krel klp_oops_4 oops"
	"klp klp-cmdline 4 $krel klp_warn_4 warn"
	"klp klp-stall 1 $krel klp_stall -"
	"klp klp-notlp 1 $krel klp_notlp -"
	"klp klp-crash 1 $krel klp_crash -"
	"klp klp-cmdline 1 $fake_krel klp_cmdline_1 otherkrel"
	"kpatch $kpatch_name 1 $krel kpatch_cmdline_1 -"
	"klp klp-cmdline 2 $krel klp_nonreplace nonreplace"
	"klp klp-cmdline 2 $krel klp_prefail prefail"
	"klp klp-state 1 $krel klp_state_v1 -"
	"klp klp-state 2 $krel klp_state_v2 -"
	"meta $meta_name hotfix1 $krel klp_cmdline_1 -"
	"meta $meta_name hotfix2 $krel klp_cmdline_2 -"
)

# Reproducible RPMs too: fixed build time, host and file mtimes.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
touch -d "@$SOURCE_DATE_EPOCH" "$work"/src/*.ko

index=$work/index.tsv
printf 'file\trpm_name\tmodule\tlevel\tkernel_release\tsha256\tsize\n' >"$index"
for row in "${rpms[@]}"; do
	read -r layout name level rel module tag <<<"$row"
	kofname=$module.ko
	[[ $layout != meta ]] || kofname=$meta_file
	if [[ $tag == - ]]; then
		file=$name-$level-1.$arch.rpm
	else
		file=$name-$level-1.$tag.$arch.rpm
	fi
	rpmbuild -bb --quiet \
		--define "_topdir $work/top" \
		--define "_rpmdir $work/rpms" \
		--define "_build_name_fmt $file" \
		--define "layout $layout" \
		--define "pkgname $name" \
		--define "level $level" \
		--define "krel $rel" \
		--define "module $module" \
		--define "kofname $kofname" \
		--define "kofile $work/src/$module.ko" \
		--define "karch $arch" \
		--define "use_source_date_epoch_as_buildtime 1" \
		--define "_buildhost klp-e2e" \
		"$KLP_E2E_DIR/rpm/livepatch.spec" >"$work/rpmbuild.log" 2>&1 ||
		{
			cat "$work/rpmbuild.log" >&2
			klp_die "rpmbuild failed for $file"
		}
	rpmf=$work/rpms/$file
	[[ -f $rpmf ]] || klp_die "rpmbuild did not write $file"

	# rpm must read back the NEVR we asked for (6.12's '+' included).
	nevr=$(rpm -qp --qf '%{NAME}-%{VERSION}-%{RELEASE}' "$rpmf")
	[[ $nevr == "$name-$level-1" ]] || klp_die "$file reads back as '$nevr', want $name-$level-1"
	# The payload must be exactly the built module, at the agreed path.
	case $layout in
	kpatch) path=/usr/lib/kpatch/$rel/$kofname ;;
	meta) path=/var/lib/kpatch/$rel/$kofname ;;
	*) path=/usr/lib/klp-agent/livepatches/$rel/$kofname ;;
	esac
	listed=$(rpm -qpl "$rpmf")
	[[ $listed == "$path" ]] || klp_die "$file lists '$listed', want $path"
	want=$(sha256sum <"$work/src/$module.ko")
	got=$(rpm2cpio "$rpmf" | cpio -i --quiet --to-stdout ".$path" | sha256sum)
	[[ $got == "$want" ]] || klp_die "$file: payload differs from $module.ko"

	sum=$(sha256sum <"$rpmf")
	size=$(stat -c %s "$rpmf")
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$file" "$name" "$module" "$level" "$rel" "${sum%% *}" "$size" >>"$index"
	install -m 0644 "$rpmf" "$out/$file"
done
# Last, so a reader never sees an index naming RPMs that are not there yet.
install -m 0644 "$index" "$out/index.tsv.tmp"
mv "$out/index.tsv.tmp" "$out/index.tsv"
klp_log "${#rpms[@]} RPMs in $out ($(klp_elapsed "$start")s)"
