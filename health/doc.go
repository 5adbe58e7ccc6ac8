// Package health turns the host's own crash signals into verdicts about
// its livepatch: /dev/kmsg records, netconsole datagrams, kdump dumps
// under /var/crash, taint bits and an optional operator command. Records
// are grouped into reports (oops, BUG, panic, WARNING, lockups, hung tasks,
// RCU stalls), attributed to a livepatch where the trace allows, and judged
// under a policy. Monitor runs the sources; Judge decides.
package health
