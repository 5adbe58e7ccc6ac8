// Package rpmtest builds small livepatch-layout RPMs with the real
// rpmbuild, for tests of code that reads or publishes them. The .ko inside
// is a placeholder unless Module is given; the kernel never sees these.
package rpmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// Spec describes one RPM in klp-agent's own layout.
type Spec struct {
	Family        string // RPM name is klp-<Family>
	Module        string // module name, e.g. klp_cmdline_1
	Level         int
	KernelRelease string
	KO            []byte // content of the .ko; a placeholder when nil
}

const spec = `Name: klp-%{family}
Version: %{level}
Release: 1
Summary: test livepatch %{module}
License: GPL-2.0
BuildArch: noarch
Provides: klp-livepatch(%{krel}) = %{level}
Provides: klp-module(%{module}) = %{level}
%global debug_package %{nil}
%define _build_id_links none
%define _binary_payload w9.gzdio
%description
Test livepatch.
%install
mkdir -p %{buildroot}/usr/lib/klp-agent/livepatches/%{krel}
install -m 0644 %{kofile} %{buildroot}/usr/lib/klp-agent/livepatches/%{krel}/%{module}.ko
%files
/usr/lib/klp-agent/livepatches/%{krel}/%{module}.ko
`

// Build writes the RPM into outDir and returns its path. It fails the test
// if rpmbuild is missing (install the Debian package rpm: make deps).
func Build(t testing.TB, outDir string, s Spec) string {
	t.Helper()
	if _, err := exec.LookPath("rpmbuild"); err != nil {
		t.Fatalf("rpmbuild not found: install the rpm package (make deps): %v", err)
	}
	top := t.TempDir()
	ko := filepath.Join(top, "module.ko")
	content := s.KO
	if content == nil {
		content = []byte("placeholder for " + s.Module)
	}
	specPath := filepath.Join(top, "klp.spec")
	if err := os.WriteFile(ko, content, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(specPath, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("rpmbuild", "-bb", "--quiet",
		"--define", "_topdir "+top,
		"--define", "_rpmdir "+outDir,
		"--define", "_build_name_fmt %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm",
		"--define", "family "+s.Family,
		"--define", "module "+s.Module,
		"--define", "level "+strconv.Itoa(s.Level),
		"--define", "krel "+s.KernelRelease,
		"--define", "kofile "+ko,
		specPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rpmbuild: %v\n%s", err, out)
	}
	p := filepath.Join(outDir, fmt.Sprintf("klp-%s-%d-1.noarch.rpm", s.Family, s.Level))
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("rpmbuild did not produce %s: %v", p, err)
	}
	return p
}
