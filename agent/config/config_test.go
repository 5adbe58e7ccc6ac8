package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/health"
)

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadMergesDropinsInOrder(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"config.yaml":            "manifest:\n  url: https://patches.example/klp/manifest.json\n  poll_interval: 10m\nhost:\n  tier: canary\n",
		"config.d/20-late.yaml":  "manifest:\n  poll_interval: 5m\n",
		"config.d/10-early.yaml": "manifest:\n  poll_interval: 1h\n  max_size: 2MiB\nlog:\n  level: debug\n",
		"config.d/README":        "not yaml, not read",
	})
	l, err := Load(filepath.Join(dir, "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c := l.Config
	if c.Manifest.PollInterval != 5*time.Minute {
		t.Errorf("poll_interval %v, want the last drop-in's 5m", c.Manifest.PollInterval)
	}
	if c.Manifest.URL != "https://patches.example/klp/manifest.json" || c.Host.Tier != "canary" {
		t.Errorf("main file settings lost: %+v", c)
	}
	if c.Manifest.MaxSize != 2<<20 || c.Log.Level != "debug" {
		t.Errorf("drop-in settings lost: %+v", c)
	}
	if c.Manifest.Retries != Default().Manifest.Retries || c.Trust.KeysDir != "/etc/klp-agent/keys" {
		t.Errorf("defaults lost: %+v", c)
	}
	if len(l.Files) != 3 || !strings.HasSuffix(l.Files[1], "10-early.yaml") {
		t.Errorf("files read %v", l.Files)
	}
	if o := l.Origin["manifest.poll_interval"]; !strings.HasSuffix(o, "20-late.yaml:2") {
		t.Errorf("origin of poll_interval %q", o)
	}
}

// .yml drop-ins are read like .yaml ones, in one lexical order by whole
// name; other files in config.d are not configuration.
func TestLoadReadsYmlDropins(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"config.yaml":            "manifest:\n  poll_interval: 10m\n",
		"config.d/10-a.yml":      "manifest:\n  poll_interval: 1h\nhost:\n  tier: canary\n",
		"config.d/20-b.yaml":     "manifest:\n  poll_interval: 5m\n",
		"config.d/30-c.yml":      "log:\n  level: debug\n",
		"config.d/40-d.yml~":     "log: {level: error}\n",
		"config.d/50-e.rpmsave":  "log: {level: error}\n",
		"config.d/60-f.YAML.txt": "log: {level: error}\n",
	})
	l, err := Load(filepath.Join(dir, "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range l.Files {
		names = append(names, filepath.Base(f))
	}
	if got := strings.Join(names, " "); got != "config.yaml 10-a.yml 20-b.yaml 30-c.yml" {
		t.Errorf("files read: %s", got)
	}
	if c := l.Config; c.Manifest.PollInterval != 5*time.Minute || c.Host.Tier != "canary" || c.Log.Level != "debug" {
		t.Errorf("effective: poll_interval %v tier %q level %q", c.Manifest.PollInterval, c.Host.Tier, c.Log.Level)
	}
	// A .yml drop-in is as strict as a .yaml one.
	os.WriteFile(filepath.Join(dir, "config.d", "70-typo.yml"), []byte("log:\n  levle: debug\n"), 0o644)
	if _, err := Load(filepath.Join(dir, "config.yaml")); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "70-typo.yml") {
		t.Errorf("typo in a .yml drop-in: %v", err)
	}
}

func TestLoadRejects(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		wantIn  []string // substrings the error must contain: file, line, key
		wantErr error
	}{
		{"unknown key", map[string]string{"config.yaml": "manifest:\n  url: https://x/m\n  pol_interval: 5m\n"},
			[]string{"config.yaml", "line 3", "pol_interval"}, ErrInvalid},
		{"unknown section", map[string]string{"config.yaml": "log:\n  level: info\nhealthz:\n  x: 1\n"},
			[]string{"line 3", "healthz"}, ErrInvalid},
		{"duplicate key", map[string]string{"config.yaml": "log:\n  level: info\n  level: debug\n"},
			[]string{"config.yaml", "line 3", "already defined"}, ErrInvalid},
		{"empty file", map[string]string{"config.yaml": "log: {level: info}\n", "config.d/50-empty.yaml": "# nothing\n"},
			[]string{"50-empty.yaml", "empty"}, ErrInvalid},
		{"trailing document", map[string]string{"config.yaml": "log: {level: info}\n---\nlog: {level: debug}\n"},
			[]string{"config.yaml", "line 2", "second YAML document"}, ErrInvalid},
		{"bad duration", map[string]string{"config.yaml": "manifest:\n  poll_interval: often\n"},
			[]string{"config.yaml", "line 2"}, ErrInvalid},
		{"bad size", map[string]string{"config.yaml": "manifest:\n  max_size: lots\n"},
			[]string{"line 2", "size"}, ErrInvalid},
		{"max_expiry unbounded", map[string]string{"config.yaml": "manifest:\n  max_expiry: 876000h\n"},
			[]string{"manifest.max_expiry", "876000h0m0s not in [1h,8760h]"}, ErrInvalid},
		{"maintenance window day", map[string]string{"config.yaml": "apply:\n  windows:\n    - {days: [monday], start: \"02:00\", end: \"04:00\"}\n"},
			[]string{"apply.windows", "config.yaml:3", `day "monday"`}, ErrInvalid},
		{"maintenance window unknown key", map[string]string{"config.yaml": "apply:\n  windows:\n    - {start: \"02:00\", end: \"04:00\", tz: UTC}\n"},
			[]string{"line 3", "tz"}, ErrInvalid},
		{"max_expiry zero", map[string]string{"config.yaml": "manifest:\n  max_expiry: 0s\n"},
			[]string{"manifest.max_expiry", "not in [1h,8760h]"}, ErrInvalid},
		{"policy kind typo", map[string]string{"config.yaml": "health:\n  policy:\n    attributed: [opps]\n"},
			[]string{"health.policy", "config.yaml:3", `unknown kind "opps"`}, ErrInvalid},
		{"threshold zero", map[string]string{"config.yaml": "health:\n  policy:\n    thresholds: {warning: 0}\n"},
			[]string{"health.policy", "warning: 0 must be >= 1"}, ErrInvalid},
		{"health command through a shell", map[string]string{"config.yaml": "health:\n  command:\n    argv: [sh, -c, 'curl x']\n"},
			[]string{"health.command.argv", "absolute path"}, ErrInvalid},
		{"netconsole address", map[string]string{"config.yaml": "health:\n  netconsole:\n    listen: 6666\n    allow: [10.0.0.1]\n"},
			[]string{"health.netconsole.listen", "host:port"}, ErrInvalid},
		{"netconsole as one value (earlier versions)", map[string]string{"config.yaml": "health:\n  netconsole: 0.0.0.0:6666\n"},
			[]string{"line 2", "health.netconsole is a section", "allow"}, ErrInvalid},
		{"netconsole without senders", map[string]string{"config.yaml": "health:\n  netconsole:\n    listen: 0.0.0.0:6666\n"},
			[]string{"health.netconsole.allow", "anyone can send UDP"}, ErrInvalid},
		{"netconsole sender", map[string]string{"config.yaml": "health:\n  netconsole:\n    listen: 0.0.0.0:6666\n    allow: [10.0.0.0/33]\n"},
			[]string{"health.netconsole.allow", "10.0.0.0/33"}, ErrInvalid},
		{"netconsole unknown key", map[string]string{"config.yaml": "health:\n  netconsole:\n    listen: 0.0.0.0:6666\n    allow: [10.0.0.1]\n    alow: []\n"},
			[]string{"alow"}, ErrInvalid},
		{"kdump dir relative", map[string]string{"config.yaml": "health:\n  kdump_dir: var/crash\n"},
			[]string{"health.kdump_dir", "absolute"}, ErrInvalid},
		{"pstore dir relative", map[string]string{"config.yaml": "health:\n  pstore_dir: sys/fs/pstore\n"},
			[]string{"health.pstore_dir", "absolute"}, ErrInvalid},
		{"top level list", map[string]string{"config.yaml": "- a\n- b\n"},
			[]string{"config.yaml", "line 1"}, ErrInvalid},
		{"validation names origin", map[string]string{"config.yaml": "log: {level: info}\n", "config.d/10-x.yaml": "manifest:\n  poll_interval: 1s\n"},
			[]string{"manifest.poll_interval", "10-x.yaml:2", "10s minimum"}, ErrInvalid},
		{"bad url", map[string]string{"config.yaml": "manifest:\n  url: ftp://x/m\n"}, []string{"manifest.url"}, ErrInvalid},
		{"shard url without {kernel}", map[string]string{"config.yaml": "manifest:\n  url: https://x/m.json\n  shard_url: https://x/shards/k.json\n"}, []string{"manifest.shard_url", "{kernel} must appear exactly once"}, ErrInvalid},
		{"shard url {kernel} not the file name", map[string]string{"config.yaml": "manifest:\n  url: https://x/m.json\n  shard_url: https://x/{kernel}/s.json\n"}, []string{"manifest.shard_url", "file name"}, ErrInvalid},
		{"shard url without url", map[string]string{"config.yaml": "manifest:\n  shard_url: https://x/shards/{kernel}.json\n"}, []string{"manifest.shard_url", "needs manifest.url"}, ErrInvalid},
		{"bad tier", map[string]string{"config.yaml": "host:\n  tier: ../x\n"}, []string{"host.tier"}, ErrInvalid},
		{"bad level", map[string]string{"config.yaml": "log:\n  level: loud\n"}, []string{"log.level", "debug, info"}, ErrInvalid},
		{"relative state dir", map[string]string{"config.yaml": "paths:\n  state_dir: var/lib\n"}, []string{"paths.state_dir"}, ErrInvalid},
		{"jitter over 1", map[string]string{"config.yaml": "manifest:\n  poll_jitter: 2\n"}, []string{"poll_jitter"}, ErrInvalid},
		{"threshold 0", map[string]string{"config.yaml": "trust:\n  threshold: 0\n"}, []string{"trust.threshold"}, ErrInvalid},
		{"metrics socket relative", map[string]string{"config.yaml": "metrics:\n  listen: unix:run/m.sock\n"}, []string{"metrics.listen", "absolute"}, ErrInvalid},
		{"metrics listen no port", map[string]string{"config.yaml": "metrics:\n  listen: 127.0.0.1\n"}, []string{"metrics.listen", "host:port"}, ErrInvalid},
		{"metrics socket mode", map[string]string{"config.yaml": "metrics:\n  socket_mode: \"0999\"\n"}, []string{"metrics.socket_mode", "octal"}, ErrInvalid},
		{"metrics socket mode too wide", map[string]string{"config.yaml": "metrics:\n  socket_mode: \"01777\"\n"}, []string{"metrics.socket_mode"}, ErrInvalid},
		{"missing main file", map[string]string{"other.yaml": "x: 1\n"}, []string{"config.yaml"}, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeTree(t, tt.files)
			_, err := Load(filepath.Join(dir, "config.yaml"))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Load error %v, want %v", err, tt.wantErr)
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

func TestFailedFileChangesNothing(t *testing.T) {
	c := Default()
	if err := Decode([]byte("log:\n  level: debug\n  bogus: 1\n"), &c); err == nil {
		t.Fatal("want error")
	}
	if c.Log.Level != "info" {
		t.Fatalf("a rejected file changed the config: level %q", c.Log.Level)
	}
}

func TestHostID(t *testing.T) {
	root := writeTree(t, map[string]string{"etc/machine-id": "0123456789abcdef0123456789abcdef\n"})
	c := Default()
	c.Paths.Root = root
	if id, err := c.HostID(); err != nil || id != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("HostID = %q, %v", id, err)
	}
	c.Host.ID = "override"
	if id, _ := c.HostID(); id != "override" {
		t.Fatalf("host.id override ignored: %q", id)
	}
	for _, content := range []string{"", "uninitialized\n"} {
		r := writeTree(t, map[string]string{"etc/machine-id": content})
		c := Default()
		c.Paths.Root = r
		if _, err := c.HostID(); !errors.Is(err, ErrNoHostID) {
			t.Errorf("machine-id %q: %v, want ErrNoHostID", content, err)
		}
	}
}

// The commented sample in packaging/ must load, and loaded alone it must
// equal the built-in defaults it documents.
func TestSampleConfigIsDefaults(t *testing.T) {
	b, err := os.ReadFile("../../packaging/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := Default()
	if err := Decode(b, &c); err != nil {
		t.Fatalf("packaging/config.yaml: %v", err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Fatalf("packaging/config.yaml differs from Default():\n%+v\n%+v", c, Default())
	}
}

func TestEffectiveYAMLGolden(t *testing.T) {
	c := Default()
	got, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "default.golden.yaml")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create)", err)
	}
	if string(got) != string(want) {
		t.Fatalf("effective YAML differs from %s:\n%s", golden, got)
	}
	// And it must load back to the same config.
	c2 := Default()
	c2.Log.Level = "error"
	if err := Decode(got, &c2); err != nil || !reflect.DeepEqual(c2, c) {
		t.Fatalf("effective YAML does not round-trip: %v", err)
	}
}

// A drop-in that names a list or the thresholds map replaces it; one that
// does not keeps it; null and empty both mean none.
func TestDecodeListsAndMapsReplace(t *testing.T) {
	def := Default()
	for _, tc := range []struct {
		name, doc  string
		thresholds map[health.Kind]int
		attributed []health.Kind
		argv       []string
	}{
		{"unnamed keeps", "health: {policy: {window: 1h}}", def.Health.Policy.Thresholds, def.Health.Policy.Attributed, []string{}},
		{"named replaces", "health: {policy: {thresholds: {warning: 20}}}", map[health.Kind]int{health.KindWarning: 20}, def.Health.Policy.Attributed, []string{}},
		{"empty map clears", "health: {policy: {thresholds: {}}}", map[health.Kind]int{}, def.Health.Policy.Attributed, []string{}},
		{"null map clears", "health:\n  policy:\n    thresholds:\n", map[health.Kind]int{}, def.Health.Policy.Attributed, []string{}},
		{"null list is empty", "health: {policy: {attributed: null}, command: {argv: ~}}", def.Health.Policy.Thresholds, []health.Kind{}, []string{}},
		{"list replaces", "health: {policy: {attributed: [panic]}, command: {argv: [/bin/true, -x]}}", def.Health.Policy.Thresholds, []health.Kind{health.KindPanic}, []string{"/bin/true", "-x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			if err := Decode([]byte(tc.doc), &c); err != nil {
				t.Fatal(err)
			}
			p := c.Health.Policy
			if !reflect.DeepEqual(p.Thresholds, tc.thresholds) {
				t.Errorf("thresholds = %v, want %v", p.Thresholds, tc.thresholds)
			}
			if !reflect.DeepEqual(p.Attributed, tc.attributed) {
				t.Errorf("attributed = %v, want %v", p.Attributed, tc.attributed)
			}
			if !reflect.DeepEqual(c.Health.Command.Argv, tc.argv) {
				t.Errorf("argv = %#v, want %#v", c.Health.Command.Argv, tc.argv)
			}
			// The default's map is not shared with the result.
			if def2 := Default(); !reflect.DeepEqual(def2, def) {
				t.Error("Default() changed")
			}
		})
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"4194304": 4 << 20, "4MiB": 4 << 20, "512 KiB": 512 << 10, "1GiB": 1 << 30, "10B": 10} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(in)); err != nil || b != want {
			t.Errorf("%q -> %v, %v; want %v", in, b, err, want)
		}
	}
	for _, in := range []string{"", "-1", "4MB", "1.5MiB", "99999999999GiB"} {
		var b ByteSize
		if err := b.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q accepted as %v", in, b)
		}
	}
	if s := ByteSize(4 << 20).String(); s != "4MiB" {
		t.Errorf("String() = %q", s)
	}
}

// TestShardURLRedacted: credentials in manifest.shard_url are masked as in
// manifest.url, and {kernel} is shown as written.
func TestShardURLRedacted(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"https://u:pa55@m/klp/{kernel}.json?token=T0K", "https://u:xxxxx@m/klp/{kernel}.json?token=xxxxx"},
		{"https://T0K@m/klp/{kernel}.json", "https://xxxxx@m/klp/{kernel}.json"},
		{"https://m/klp/{kernel}.json", "https://m/klp/{kernel}.json"},
		{"/srv/klp/{kernel}.json", "/srv/klp/{kernel}.json"},
	} {
		var cfg Config
		cfg.Manifest.ShardURL = c.in
		if got := cfg.Redacted().Manifest.ShardURL; got != c.want {
			t.Errorf("%s shown as %s, want %s", c.in, got, c.want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	if b, err := os.ReadFile("../../packaging/config.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("manifest:\n  url: https://x/m\n  poll_interval: 5m\n  max_size: 4MiB\n"))
	f.Add([]byte("log: {level: debug}\n---\n"))
	f.Add([]byte("host: &h {tier: a}\ntrust: *h\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Default()
		before := c
		if err := Decode(b, &c); err != nil {
			if !reflect.DeepEqual(c, before) {
				t.Fatal("rejected input changed the config")
			}
			return
		}
		// Whatever decodes must render and decode back to the same config,
		// as shown: with its credentials masked (masking them again changes
		// nothing).
		out, err := c.YAML()
		if err != nil {
			t.Fatalf("render: %v", err)
		}
		c2 := Default()
		if err := Decode(out, &c2); err != nil {
			t.Fatalf("re-decode of rendered config: %v\n%s", err, out)
		}
		if shown := c.Redacted(); !reflect.DeepEqual(c2, shown) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", shown, c2)
		}
	})
}
