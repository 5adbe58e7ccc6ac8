package klp

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// KernelRelease returns the running kernel's release (`uname -r`) read from
// <root>/proc/sys/kernel/osrelease. Reading the file rather than calling
// uname(2) lets tests and containers substitute the root.
func KernelRelease(root string) (string, error) {
	p := filepath.Join(root, "proc/sys/kernel/osrelease")
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("kernel release: %w", err)
	}
	rel := strings.TrimSpace(string(b))
	if rel == "" || strings.ContainsAny(rel, "/\x00 \t") {
		return "", fmt.Errorf("kernel release: %s holds %q", p, rel)
	}
	return rel, nil
}
