package guard

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The default re-check is the shipped alert's own expression, for one
// patch: a rule edited without the guard's query (or the other way round)
// fails here.
func TestDefaultQueryIsTheShippedAlert(t *testing.T) {
	b, err := os.ReadFile("../../packaging/prometheus/klp-agent.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	var expr string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == DefaultAlertName {
				expr = strings.Join(strings.Fields(r.Expr), " ")
			}
		}
	}
	if expr == "" {
		t.Fatalf("no alert %s in the shipped rules", DefaultAlertName)
	}
	if got := strings.ReplaceAll(DefaultQuery, `{patch="{patch}"}`, ""); got != expr {
		t.Errorf("DefaultQuery without its patch matcher is\n  %s\nthe shipped alert's expression is\n  %s", got, expr)
	}
}

// packaging/guard.yaml: as shipped it is refused (not configured: the
// unit exits 78); with its required lines filled in it parses, and the
// queries it shows commented out are the defaults.
func TestShippedGuardConfig(t *testing.T) {
	b, err := os.ReadFile("../../packaging/guard.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseConfig(b); err == nil || !strings.Contains(err.Error(), "is required") {
		t.Fatalf("shipped guard.yaml: %v, want refused as not configured", err)
	}
	on := regexp.MustCompile(`(?m)^(\s*)#((token_file|url|query|level_query|root|key|file):)`).ReplaceAll(b, []byte("$1$2"))
	c, err := ParseConfig(on)
	if err != nil {
		t.Fatalf("filled in: %v\n%s", err, on)
	}
	if c.Prometheus.Query != DefaultQuery || c.Prometheus.LevelQuery != DefaultLevelQuery {
		t.Errorf("guard.yaml shows queries\n  %s\n  %s\nthe defaults are\n  %s\n  %s", c.Prometheus.Query, c.Prometheus.LevelQuery, DefaultQuery, DefaultLevelQuery)
	}
	if c.Listen != DefaultListen || c.Validity != DefaultValidity || c.RefreshBefore != DefaultRefreshBefore || c.AlertName != DefaultAlertName {
		t.Errorf("guard.yaml's values differ from the defaults: %+v", c)
	}
}

// The default queries, with a patch put in, are PromQL Prometheus's own
// parser accepts (promtool, which make lint needs too).
func TestDefaultQueriesParse(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed (make deps installs it)")
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: guard\n    rules:\n")
	for i, q := range []string{DefaultQuery, DefaultLevelQuery} {
		fmt.Fprintf(&rules, "      - record: guard:query%d\n        expr: %q\n", i, subst(q, "klp_bad", "", ""))
	}
	p := filepath.Join(t.TempDir(), "guard.rules.yml")
	if err := os.WriteFile(p, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", p).CombinedOutput(); err != nil {
		t.Fatalf("promtool: %v\n%s", err, out)
	}
}
