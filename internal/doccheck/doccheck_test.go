// Package doccheck holds the repository's check that its documents name
// only tests that exist: a defence in docs/security.md, a figure in
// docs/benchmarks.md or a claim in the README points at the test that backs
// it, and a renamed or deleted test must not leave the claim pointing at
// nothing.
package doccheck

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

var (
	// `TestX`, `TestX/sub case`, `FuzzX`, `BenchmarkX` in backticks, alone
	// or in a comma-separated list inside one pair of backticks.
	docNameRE = regexp.MustCompile("`([^`]*)`")
	nameRE    = regexp.MustCompile(`^(Test|Fuzz|Benchmark)[A-Z0-9_]\w*`)
	funcRE    = regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark)\w+)\(`)
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found from %s: %v", root, err)
	}
	return root
}

// definedTests is every top-level test, fuzz target and benchmark in the
// repository's _test.go files, whatever their build tags.
func definedTests(t *testing.T, root string) map[string]bool {
	t.Helper()
	defined := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "bin" || d.Name() == "vendor" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range funcRE.FindAllStringSubmatch(string(b), -1) {
			defined[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return defined
}

// docNames is each test name a document cites (the part before any
// subtest), with the documents that cite it.
func docNames(text string) []string {
	var out []string
	for _, m := range docNameRE.FindAllStringSubmatch(text, -1) {
		for _, part := range strings.Split(m[1], ",") {
			part = strings.TrimSpace(part)
			if n := nameRE.FindString(part); n != "" {
				out = append(out, n)
			}
		}
	}
	return out
}

func TestDocsNameExistingTests(t *testing.T) {
	root := repoRoot(t)
	defined := definedTests(t, root)
	if len(defined) < 100 {
		t.Fatalf("found only %d tests in %s: the walk is broken", len(defined), root)
	}
	docs, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	docs = append(docs, filepath.Join(root, "README.md"))
	cited := 0
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		var missing []string
		for _, n := range docNames(string(b)) {
			cited++
			if !defined[n] {
				missing = append(missing, n)
			}
		}
		sort.Strings(missing)
		missing = compact(missing)
		if len(missing) > 0 {
			rel, _ := filepath.Rel(root, doc)
			t.Errorf("%s names tests that do not exist: %s", rel, strings.Join(missing, ", "))
		}
	}
	if cited == 0 {
		t.Fatal("no document cites a test: the pattern is broken")
	}
}

func compact(s []string) []string {
	var out []string
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func TestDocNames(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"`TestA` (`./x`)", []string{"TestA"}},
		{"`TestVerifyRejects/expired`", []string{"TestVerifyRejects"}},
		{"`TestA, TestB/c d`", []string{"TestA", "TestB"}},
		{"`FuzzX`, `BenchmarkY`", []string{"FuzzX", "BenchmarkY"}},
		{"`Testing` `make test` `TestdataDir`", nil},
	} {
		got := docNames(c.in)
		if strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("docNames(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
