package daemon

import (
	"fmt"
	"testing"

	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/health"
)

// The boot guard's scanners come from the configuration, each under
// paths.root; an empty directory setting turns its scanner off.
func TestScannersFromConfig(t *testing.T) {
	for _, tt := range []struct {
		name          string
		kdump, pstore string
		want          string
	}{
		{"defaults", "/var/crash", "/sys/fs/pstore", "[kdump:/host/var/crash pstore:/host/sys/fs/pstore]"},
		{"no kdump", "", "/sys/fs/pstore", "[pstore:/host/sys/fs/pstore]"},
		{"no pstore", "/var/crash", "", "[kdump:/host/var/crash]"},
		{"none", "", "", "[]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			if tt.name == "defaults" && (c.Health.KdumpDir != tt.kdump || c.Health.PstoreDir != tt.pstore) {
				t.Fatalf("defaults: kdump_dir %q, pstore_dir %q", c.Health.KdumpDir, c.Health.PstoreDir)
			}
			c.Paths.Root, c.Health.KdumpDir, c.Health.PstoreDir = "/host", tt.kdump, tt.pstore
			h := &Host{Config: &config.Loaded{Config: c}}
			var got []string
			for _, sc := range h.Scanners() {
				switch s := sc.(type) {
				case health.KdumpScanner:
					got = append(got, fmt.Sprintf("%s:%s", s.Source(), s.Dir))
				case health.PstoreScanner:
					if s.Booted.IsZero() {
						t.Error("the pstore scanner does not know when this boot began")
					}
					got = append(got, fmt.Sprintf("%s:%s", s.Source(), s.Dir))
				default:
					t.Fatalf("unexpected scanner %T", sc)
				}
			}
			if fmt.Sprint(got) != tt.want {
				t.Fatalf("scanners %v, want %s", got, tt.want)
			}
		})
	}
}
