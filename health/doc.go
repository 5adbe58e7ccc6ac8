// Package health turns the host's own crash signals into verdicts about
// its livepatch: /dev/kmsg records, netconsole datagrams, kdump dumps
// under /var/crash, taint bits and an optional operator command, each
// classified (oops, BUG, panic, WARNING, lockups, hung tasks, RCU stalls),
// attributed to a livepatch module where the trace allows, and judged under
// a soak policy. It is built in issue 4; this file fixes its place in the
// layout the design card asks for.
package health
