// SPDX-License-Identifier: GPL-2.0
/*
 * segv: a decoy for klp-agent's health-monitor tests. It makes the kernel
 * log a line about an unprivileged user process whose comm (chosen by the
 * caller, up to 15 bytes) looks like the start of a kernel crash report.
 *
 * Usage: segv UID NAME [div]
 *   Drops to UID (supplementary groups cleared, gid = uid = UID), renames
 *   itself NAME (prctl PR_SET_NAME), then
 *     - by default stores through a NULL pointer: the kernel logs, at
 *       KERN_INFO, "NAME[PID]: segfault at 0 ip ... sp ... error 6 in
 *       segv[...]";
 *     - with "div", divides by zero: "traps: NAME[PID] trap divide error
 *       ip:... sp:... error:0 in segv[...]".
 *   Exits 2 on a usage or set-up error; otherwise it dies of its signal.
 *
 * Usage: segv udp UID HOST PORT FILE
 *   Forges netconsole: drops to UID as above, then sends each line of FILE
 *   (with its newline, as netconsole's extended records end) as one UDP
 *   datagram to the IPv4 address HOST, port PORT. Exits 0 when all were
 *   sent, 2 on an error. (busybox nc cannot send UDP.)
 *
 * Build: gcc -static -O2 -o segv segv.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* volatile: the compiler can prove neither the NULL nor the zero. */
static int *volatile null_ptr;
static volatile int zero;

/* drop drops to uid (and gid uid, no supplementary groups); 0 on success. */
static int drop(const char *arg)
{
	char *end;
	unsigned long uid;

	errno = 0;
	uid = strtoul(arg, &end, 10);
	if (errno || *end || end == arg || uid > 0xfffffffeUL) {
		fprintf(stderr, "segv: bad UID '%s'\n", arg);
		return -1;
	}
	if (setgroups(0, NULL) || setgid((gid_t)uid) || setuid((uid_t)uid)) {
		perror("segv: dropping privileges");
		return -1;
	}
	return 0;
}

/* udp sends each line of path to host:port as one datagram. */
static int udp(const char *host, const char *port, const char *path)
{
	struct sockaddr_in to = { .sin_family = AF_INET };
	char line[8192];
	unsigned long p;
	char *end;
	FILE *f;
	int fd, n = 0;

	errno = 0;
	p = strtoul(port, &end, 10);
	if (errno || *end || end == port || p == 0 || p > 65535 || inet_pton(AF_INET, host, &to.sin_addr) != 1) {
		fprintf(stderr, "segv: bad address %s:%s\n", host, port);
		return 2;
	}
	to.sin_port = htons((unsigned short)p);
	f = fopen(path, "r");
	if (!f) {
		perror(path);
		return 2;
	}
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("segv: socket");
		return 2;
	}
	while (fgets(line, sizeof(line), f)) {
		size_t len = strlen(line);

		if (sendto(fd, line, len, 0, (struct sockaddr *)&to, sizeof(to)) != (ssize_t)len) {
			perror("segv: sendto");
			return 2;
		}
		n++;
	}
	if (ferror(f)) {
		perror(path);
		return 2;
	}
	printf("%d datagrams sent to %s:%lu\n", n, host, p);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "udp") == 0) {
		if (drop(argv[2]))
			return 2;
		return udp(argv[3], argv[4], argv[5]);
	}
	if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "div") != 0)) {
		fprintf(stderr, "usage: %s UID NAME [div] | %s udp UID HOST PORT FILE\n", argv[0], argv[0]);
		return 2;
	}
	if (drop(argv[1]))
		return 2;
	if (prctl(PR_SET_NAME, (unsigned long)argv[2], 0, 0, 0)) {
		perror("segv: PR_SET_NAME");
		return 2;
	}
	if (argc == 4)
		return argc / zero;
	*null_ptr = 1;
	return 0;
}
