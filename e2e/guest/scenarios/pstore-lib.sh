# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# ramoops in guest memory the test keeps across boots (qemu maps the guest's
# RAM from a file; the kernel reserves the region with memmap=): the kernel's
# own crash record, as a host without kdump keeps it.
pstore_setup() {
	# The address and size come from the test (memmap= on the command line
	# reserves the same region).
	set -- $(cat /etc/pstore-ramoops)
	if insmod /klp/ramoops.ko mem_address="$1" mem_size="$2" record_size="$3" ecc=0; then
		klp_pass ramoops "ramoops at $1 size $2 record $3"
	else
		klp_fail ramoops "insmod ramoops failed: $(dmesg | grep -i ramoops | tail -n 3 | tr '\n' ' ')"
		return 1
	fi
	mkdir -p /sys/fs/pstore
	mount -t pstore pstore /sys/fs/pstore
}
