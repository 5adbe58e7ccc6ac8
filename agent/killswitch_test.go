package agent

import (
	"os"
	"path/filepath"
	"testing"
)

func TestKillSwitchFromCmdline(t *testing.T) {
	tests := []struct {
		cmdline string
		off     bool
	}{
		{"BOOT_IMAGE=/vmlinuz root=/dev/vda ro quiet", false},
		{"root=/dev/vda klp_agent.enable=0 quiet", true},
		{"root=/dev/vda klp_agent.enable=off", true},
		{"klp_agent.enable=0 klp_agent.enable=1", false}, // the last one counts
		{"klp_agent.enable=1", false},
		{"xklp_agent.enable=0 klp_agent.enabled=0", false},
	}
	for _, tt := range tests {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "proc"), 0o755)
		if err := os.WriteFile(filepath.Join(root, "proc/cmdline"), []byte(tt.cmdline+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		why, err := KillSwitch(root)
		if err != nil || (why != "") != tt.off {
			t.Errorf("%q: %q, %v; want off=%v", tt.cmdline, why, err, tt.off)
		}
	}
	if _, err := KillSwitch(t.TempDir()); err == nil {
		t.Error("no /proc/cmdline: no error")
	}
}
