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

func TestCheckKpatchService(t *testing.T) {
	root := t.TempDir()
	const krel = "6.1.0-28-amd64"
	if s := CheckKpatchService(root, krel); s.Enabled || s.Conflicts() {
		t.Fatalf("empty root: %+v", s)
	}
	os.MkdirAll(filepath.Join(root, "var/lib/kpatch", krel), 0o755)
	os.WriteFile(filepath.Join(root, "var/lib/kpatch", krel, "klp_6.1.0-28.ko"), []byte("x"), 0o644)
	if s := CheckKpatchService(root, krel); s.Enabled || len(s.Modules) != 1 || s.Conflicts() {
		t.Fatalf("modules, service disabled: %+v", s)
	}
	os.MkdirAll(filepath.Join(root, "etc/systemd/system/multi-user.target.wants"), 0o755)
	os.Symlink("/usr/lib/systemd/system/kpatch.service", filepath.Join(root, "etc/systemd/system/multi-user.target.wants/kpatch.service"))
	if s := CheckKpatchService(root, krel); !s.Conflicts() || s.Modules[0] != "/var/lib/kpatch/"+krel+"/klp_6.1.0-28.ko" {
		t.Fatalf("enabled with modules: %+v", s)
	}
}
