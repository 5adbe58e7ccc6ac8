package klp

import (
	"os"
	"path/filepath"
	"sort"
)

// KpatchService is what kpatch.service would do at the next boot: when
// enabled, it runs `kpatch load --all`, loading every module in
// /var/lib/kpatch/<uname -r>/ — before the agent runs, and whether or not
// the agent blocked them.
type KpatchService struct {
	Enabled bool     // a systemd .wants link to kpatch.service exists
	Modules []string // /var/lib/kpatch/<krel>/*.ko
}

// CheckKpatchService looks under root for an enabled kpatch.service and
// the modules it would load for kernel release krel.
func CheckKpatchService(root, krel string) KpatchService {
	var s KpatchService
	links, _ := filepath.Glob(filepath.Join(root, "etc/systemd/system/*.wants/kpatch.service"))
	s.Enabled = len(links) > 0
	if !validKernelRelease(krel) {
		return s
	}
	mods, _ := filepath.Glob(filepath.Join(root, "var/lib/kpatch", krel, "*.ko"))
	for _, m := range mods {
		if fi, err := os.Lstat(m); err == nil && fi.Mode().IsRegular() {
			s.Modules = append(s.Modules, filepath.Join("/var/lib/kpatch", krel, filepath.Base(m)))
		}
	}
	sort.Strings(s.Modules)
	return s
}

// Conflicts reports whether the service would load modules at boot.
func (s KpatchService) Conflicts() bool { return s.Enabled && len(s.Modules) > 0 }
