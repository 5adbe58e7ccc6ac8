package agent

import (
	"os"
	"regexp"
	"testing"

	"github.com/klp-agent/klp-agent/agent/logging"
)

// Every MESSAGE_ID the agent logs is a valid sd-id128 and is explained in
// the journal catalog that packaging installs.
func TestMessageIDsInCatalog(t *testing.T) {
	b, err := os.ReadFile("../packaging/klp-agent.catalog")
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^-- ([0-9a-f]{32})$`).FindAllStringSubmatch(string(b), -1) {
		ids[m[1]] = true
	}
	kinds := map[string]string{"applied": MsgApplied, "rolled back": MsgRolledBack, "blocked": MsgBlocked,
		"stalled": MsgStalled, "manifest rejected": MsgManifestRejected, "good": MsgGood, "re-applied": MsgReapplied,
		"health event": MsgHealthEvent, "control": MsgControl, "kill switch": MsgKillSwitch,
		"root updated": MsgRootUpdated, "root floor reset": MsgRootFloorReset,
		"module refused": MsgModuleRefused,

		"root re-provisioned": MsgRootReprovisioned,
		"guard decision":      MsgGuardDecision, "guard unauthorized": MsgGuardUnauthorized}
	for name, id := range kinds {
		if !logging.ValidMessageID(id) {
			t.Errorf("%s: %q is not a valid MESSAGE_ID", name, id)
		}
		if !ids[id] {
			t.Errorf("%s: MESSAGE_ID %s has no catalog entry", name, id)
		}
	}
	if len(ids) != len(kinds) {
		t.Errorf("catalog has %d entries, the agent logs %d kinds", len(ids), len(kinds))
	}
}
