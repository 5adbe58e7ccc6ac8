# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
# Shared set-up for the agent scenarios: the persistent disk (state dir and
# rpm database survive reboots, as on a real host), the real rpm, and the
# daemon started in the background with its log on the console and disk
# (a scenario without a disk calls agent_rpm alone and sets AGENT_LOG_DIR).
. /lib/klp-e2e.sh
export PATH=/usr/local/bin:$PATH HOME=/root
A=/usr/bin/klp-agent
RPM=/usr/local/bin/rpm

agent_disk() {
	mkdir -p /mnt/disk /var/lib
	if ! mount -t ext4 /dev/vda /mnt/disk; then
		klp_fail disk "cannot mount /dev/vda"
		return 1
	fi
	# Bind mounts, not symlinks: rpm resolves its database path itself.
	mkdir -p /mnt/disk/klp-agent /mnt/disk/rpm /mnt/disk/crash /var/lib/klp-agent /var/lib/rpm /var/crash
	mount -o bind /mnt/disk/klp-agent /var/lib/klp-agent
	mount -o bind /mnt/disk/rpm /var/lib/rpm
	# Where kdump-tools leaves dumps (the test writes one after a crash).
	mount -o bind /mnt/disk/crash /var/crash
	agent_rpm
}

# agent_rpm: the real rpm's database in /var/lib/rpm (on the disk after
# agent_disk, else in the initramfs) and a tmpfs for installed modules.
agent_rpm() {
	# The initramfs root reports no free space, which rpm's disk space check
	# refuses; installed modules go to a tmpfs, as on a host's /usr.
	mkdir -p /usr/lib/klp-agent /var/lib/rpm /var/lib/klp-agent && mount -t tmpfs tmpfs /usr/lib/klp-agent
	if [ ! -e /var/lib/rpm/rpmdb.sqlite ] && ! $RPM --dbpath /var/lib/rpm --initdb >/tmp/initdb.out 2>&1; then
		klp_fail rpmdb "rpm --initdb: $(tr '\n' ' ' </tmp/initdb.out)"
	fi
}

agent_net() {
	ip link set lo up
	ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
}

# agent_start LOGNAME: the daemon, logging to $AGENT_LOG_DIR/LOGNAME (the
# disk by default) and the console.
AGENT_LOG_DIR=${AGENT_LOG_DIR:-/mnt/disk}
agent_start() {
	# Created first: tail must not look before the daemon's shell has.
	: >"$AGENT_LOG_DIR/$1"
	$A run >"$AGENT_LOG_DIR/$1" 2>&1 &
	AGENT_PID=$!
	tail -f "$AGENT_LOG_DIR/$1" >/dev/console &
	TAIL_PID=$!
}

agent_stop() {
	kill -TERM "$AGENT_PID"
	wait "$AGENT_PID"
	AGENT_RC=$?
	kill "$TAIL_PID" 2>/dev/null
}

level_is() { [ "$(klp_level)" = "$1" ]; }

agent_end() {
	sync
	umount /var/lib/rpm /var/lib/klp-agent /var/crash /mnt/disk /usr/lib/klp-agent
	[ "$KLP_FAILED" = 0 ]
}
