//go:build klp_crashpoint

package daemon

import (
	"os"
)

// A test build cuts the power at the step KLP_AGENT_CRASHPOINT names:
// sysrq b reboots at once, with no sync and no unmount, so only what the
// agent made durable itself survives into the next boot.
func init() {
	at := os.Getenv("KLP_AGENT_CRASHPOINT")
	if at == "" {
		return
	}
	crashpoint = func(step string) {
		if step != at {
			return
		}
		if k, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
			k.WriteString("klp-agent: power cut at " + step + "\n")
			k.Close()
		}
		f, err := os.OpenFile("/proc/sysrq-trigger", os.O_WRONLY, 0)
		if err != nil {
			panic("power cut at " + step + ": " + err.Error())
		}
		f.WriteString("b")
		select {} // the machine is gone
	}
}
