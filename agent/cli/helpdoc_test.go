package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// klp-agent(8) is generated from the commands' --help; the golden file
// shows every change to it in review (UPDATE_GOLDEN=1 rewrites it after
// a command or flag changes).
func TestManPageGolden(t *testing.T) {
	got := run(t, t0, "help", "--man")
	golden := filepath.Join("testdata", "klp-agent.8.golden")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create)", err)
	}
	if got != string(want) {
		t.Fatalf("klp-agent help --man differs from %s (UPDATE_GOLDEN=1 to accept):\n%s", golden, got)
	}
	// groff reads it without a warning.
	cmd := exec.Command("groff", "-man", "-ww", "-z")
	cmd.Stdin = strings.NewReader(got)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("groff -man -ww (install groff-base: make deps): %v\n%s", err, out)
	}
}

// Every command and subcommand in the table, and every flag its --help
// shows, is in the man page and in both completions.
func TestEveryCommandDocumented(t *testing.T) {
	man := run(t, t0, "help", "--man")
	bash := run(t, t0, "help", "--bash-completion")
	zsh := run(t, t0, "help", "--zsh-completion")
	docs, err := collectHelp(&Env{Now: nowFunc, Ctx: t.Context()})
	if err != nil {
		t.Fatal(err)
	}
	groups := map[string][]string{"manifest": {"keygen", "add", "revoke", "sign", "verify", "lint"}, "klp": {"list", "apply", "disable"}}
	seen := map[string]bool{}
	for _, d := range docs {
		seen[d.Name] = true
		for _, s := range d.Subs {
			seen[s.Name] = true
		}
	}
	for name := range commands() {
		names := []string{name}
		for _, sub := range groups[name] {
			names = append(names, name+" "+sub)
		}
		for _, n := range names {
			if !seen[n] {
				t.Errorf("%q is not among the documented commands", n)
			}
			if !strings.Contains(man, `.SS "`+roff(n)+`"`) {
				t.Errorf("man page lacks a section for %q", n)
			}
			last := n[strings.LastIndex(n, " ")+1:]
			if !regexp.MustCompile(`(?m)[" ]` + regexp.QuoteMeta(last) + `[ "]`).MatchString(bash) {
				t.Errorf("bash completion does not offer %q", n)
			}
			if !strings.Contains(zsh, "\t"+last+")") || !strings.Contains(zsh, "'"+last+":") {
				t.Errorf("zsh completion does not offer %q", n)
			}
		}
	}
	for _, d := range leaves(docs) {
		if len(d.Flags) == 0 && d.Name != "version" {
			t.Errorf("%s: no flags read from its --help", d.Name)
		}
		for _, f := range d.Flags {
			if !strings.Contains(man, `\-\-`+roff(f.Name)) {
				t.Errorf("man page lacks %s --%s", d.Name, f.Name)
			}
			if !strings.Contains(bash, "--"+f.Name) || !strings.Contains(zsh, "'--"+f.Name+"[") {
				t.Errorf("a completion lacks %s --%s", d.Name, f.Name)
			}
		}
	}
}

// Each subcommand shows and accepts only its own flags: klp list takes no
// rpm or transition flags, klp disable no rpm flags.
func TestPerCommandFlags(t *testing.T) {
	docs, err := collectHelp(&Env{Now: nowFunc, Ctx: t.Context()})
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]string{}
	for _, d := range leaves(docs) {
		var names []string
		for _, f := range d.Flags {
			names = append(names, f.Name)
		}
		flags[d.Name] = strings.Join(names, " ")
	}
	for cmd, want := range map[string]string{
		"klp list":    "json root",
		"klp disable": "force poll root transition-timeout",
		"klp apply":   "force level nodeps poll previous-rpm replaces require-signature root rpm rpm-dbpath rpm-keyring scripts sha256 size state-dir transition-timeout",
		"status":      "check config json snapshot",
		"version":     "",
	} {
		if flags[cmd] != want {
			t.Errorf("%s --help shows flags %q, want %q", cmd, flags[cmd], want)
		}
	}
	for _, args := range [][]string{{"klp", "list", "--nodeps"}, {"klp", "list", "--transition-timeout", "1s"}, {"klp", "disable", "--rpm-dbpath", "/d", "x"}} {
		if out, code := runCode(t, t0, args...); code != 2 || !strings.Contains(out, "flag provided but not defined") {
			t.Errorf("%v: exit %d, want 2 (unknown flag):\n%s", args, code, out)
		}
	}
}

// The bash completion, sourced into a real bash: commands, subcommands,
// a subcommand's own flags, and files after a flag that takes a value.
func TestBashCompletion(t *testing.T) {
	script := filepath.Join(t.TempDir(), "klp-agent")
	os.WriteFile(script, []byte(run(t, t0, "help", "--bash-completion")), 0o644)
	for _, tt := range []struct {
		line, want string
	}{
		{"klp-agent ", "check-config explain guard history hold klp manifest pin poll reload resume rollback run simulate status unblock uninstall version --help --version"},
		{"klp-agent st", "status"},
		{"klp-agent guard --", "--check-config --config --dry-run --help"},
		{"klp-agent klp ", "list apply disable"},
		{"klp-agent klp list --", "--json --root --help"},
		{"klp-agent manifest sign --k", "--key"},
		{"klp-agent manifest r", "revoke root"},
		{"klp-agent manifest root init --root-k", "--root-key"},
		{"klp-agent status --config ", ""},
		{"klp-agent status --config /etc/x.yaml --", "--check --config --json --snapshot --help"},
	} {
		words := strings.Split(tt.line, " ")
		cmd := exec.Command("bash", append([]string{"-c", `source "$0"; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _klp_agent; echo "${COMPREPLY[*]}"`, script}, words...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); !strings.HasPrefix(got, tt.want) || (tt.want == "" && got != "") {
			t.Errorf("%q completes to %q, want %q", tt.line, got, tt.want)
		}
	}
}

// The zsh completion parses, and run with _describe and _arguments stubbed
// it offers the right words at each position.
func TestZshCompletion(t *testing.T) {
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Fatal("zsh is not installed (make deps installs it)")
	}
	script := filepath.Join(t.TempDir(), "_klp-agent")
	os.WriteFile(script, []byte(run(t, t0, "help", "--zsh-completion")), 0o644)
	if out, err := exec.Command("zsh", "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
	for _, tt := range []struct {
		line, want string
	}{
		{"klp-agent ", "DESCRIBE check-config:"},
		{"klp-agent klp ", "DESCRIBE list:livepatches"},
		{"klp-agent klp list ", "ARGS list|"},
		{"klp-agent status --json ", "ARGS status --json|"},
	} {
		words := strings.Split(tt.line, " ")
		// The stubs print what they were given: _describe its array,
		// _arguments the words left after the command and its specs.
		prog := `_describe() { print -r -- "DESCRIBE ${(P)${@[-1]}}" }
_arguments() { print -r -- "ARGS ${words[1,CURRENT-1]}|$*" }
functions[_klp-agent]=$(<$1); shift
words=("$@"); CURRENT=$#
_klp-agent`
		out, err := exec.Command("zsh", append([]string{"-fc", prog, "zsh", script}, words...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("zsh: %v\n%s", err, out)
		}
		if !strings.HasPrefix(string(out), tt.want) {
			t.Errorf("%q: %q, want it to start with %q", tt.line, out, tt.want)
		}
	}
	out, _ := exec.Command("zsh", "-fc", `_describe() { :; }; _arguments() { print -r -- "$*" }; functions[_klp-agent]=$(<$1); words=(klp-agent klp list ''); CURRENT=4; _klp-agent`, "zsh", script).CombinedOutput()
	if strings.Contains(string(out), "--nodeps") || !strings.Contains(string(out), "--root[") {
		t.Errorf("klp list's zsh flags: %s", out)
	}
}

func nowFunc() time.Time { return t0 }

// klp-agent(8) covers what no --help says: every exit code a command
// returns (exitcode.go and status --check's), every MESSAGE_ID of the
// journal catalog, every configuration key, the kill switch, the files
// (the history among them) and uninstalling.
func TestManPageReference(t *testing.T) {
	man := run(t, t0, "help", "--man")
	text := strings.ReplaceAll(man, `\-`, "-")
	section := func(name string) string {
		_, rest, ok := strings.Cut(text, "\n.SH "+name+"\n")
		if !ok {
			t.Fatalf("no section %s", name)
		}
		body, _, _ := strings.Cut(rest, "\n.SH ")
		return body
	}
	exit := section("EXIT STATUS")
	for _, code := range []string{"0", "1", "2", "3", "78"} {
		if !strings.Contains(exit, ".B "+code+"\n") {
			t.Errorf("EXIT STATUS lacks code %s", code)
		}
	}
	for _, w := range []string{"status --check", "hold, resume, pin, unblock, poll", "uninstall --check"} {
		if !strings.Contains(exit, w) {
			t.Errorf("EXIT STATUS does not mention %q", w)
		}
	}
	b, err := os.ReadFile("../../packaging/klp-agent.catalog")
	if err != nil {
		t.Fatal(err)
	}
	journal := section("JOURNAL")
	ids := regexp.MustCompile(`(?m)^-- ([0-9a-f]{32})$`).FindAllStringSubmatch(string(b), -1)
	if len(ids) == 0 {
		t.Fatal("no ids in the catalog")
	}
	for _, m := range ids {
		if !strings.Contains(journal, ".B "+m[1]+"\n") {
			t.Errorf("JOURNAL lacks MESSAGE_ID %s", m[1])
		}
	}
	cfg := section("CONFIGURATION")
	for _, k := range []string{"manifest.url", "manifest.client_key", "apply.windows", "health.netconsole.allow", "paths.status_file", "log.format"} {
		if !strings.Contains(cfg, ".B "+k) {
			t.Errorf("CONFIGURATION lacks %s", k)
		}
	}
	if ks := section("KILL SWITCH"); !strings.Contains(ks, "klp_agent.enable=0") {
		t.Errorf("KILL SWITCH: %s", ks)
	}
	files := section("FILES")
	for _, f := range []string{"/var/lib/klp-agent/history.jsonl", "/etc/sysconfig/klp-agent", "Mode 0640"} {
		if !strings.Contains(files, f) {
			t.Errorf("FILES lacks %s", f)
		}
	}
	if u := section("UNINSTALL"); !strings.Contains(u, "klp-agent uninstall") {
		t.Errorf("UNINSTALL: %s", u)
	}
}
