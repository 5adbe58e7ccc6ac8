package state

import "strings"

// Cause is why a patch was rolled back (and, for most causes, blocked):
// a closed set, used alike by the journal, the state file and the metric
// labels. The human reason is separate text beside it.
type Cause string

// Causes.
const (
	CauseHealth        Cause = "health"         // a kernel report or health check under the policy
	CauseRevoked       Cause = "revoked"        // the manifest revoked it
	CauseOperator      Cause = "operator"       // klp-agent rollback
	CauseBootCrash     Cause = "boot-crash"     // the boot it was live in ended in a crash
	CauseKernelRefused Cause = "kernel-refused" // the kernel refuses the level (a rollback target, say)
)

// Causes lists every cause, in the order metrics export them.
func Causes() []Cause {
	return []Cause{CauseHealth, CauseRevoked, CauseOperator, CauseBootCrash, CauseKernelRefused}
}

// legacyCause classifies a reason written before causes were recorded
// (state files of earlier versions kept only the text).
func legacyCause(reason string) Cause {
	switch {
	case reason == "":
		return ""
	case strings.HasPrefix(reason, "operator"):
		return CauseOperator
	case strings.HasPrefix(reason, "revoked"):
		return CauseRevoked
	case strings.HasPrefix(reason, "previous boot crashed"):
		return CauseBootCrash
	}
	return CauseHealth
}
