// Package rpmtest builds small livepatch-layout RPMs with the real
// rpmbuild, and ELF objects with a real .modinfo section with gcc, for tests
// of code that reads, publishes or installs them. The kernel never loads
// these: the real modules are built in e2e/ against real kernel headers.
package rpmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// Spec describes one RPM. The zero extras give klp-agent's own layout:
// /usr/lib/klp-agent/livepatches/<krel>/<module>.ko with
// Provides: klp-livepatch(<krel>) = <level>.
type Spec struct {
	Family        string // RPM name is klp-<Family> unless Name is set
	Module        string // module name, e.g. klp_cmdline_1
	Level         int
	KernelRelease string
	KO            []byte // content of the .ko; a placeholder when nil

	Name, Version      string            // override the RPM name / version
	Files              map[string][]byte // override the files (path -> content)
	Provides, Requires []string          // replace the default provides; add requires
	NoProvides         bool              // no default provides at all
	Payload            string            // %_binary_payload; default w9.gzdio (gzip)
	Post               string            // a %post scriptlet (sh)
}

func (s Spec) rpmName() string {
	if s.Name != "" {
		return s.Name
	}
	return "klp-" + s.Family
}

func (s Spec) version() string {
	if s.Version != "" {
		return s.Version
	}
	return strconv.Itoa(s.Level)
}

// Build writes the RPM into outDir and returns its path. It fails the test
// if rpmbuild is missing (install the Debian package rpm: make deps).
func Build(t testing.TB, outDir string, s Spec) string {
	t.Helper()
	if _, err := exec.LookPath("rpmbuild"); err != nil {
		t.Fatalf("rpmbuild not found: install the rpm package (make deps): %v", err)
	}
	top := t.TempDir()
	files := s.Files
	if files == nil {
		ko := s.KO
		if ko == nil {
			// A module with a livepatch's modinfo for the release.
			ko = Module(t, "livepatch=Y", "vermagic="+s.KernelRelease+" SMP preempt mod_unload modversions ", "name="+s.Module)
		}
		files = map[string][]byte{fmt.Sprintf("/usr/lib/klp-agent/livepatches/%s/%s.ko", s.KernelRelease, s.Module): ko}
	}
	provides := s.Provides
	if provides == nil && !s.NoProvides {
		provides = []string{
			fmt.Sprintf("klp-livepatch(%s) = %d", s.KernelRelease, s.Level),
			fmt.Sprintf("klp-module(%s) = %d", s.Module, s.Level),
		}
	}
	payload := s.Payload
	if payload == "" {
		payload = "w9.gzdio"
	}
	var spec strings.Builder
	fmt.Fprintf(&spec, "Name: %s\nVersion: %s\nRelease: 1\nSummary: test livepatch\nLicense: GPL-2.0\nBuildArch: noarch\n", s.rpmName(), s.version())
	for _, p := range provides {
		fmt.Fprintf(&spec, "Provides: %s\n", p)
	}
	for _, r := range s.Requires {
		fmt.Fprintf(&spec, "Requires: %s\n", r)
	}
	// brp scripts would strip the .ko; a livepatch needs its symbols.
	fmt.Fprintf(&spec, "%%global debug_package %%{nil}\n%%define _build_id_links none\n%%define __os_install_post %%{nil}\n%%define _binary_payload %s\n", payload)
	spec.WriteString("%description\nTest livepatch.\n%install\n")
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for i, p := range paths {
		src := filepath.Join(top, "src"+strconv.Itoa(i))
		if err := os.WriteFile(src, files[p], 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&spec, "mkdir -p %%{buildroot}%s\ninstall -m 0644 '%s' %%{buildroot}%s\n", filepath.Dir(p), src, p)
	}
	if s.Post != "" {
		fmt.Fprintf(&spec, "%%post\n%s\n", s.Post)
	}
	spec.WriteString("%files\n")
	for _, p := range paths {
		spec.WriteString(p + "\n")
	}
	specPath := filepath.Join(top, "klp.spec")
	if err := os.WriteFile(specPath, []byte(spec.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("rpmbuild", "-bb", "--quiet",
		"--define", "_topdir "+top,
		"--define", "_rpmdir "+outDir,
		"--define", "_build_name_fmt %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm",
		specPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rpmbuild: %v\n%s\n%s", err, out, spec.String())
	}
	p := filepath.Join(outDir, fmt.Sprintf("%s-%s-1.noarch.rpm", s.rpmName(), s.version()))
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("rpmbuild did not produce %s: %v", p, err)
	}
	return p
}

// Module compiles an ELF relocatable object whose .modinfo section holds
// the given key=value strings, as a kernel module's does. It fails the
// test if gcc is missing.
func Module(t testing.TB, modinfo ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Fatalf("gcc not found: install gcc (make deps): %v", err)
	}
	dir := t.TempDir()
	var src strings.Builder
	for i, kv := range modinfo {
		fmt.Fprintf(&src, "static const char mi%d[] __attribute__((section(\".modinfo\"), used, aligned(1))) = %q;\n", i, kv)
	}
	src.WriteString("int klp_test_dummy(void) { return 0; }\n")
	c := filepath.Join(dir, "m.c")
	o := filepath.Join(dir, "m.o")
	if err := os.WriteFile(c, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-c", "-o", o, c).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	b, err := os.ReadFile(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
