package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func TestUsageExitCodes(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage: klp-agent"},
		{[]string{"--help"}, 0, "commands:"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"manifest"}, 2, "keygen|add|revoke|sign|verify|lint"},
		{[]string{"manifest", "nope"}, 2, "unknown subcommand"},
		{[]string{"manifest", "keygen"}, 2, "--out is required"},
		{[]string{"manifest", "sign", "--key", "k"}, 2, "either --in and --out"},
		{[]string{"version", "extra"}, 2, "unexpected arguments"},
		{[]string{"version", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"version"}, 0, "klp-agent "},
		{[]string{"check-config", "--config", "/nonexistent/config.yaml"}, 1, "no such file"},
	}
	for _, tt := range tests {
		out, code := runCode(t, t0, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("klp-agent %v: exit %d, output %q; want exit %d containing %q", tt.args, code, out, tt.code, tt.want)
		}
	}
}

// publisherFixture makes two keys and a signed manifest with levels 1 and 2.
func publisherFixture(t *testing.T, extraAdd ...string) (dir, src, env string) {
	t.Helper()
	dir = t.TempDir()
	src, env = filepath.Join(dir, "manifest.yaml"), filepath.Join(dir, "manifest.json")
	run(t, t0, "manifest", "keygen", "--out", filepath.Join(dir, "a"))
	run(t, t0, "manifest", "keygen", "--out", filepath.Join(dir, "b"))
	for level := 1; level <= 2; level++ {
		rpm := rpmtest.Build(t, dir, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_" + string(rune('0'+level)), Level: level, KernelRelease: testKernel})
		args := []string{"manifest", "add", "--manifest", src, "--rpm", rpm}
		if level == 2 {
			args = append(args, extraAdd...)
		}
		run(t, t0, args...)
	}
	run(t, t0, "manifest", "sign", "--in", src, "--key", filepath.Join(dir, "a.key"), "--out", env)
	return dir, src, env
}

func TestPublisherCommands(t *testing.T) {
	dir, src, env := publisherFixture(t)
	// keygen never overwrites a key.
	if out, code := runCode(t, t0, "manifest", "keygen", "--out", filepath.Join(dir, "a")); code != 1 || !strings.Contains(out, "exists") {
		t.Fatalf("keygen over an existing key: exit %d %s", code, out)
	}
	// add refuses a second entry for the same kernel and level unless --replace.
	rpm := filepath.Join(dir, "klp-cmdline-2-1.noarch.rpm")
	if out, code := runCode(t, t0, "manifest", "add", "--manifest", src, "--rpm", rpm); code != 1 || !strings.Contains(out, "duplicate") {
		t.Fatalf("duplicate add: exit %d %s", code, out)
	}
	out := run(t, t0, "manifest", "add", "--manifest", src, "--rpm", rpm, "--replace")
	if !strings.Contains(out, "manifest version 3") {
		t.Fatalf("add --replace: %s", out)
	}
	b, _ := os.ReadFile(src)
	if strings.Count(string(b), "level: 2") != 1 {
		t.Fatalf("--replace left %d level-2 entries", strings.Count(string(b), "level: 2"))
	}
	// threshold 2: one signature fails, a co-signature passes.
	both := []string{"manifest", "verify", "--envelope", env, "--pub", filepath.Join(dir, "a.pub"), "--pub", filepath.Join(dir, "b.pub"), "--threshold", "2"}
	if out, code := runCode(t, t0, both...); code != 1 || !strings.Contains(out, "too few valid signatures") {
		t.Fatalf("threshold 2 with one signature: exit %d %s", code, out)
	}
	run(t, t0, "manifest", "sign", "--envelope", env, "--key", filepath.Join(dir, "b.key"))
	if out := run(t, t0, both...); !strings.Contains(out, "OK: ") {
		t.Fatalf("co-signed verify: %s", out)
	}
	// A key not in the keyring.
	run(t, t0, "manifest", "keygen", "--out", filepath.Join(dir, "c"))
	if out, code := runCode(t, t0, "manifest", "verify", "--envelope", env, "--pub", filepath.Join(dir, "c.pub")); code != 1 || !strings.Contains(out, "unknown key") {
		t.Fatalf("verify with an unrelated key: exit %d %s", code, out)
	}
	// Signing an expired source is refused; verifying after expiry too.
	late := t0.Add(15 * 24 * time.Hour)
	if out, code := runCode(t, late, "manifest", "sign", "--in", src, "--key", filepath.Join(dir, "a.key"), "--out", filepath.Join(dir, "x.json")); code != 1 || !strings.Contains(out, "expired") {
		t.Fatalf("sign expired: exit %d %s", code, out)
	}
	if out, code := runCode(t, late, "manifest", "verify", "--envelope", env, "--keys-dir", dir); code != 1 || !strings.Contains(out, "expired") {
		t.Fatalf("verify expired: exit %d %s", code, out)
	}
	if out := run(t, t0.Add(13*24*time.Hour), "manifest", "lint", src); !strings.Contains(out, "warning: expires in") {
		t.Fatalf("lint near expiry: %s", out)
	}
	// An expiry further out than the publisher's max (30 days by default,
	// hosts' manifest.max_expiry) is a warning, on a source and on an envelope.
	far := filepath.Join(dir, "far.yaml")
	run(t, t0, "manifest", "add", "--manifest", far, "--rpm", rpm, "--expires-in", "90d")
	farEnv := filepath.Join(dir, "far.json")
	run(t, t0, "manifest", "sign", "--in", far, "--key", filepath.Join(dir, "a.key"), "--out", farEnv)
	for _, f := range []string{far, farEnv} {
		if out := run(t, t0, "manifest", "lint", f); !strings.Contains(out, "more than the 720h0m0s limit") || !strings.Contains(out, "1 warning(s)") {
			t.Fatalf("lint 90-day expiry %s: %s", f, out)
		}
	}
	if out := run(t, t0, "manifest", "lint", "--max-expiry", "2400h", far); !strings.Contains(out, "0 warning(s)") {
		t.Fatalf("lint 90-day expiry under --max-expiry 2400h: %s", out)
	}
	if out := run(t, t0, "manifest", "lint", src); strings.Contains(out, "limit") {
		t.Fatalf("lint 14-day expiry: %s", out)
	}
}

func TestAddRejectsBadRPM(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.rpm")
	os.WriteFile(junk, []byte("not an rpm"), 0o644)
	if out, code := runCode(t, t0, "manifest", "add", "--manifest", filepath.Join(dir, "m.yaml"), "--rpm", junk); code != 1 {
		t.Fatalf("junk rpm: exit %d %s", code, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "m.yaml")); err == nil {
		t.Fatal("a failed add wrote the manifest")
	}
}

func TestExplainRollout(t *testing.T) {
	dir, _, env := publisherFixture(t, "--tier", "canary", "--start", t0.Format(time.RFC3339), "--duration", "24h")
	stateDir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	os.MkdirAll(keys, 0o755)
	pub, _ := os.ReadFile(filepath.Join(dir, "a.pub"))
	os.WriteFile(filepath.Join(keys, "a.pub"), pub, 0o644)
	mkcfg := func(tier string) string {
		root := t.TempDir()
		writeHostRoot(t, root, testKernel, "0123456789abcdef0123456789abcdef")
		cfg := filepath.Join(t.TempDir(), "config.yaml")
		os.WriteFile(cfg, []byte("trust:\n  keys_dir: "+keys+"\nhost:\n  tier: \""+tier+"\"\npaths:\n  root: "+root+"\n  state_dir: "+stateDir+"\n"), 0o644)
		return cfg
	}
	tests := []struct {
		name, tier, at, want string
	}{
		{"canary at start gets level 2", "canary", t0.Format(time.RFC3339), "wanted:   klp_cmdline_2 level 2"},
		{"others at start stay on 1", "", t0.Format(time.RFC3339), "wanted:   klp_cmdline_1 level 1"},
		{"others after the ramp get 2", "", t0.Add(25 * time.Hour).Format(time.RFC3339), "wanted:   klp_cmdline_2 level 2"},
		{"before the start nobody gets 2", "canary", t0.Add(-time.Hour).Format(time.RFC3339), "rollout starts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := run(t, t0, "explain", "--config", mkcfg(tt.tier), "--manifest", env, "--at", tt.at)
			if !strings.Contains(out, tt.want) {
				t.Fatalf("explain:\n%s\nwant %q", out, tt.want)
			}
		})
	}
}

// hostConfig makes a host root and a config with an empty keys dir; extra
// is more YAML for the config. The status snapshot goes under dir, never
// to the default /run/klp-agent/status.json: a daemon a test starts as
// root wrote the real host's snapshot there.
func hostConfig(t *testing.T, extra string) (dir, keys, cfg string) {
	t.Helper()
	dir = t.TempDir()
	keys = filepath.Join(dir, "keys")
	os.MkdirAll(keys, 0o755)
	root := t.TempDir()
	writeHostRoot(t, root, testKernel, "0123456789abcdef0123456789abcdef")
	cfg = filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte(extra+"trust:\n  keys_dir: "+keys+"\npaths:\n  root: "+root+"\n  status_file: "+filepath.Join(dir, "status.json")+"\n"), 0o644)
	return dir, keys, cfg
}

func TestCheckConfig(t *testing.T) {
	dir, keys, cfg := hostConfig(t, "manifest:\n  url: https://patches.example/m.json\n")
	// No key yet: the effective config is shown, and the problem named.
	out, code := runCode(t, t0, "check-config", "--config", cfg)
	if code != 1 || !strings.Contains(out, "poll_interval: 15m0s") || !strings.Contains(out, "holds 0 key(s)") {
		t.Fatalf("check-config without keys: exit %d\n%s", code, out)
	}
	run(t, t0, "manifest", "keygen", "--out", filepath.Join(keys, "release"))
	out = run(t, t0, "check-config", "--config", cfg)
	if !strings.Contains(out, "trusted keys (1)") {
		t.Fatalf("check-config: %s", out)
	}
	os.MkdirAll(filepath.Join(dir, "config.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "config.d", "10-typo.yaml"), []byte("manifest:\n  pollinterval: 5m\n"), 0o644)
	if out, code := runCode(t, t0, "check-config", "--config", cfg); code != 1 || !strings.Contains(out, "10-typo.yaml") || !strings.Contains(out, "line 2") {
		t.Fatalf("check-config with a typo: exit %d\n%s", code, out)
	}
}

// Every command and subcommand answers --help with its usage and exit 0:
// that text is the manual (klp-agent(8) and the completions are generated
// from it, see helpdoc_test.go).
func TestHelpCoversEveryCommand(t *testing.T) {
	top, code := runCode(t, t0, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	groups := map[string][]string{"manifest": {"keygen", "add", "revoke", "sign", "verify", "lint"}, "klp": {"list", "apply", "disable"}}
	for name := range commands() {
		if !strings.Contains(top, "  "+name) {
			t.Errorf("--help does not list %q:\n%s", name, top)
		}
		out, code := runCode(t, t0, name, "--help")
		if code != 0 || !strings.Contains(out, "usage: klp-agent "+name) {
			t.Errorf("%s --help: exit %d\n%s", name, code, out)
		}
		for _, sub := range groups[name] {
			if !strings.Contains(out, "  "+sub) {
				t.Errorf("%s --help does not list %q", name, sub)
			}
			if o, c := runCode(t, t0, name, sub, "--help"); c != 0 || !strings.Contains(o, "usage: klp-agent "+name+" "+sub) {
				t.Errorf("%s %s --help: exit %d\n%s", name, sub, c, o)
			}
		}
	}
}

// TestHelpConventions: asked-for help goes to stdout with exit 0, errors'
// usage to stderr; --version works; flags show as --name.
func TestHelpConventions(t *testing.T) {
	tests := []struct {
		args           []string
		code           int
		stdout, stderr string // substrings; "" means must be empty
	}{
		{[]string{"--help"}, 0, "commands:", ""},
		{[]string{"-h"}, 0, "commands:", ""},
		{nil, 2, "", "usage: klp-agent"},
		{[]string{"--version"}, 0, "klp-agent ", ""},
		{[]string{"status", "--help"}, 0, "  --config STRING", ""},
		{[]string{"klp", "apply", "-h"}, 0, "  --rpm STRING", ""},
		{[]string{"status", "--bogus"}, 2, "", "  --config STRING"},
	}
	for _, tt := range tests {
		var out, errb strings.Builder
		code := Main(tt.args, &Env{Stdout: &out, Stderr: &errb, Now: func() time.Time { return t0 }})
		if code != tt.code {
			t.Errorf("%v: exit %d, want %d", tt.args, code, tt.code)
		}
		for _, c := range []struct{ got, want, name string }{{out.String(), tt.stdout, "stdout"}, {errb.String(), tt.stderr, "stderr"}} {
			if (c.want == "" && c.got != "") || !strings.Contains(c.got, c.want) {
				t.Errorf("%v: %s %q, want it to contain %q", tt.args, c.name, c.got, c.want)
			}
			if strings.Contains(c.got, "\n  -") && !strings.Contains(c.got, "\n  --") {
				t.Errorf("%v: a flag shown with one dash: %q", tt.args, c.got)
			}
		}
	}
}

// Usage errors are said once, then the command's usage, exactly.
func TestUsageMessages(t *testing.T) {
	usageOf := func(cmd string) string {
		var out bytes.Buffer
		commands()[cmd].run(&Env{Stdout: &out, Stderr: &out, Now: time.Now}, []string{"--help"})
		return out.String()
	}
	for _, tt := range []struct {
		args []string
		want string // the whole output
	}{
		{[]string{"status", "--bogus"}, "klp-agent status: usage: flag provided but not defined: -bogus\n" + usageOf("status")},
		{[]string{"hold", "--until"}, "klp-agent hold: usage: flag needs an argument: -until\n" + usageOf("hold")},
		{[]string{"pin"}, "klp-agent pin: usage: LEVEL is missing: pin LEVEL, or pin --clear to remove the pin\n" + usageOf("pin")},
		{[]string{"pin", "0"}, "klp-agent pin: usage: LEVEL \"0\" must be a number >= 1\n" + usageOf("pin")},
		{[]string{"pin", "--clear", "3"}, "klp-agent pin: usage: pin --clear takes no LEVEL, got [\"3\"]\n" + usageOf("pin")},
		{[]string{"unblock"}, "klp-agent unblock: usage: NAME@LEVEL is missing\n" + usageOf("unblock")},
		{[]string{"unblock", "klp_x"}, "klp-agent unblock: usage: \"klp_x\" is not NAME@LEVEL\n" + usageOf("unblock")},
		{[]string{"version", "extra"}, "klp-agent version: usage: unexpected arguments [\"extra\"]\n" + usageOf("version")},
		{[]string{"reload", "--pid", "1"}, "klp-agent reload: usage: --pid 1 is no daemon's\n" + usageOf("reload")},
	} {
		out, code := runCode(t, t0, tt.args...)
		if code != 2 || out != tt.want {
			t.Errorf("klp-agent %v: exit %d\n%s\nwant exit 2\n%s", tt.args, code, out, tt.want)
		}
	}
	// Unknown at the top level: a flag is called a flag.
	for arg, want := range map[string]string{"--bogus": `klp-agent: unknown flag "--bogus"`, "-x": `klp-agent: unknown flag "-x"`, "frobnicate": `klp-agent: unknown command "frobnicate"`} {
		out, code := runCode(t, t0, arg)
		if first, _, _ := strings.Cut(out, "\n"); code != 2 || first != want || !strings.Contains(out, "usage: klp-agent <command>") {
			t.Errorf("klp-agent %s: exit %d\n%s", arg, code, out)
		}
	}
}

// --until: an RFC 3339 time, a date alone (00:00 UTC that day, whatever
// the host's zone), or a duration from now.
func TestParseUntil(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2027-01-01":                time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		"2027-01-01T06:30:00+02:00": time.Date(2027, 1, 1, 4, 30, 0, 0, time.UTC),
		"2h":                        now.Add(2 * time.Hour),
		"7d":                        now.Add(7 * 24 * time.Hour),
	} {
		if got, err := parseUntil(in, now); err != nil || !got.Equal(want) {
			t.Errorf("%s: %v %v, want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"soon", "2027-13-01", "2027-01-01 06:00", "-2h", "0s"} {
		if _, err := parseUntil(in, now); err == nil || !strings.Contains(err.Error(), "a date (YYYY-MM-DD, 00:00 UTC)") {
			t.Errorf("%s: %v", in, err)
		}
	}
}
