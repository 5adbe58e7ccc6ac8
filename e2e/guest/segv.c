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
 * Exits 2 on a usage or set-up error; otherwise it dies of its signal.
 *
 * Build: gcc -static -O2 -o segv segv.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

/* volatile: the compiler can prove neither the NULL nor the zero. */
static int *volatile null_ptr;
static volatile int zero;

int main(int argc, char **argv)
{
	char *end;
	unsigned long uid;

	if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "div") != 0)) {
		fprintf(stderr, "usage: %s UID NAME [div]\n", argv[0]);
		return 2;
	}
	errno = 0;
	uid = strtoul(argv[1], &end, 10);
	if (errno || *end || end == argv[1] || uid > 0xfffffffeUL) {
		fprintf(stderr, "segv: bad UID '%s'\n", argv[1]);
		return 2;
	}
	if (setgroups(0, NULL) || setgid((gid_t)uid) || setuid((uid_t)uid)) {
		perror("segv: dropping privileges");
		return 2;
	}
	if (prctl(PR_SET_NAME, (unsigned long)argv[2], 0, 0, 0)) {
		perror("segv: PR_SET_NAME");
		return 2;
	}
	if (argc == 4)
		return argc / zero;
	*null_ptr = 1;
	return 0;
}
