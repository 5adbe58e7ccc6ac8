// Package archtest checks the layout's rules with the go tool itself: data
// flows one way (manifest, klp and health are lower layers that know
// nothing of agent/), no product package reaches into e2e/ or the test
// helpers, and the CLI only parses and prints.
package archtest

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const module = "github.com/klp-agent/klp-agent"

type pkg struct {
	ImportPath                         string
	Dir                                string
	GoFiles                            []string
	Imports, TestImports, XTestImports []string
}

func list(t *testing.T) []pkg {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var ps []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	if len(ps) < 10 {
		t.Fatalf("go list found %d packages", len(ps))
	}
	return ps
}

// rel is a package path inside the module ("" for the module root).
func rel(path string) (string, bool) {
	if path == module {
		return "", true
	}
	r, ok := strings.CutPrefix(path, module+"/")
	return r, ok
}

func under(r, dir string) bool { return r == dir || strings.HasPrefix(r, dir+"/") }

func TestImportRules(t *testing.T) {
	for _, p := range list(t) {
		me, _ := rel(p.ImportPath)
		check := func(imports []string, test bool) {
			for _, imp := range imports {
				r, ok := rel(imp)
				if !ok {
					continue
				}
				switch {
				case under(r, "e2e") && !under(me, "e2e"):
					t.Errorf("%s imports %s: nothing outside e2e/ may", me, r)
				case under(r, "internal/testutil") && !test && !under(me, "internal/testutil"):
					t.Errorf("%s imports the test helper %s outside its tests", me, r)
				}
				for _, low := range []string{"manifest", "klp", "health"} {
					if under(me, low) && !under(r, low) && !under(r, "internal") {
						t.Errorf("%s imports %s: %s/ is a lower layer and imports only itself and internal/", me, r, low)
					}
				}
				if under(me, "agent") && !under(me, "agent/cli") && !under(me, "agent/daemon") && (under(r, "agent/cli") || under(r, "agent/daemon")) {
					t.Errorf("%s imports %s: only the CLI and the composition root sit above the agent", me, r)
				}
			}
		}
		check(p.Imports, false)
		check(p.TestImports, true)
		check(p.XTestImports, true)
	}
}

// The CLI parses flags and prints: it starts no goroutine of its own
// (the daemon's live in agent/daemon and below).
func TestCLIStartsNoGoroutine(t *testing.T) {
	found := false
	for _, p := range list(t) {
		if p.ImportPath != module+"/agent/cli" {
			continue
		}
		found = true
		fset := token.NewFileSet()
		for _, f := range p.GoFiles {
			file, err := parser.ParseFile(fset, filepath.Join(p.Dir, f), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(file, func(n ast.Node) bool {
				if g, ok := n.(*ast.GoStmt); ok {
					t.Errorf("%s: the CLI starts a goroutine", fset.Position(g.Pos()))
				}
				return true
			})
		}
	}
	if !found {
		t.Fatal("agent/cli not found")
	}
}

// The simulated kernel (klp/klptest) reaches the daemon only in a
// klp_simkernel build, the fleet test's hosts (agent/daemon/simkernel.go):
// the shipped binary, built without tags, drives the real kernel alone.
// The tagged build is listed too, so the check is known to see it.
func TestShippedBuildHasNoSimulatedKernel(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	deps := func(tags string) []string {
		cmd := exec.Command("go", "list", "-deps", "-tags", tags, ".")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list -deps -tags %q: %v", tags, err)
		}
		return strings.Fields(string(out))
	}
	sim := module + "/klp/klptest"
	for _, c := range []struct {
		tags string
		want bool
	}{{"", false}, {"klp_crashpoint", false}, {"klp_simkernel", true}} {
		got := false
		for _, d := range deps(c.tags) {
			got = got || d == sim
		}
		if got != c.want {
			t.Errorf("build with tags %q: links %s = %v, want %v", c.tags, sim, got, c.want)
		}
	}
}
