//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A Debian relation: one alternative of a Depends group.
type debRelation struct {
	name string // without an :arch qualifier
	op   string // "", "<<", "<=", "=", ">=", ">>"
	ver  string
}

func (r debRelation) String() string {
	if r.op == "" {
		return r.name
	}
	return fmt.Sprintf("%s (%s %s)", r.name, r.op, r.ver)
}

// debControl is what the dependency check needs of one control file.
type debControl struct {
	pkg     string
	depends [][]debRelation // Pre-Depends and Depends: groups of alternatives
}

// parseDebControl reads a binary package's control file (dpkg-deb -f):
// fields may continue on lines that start with white space.
func parseDebControl(b []byte) (debControl, error) {
	var c debControl
	fields := map[string]string{}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := sc.Text()
		if l == "" {
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			if last == "" {
				return c, fmt.Errorf("continuation line before any field: %q", l)
			}
			fields[last] += " " + strings.TrimSpace(l)
			continue
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return c, fmt.Errorf("not a field: %q", l)
		}
		last = k
		fields[k] = strings.TrimSpace(v)
	}
	c.pkg = fields["Package"]
	if c.pkg == "" {
		return c, fmt.Errorf("no Package field")
	}
	for _, f := range []string{"Pre-Depends", "Depends"} {
		for g := range strings.SplitSeq(fields[f], ",") {
			if strings.TrimSpace(g) == "" {
				continue
			}
			var group []debRelation
			for a := range strings.SplitSeq(g, "|") {
				r, err := parseDebRelation(strings.TrimSpace(a))
				if err != nil {
					return c, fmt.Errorf("%s %s: %w", c.pkg, f, err)
				}
				group = append(group, r)
			}
			c.depends = append(c.depends, group)
		}
	}
	return c, nil
}

func parseDebRelation(s string) (debRelation, error) {
	name, rest, _ := strings.Cut(s, " ")
	name, _, _ = strings.Cut(name, ":")
	r := debRelation{name: name}
	if name == "" {
		return r, fmt.Errorf("empty relation in %q", s)
	}
	rest = strings.TrimSpace(rest)
	if rest == "" {
		return r, nil
	}
	if !strings.HasPrefix(rest, "(") || !strings.HasSuffix(rest, ")") {
		return r, fmt.Errorf("relation %q: version not in parentheses", s)
	}
	op, ver, ok := strings.Cut(strings.TrimSpace(rest[1:len(rest)-1]), " ")
	if !ok || !slices.Contains([]string{"<<", "<=", "=", ">=", ">>"}, op) {
		return r, fmt.Errorf("relation %q: bad version constraint", s)
	}
	r.op, r.ver = op, strings.TrimSpace(ver)
	return r, nil
}

// neededDepends is what must be installed for a tree unpacked from these
// packages (e2e/setup.sh's rule, written again here on purpose so that
// the two check each other): every Depends group, except those that the
// unpacked packages satisfy among themselves and those naming a kernel
// image, which this host never boots.
func neededDepends(controls []debControl) [][]debRelation {
	unpacked := map[string]bool{}
	for _, c := range controls {
		unpacked[c.pkg] = true
	}
	var need [][]debRelation
	for _, c := range controls {
	group:
		for _, g := range c.depends {
			for _, r := range g {
				if unpacked[r.name] || strings.HasPrefix(r.name, "linux-image-") {
					continue group
				}
			}
			need = append(need, g)
		}
	}
	return need
}

// installedPkg is one package dpkg has installed.
type installedPkg struct {
	version  string
	provides []debRelation
}

// unsatisfied lists the groups no installed package satisfies; cmp
// compares two Debian versions as dpkg --compare-versions does.
func unsatisfied(need [][]debRelation, installed map[string]installedPkg, cmp func(a, op, b string) bool) []string {
	var missing []string
	for _, g := range need {
		ok := false
		for _, r := range g {
			if p, found := installed[r.name]; found && (r.op == "" || cmp(p.version, r.op, r.ver)) {
				ok = true
			}
			for _, p := range installed {
				for _, pr := range p.provides {
					if pr.name == r.name && (r.op == "" || pr.op == "=" && cmp(pr.ver, r.op, r.ver)) {
						ok = true
					}
				}
			}
		}
		if !ok {
			var alts []string
			for _, r := range g {
				alts = append(alts, r.String())
			}
			missing = append(missing, strings.Join(alts, " | "))
		}
	}
	return missing
}

// dpkgInstalled reads dpkg's database: the packages installed, with what
// they provide.
func dpkgInstalled(t *testing.T) map[string]installedPkg {
	t.Helper()
	out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\t${Provides}\n").Output()
	if err != nil {
		t.Fatalf("dpkg-query: %v", err)
	}
	pkgs := map[string]installedPkg{}
	for l := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(l, "\t")
		if len(f) != 4 || !strings.HasPrefix(f[0], "ii") {
			continue
		}
		p := installedPkg{version: f[2]}
		for pr := range strings.SplitSeq(f[3], ",") {
			if pr = strings.TrimSpace(pr); pr != "" {
				r, err := parseDebRelation(pr)
				if err != nil {
					t.Fatalf("dpkg-query: %s Provides: %v", f[1], err)
				}
				p.provides = append(p.provides, r)
			}
		}
		pkgs[f[1]] = p
	}
	return pkgs
}

func dpkgCompare(a, op, b string) bool {
	dop := map[string]string{"<<": "lt", "<=": "le", "=": "eq", ">=": "ge", ">>": "gt"}[op]
	return exec.Command("dpkg", "--compare-versions", a, dop, b).Run() == nil
}

func readControls(t *testing.T, dir string) []debControl {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no control files in %s (%v): run e2e/setup.sh", dir, err)
	}
	var cs []debControl
	for _, f := range files {
		if filepath.Ext(f) == ".md" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		c, err := parseDebControl(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		cs = append(cs, c)
	}
	return cs
}

// The rule on Debian's own control files (testdata/debian-control): a
// machine with only the base system and gcc lacks exactly what dpkg-deb -x
// skipped.
func TestUnpackedDependsSamples(t *testing.T) {
	all := readControls(t, filepath.Join(repoDir(t), "e2e/testdata/debian-control"))
	line := func(l string) []debControl {
		var cs []debControl
		for _, c := range all {
			if strings.Contains(c.pkg, "6.12") == (l == "6.12") {
				cs = append(cs, c)
			}
		}
		return cs
	}
	base := map[string]installedPkg{
		"libc6": {version: "2.36-9+deb12u10"}, "libelf1": {version: "0.188-2.1"},
		"libssl3": {version: "3.0.17-1~deb12u2"}, "zlib1g": {version: "1:1.2.13.dfsg-1"},
		"gcc-12": {version: "12.2.0-14+deb12u1"},
	}
	cmp := func(a, op, b string) bool { return dpkgCompare(a, op, b) }
	tests := []struct {
		name      string
		controls  []debControl
		installed map[string]installedPkg
		want      []string
	}{
		{"6.12 on a base system", line("6.12"), base, []string{"linux-base (>= 4.12~)", "pahole"}},
		{"6.1 on a base system", line("6.1"), base, []string{"linux-compiler-gcc-12-x86"}},
		{"6.12 complete", line("6.12"), with(base, "linux-base", "4.12.1~deb12u1", "pahole", "1.24-4.1"), nil},
		{"6.12 with too old a libelf", line("6.12"), with(base, "linux-base", "4.12.1~deb12u1", "pahole", "1.24-4.1", "libelf1", "0.143-1"),
			[]string{"libelf1 (>= 0.144)"}},
		{"6.12 without pahole", line("6.12"), with(base, "linux-base", "4.12.1~deb12u1"), []string{"pahole"}},
	}
	// A virtual pahole satisfies the unversioned relation.
	prov := with(base, "linux-base", "4.12.1~deb12u1", "dwarves-ng", "1.0")
	p := prov["dwarves-ng"]
	p.provides = []debRelation{{name: "pahole"}}
	prov["dwarves-ng"] = p
	tests = append(tests, struct {
		name      string
		controls  []debControl
		installed map[string]installedPkg
		want      []string
	}{"pahole as a virtual package", line("6.12"), prov, nil})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.controls) != 3 {
				t.Fatalf("%d control files, want 3 (headers, common, kbuild)", len(tt.controls))
			}
			got := unsatisfied(neededDepends(tt.controls), tt.installed, cmp)
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("unsatisfied = %q, want %q", got, tt.want)
			}
		})
	}
}

func with(base map[string]installedPkg, kv ...string) map[string]installedPkg {
	m := map[string]installedPkg{}
	for k, v := range base {
		m[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = installedPkg{version: kv[i+1]}
	}
	return m
}

// TestSetupInstalledDepends: every package that a .deb e2e/setup.sh
// unpacked (rather than installed) depends on is installed on this
// machine. dpkg-deb -x skips Depends; 6.12's kbuild then fails in
// scripts/Makefile.modfinal with "pahole: not found" on a fresh machine
// while a developer's machine that had pahole passed (issue 19).
func TestSetupInstalledDepends(t *testing.T) {
	installed := dpkgInstalled(t)
	for _, line := range kernelLines {
		t.Run(line, func(t *testing.T) {
			env := kernelEnvFor(t, line)
			h := env["KLP_E2E_HEADERS"]
			i := strings.Index(h, "/usr/src/linux-headers-")
			if i <= 0 {
				// Headers installed by dpkg: dpkg resolved their Depends.
				out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "linux-headers-"+env["KLP_E2E_KREL"]).Output()
				if err != nil || !strings.HasPrefix(string(out), "ii") {
					t.Fatalf("%s is neither unpacked by e2e/setup.sh nor installed by dpkg (%q, %v)", h, out, err)
				}
				return
			}
			controls := readControls(t, filepath.Join(h[:i], ".control"))
			need := neededDepends(controls)
			if len(need) == 0 {
				t.Fatalf("no dependencies read from %s/.control: the check would pass on any machine", h[:i])
			}
			if missing := unsatisfied(need, installed, dpkgCompare); len(missing) > 0 {
				t.Fatalf("the packages unpacked into %s depend on %s, which dpkg does not have installed: e2e/setup.sh must install them",
					h[:i], strings.Join(missing, ", "))
			}
			t.Logf("%d relations of %d unpacked packages satisfied", len(need), len(controls))
		})
	}
}
