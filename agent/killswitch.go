package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// KillSwitchParam is the kernel command-line parameter that, set to 0,
// keeps the agent from applying or re-applying anything in that boot
// (like kpatch.service's kpatch.enable=0), for a patch that breaks boot.
const KillSwitchParam = "klp_agent.enable"

// KillSwitch reads root's /proc/cmdline and says why the agent must not
// apply anything in this boot ("" when it may). As the kernel does, the
// last occurrence of the parameter counts.
func KillSwitch(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "proc/cmdline"))
	if err != nil {
		return "", fmt.Errorf("kernel command line: %w", err)
	}
	off := false
	for _, f := range strings.Fields(string(b)) {
		v, ok := strings.CutPrefix(f, KillSwitchParam+"=")
		if !ok {
			continue
		}
		switch strings.ToLower(v) {
		case "0", "n", "no", "off", "false":
			off = true
		default:
			off = false
		}
	}
	if !off {
		return "", nil
	}
	return KillSwitchParam + "=0 on the kernel command line", nil
}
