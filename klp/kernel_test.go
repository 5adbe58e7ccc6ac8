package klp

import (
	"os"
	"path/filepath"
	"testing"
)

func TestKernelRelease(t *testing.T) {
	tests := []struct {
		name, content, want string
		wantErr             bool
	}{
		{"debian", "6.1.0-28-amd64\n", "6.1.0-28-amd64", false},
		{"rhel", "5.14.0-284.11.1.el9_2.x86_64\n", "5.14.0-284.11.1.el9_2.x86_64", false},
		{"empty", "\n", "", true},
		{"slash", "../../etc\n", "", true},
		{"missing", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.name != "missing" {
				dir := filepath.Join(root, "proc/sys/kernel")
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "osrelease"), []byte(tt.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := KernelRelease(root)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("KernelRelease = %q, %v; want %q, err=%v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}
