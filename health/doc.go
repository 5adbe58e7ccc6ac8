// Package health turns the host's own crash signals into verdicts about
// its livepatch: /dev/kmsg records, netconsole datagrams, taint bits and
// an optional operator command while the host runs (Monitor), and after a
// reboot the crash records its kernel left, kdump dumps under /var/crash
// and pstore records (Scanner, Crash). Every report carries its Source. Records
// are grouped into reports (oops, BUG, panic, WARNING, lockups, hung tasks,
// RCU stalls), attributed to a livepatch where the trace allows, and judged
// under a policy. Monitor runs the sources; Judge decides.
package health
