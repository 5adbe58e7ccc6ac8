// Package config loads the agent's configuration: /etc/klp-agent/config.yaml
// plus drop-ins in config.d/*.yaml and *.yml applied in lexical order, each decoded
// strictly so that a typo is an error naming file and line, not a silently
// ignored setting.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/klp-agent/klp-agent/agent/window"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/internal/redact"
	"github.com/klp-agent/klp-agent/manifest"
)

// DefaultPath is the main configuration file.
const DefaultPath = "/etc/klp-agent/config.yaml"

// ErrInvalid wraps every configuration error.
var ErrInvalid = errors.New("invalid configuration")

// Config is the effective configuration.
type Config struct {
	Manifest ManifestConfig `yaml:"manifest"`
	Trust    TrustConfig    `yaml:"trust"`
	Host     HostConfig     `yaml:"host"`
	Apply    ApplyConfig    `yaml:"apply"`
	Health   HealthConfig   `yaml:"health"`
	Metrics  MetricsConfig  `yaml:"metrics"`
	Paths    PathsConfig    `yaml:"paths"`
	Log      LogConfig      `yaml:"log"`
}

// ApplyConfig tunes how a patch goes in and how long it must prove itself.
type ApplyConfig struct {
	Soak              time.Duration `yaml:"soak"`
	TransitionTimeout time.Duration `yaml:"transition_timeout"`
	ForceOnStall      bool          `yaml:"force_on_stall"`
	RPMNoDeps         bool          `yaml:"rpm_nodeps"`
	RPMScripts        bool          `yaml:"rpm_scripts"` // let the package's %pre/%post and triggers run
	RequireSignature  bool          `yaml:"require_signature"`
	RPMKeyring        string        `yaml:"rpm_keyring"`
	RPMDBPath         string        `yaml:"rpm_dbpath"`
	// Windows are the maintenance windows new levels wait for; none = any
	// time. Rollbacks and the boot re-apply of the good level never wait.
	Windows []window.Spec `yaml:"windows"`
}

// MaintenanceWindows parses apply.windows (validated by Load).
func (a ApplyConfig) MaintenanceWindows() window.Set {
	s, _ := window.ParseAll(a.Windows, nil)
	return s
}

// HealthConfig selects the crash signals the agent watches and the policy
// that turns them into rollbacks.
type HealthConfig struct {
	Kmsg          bool             `yaml:"kmsg"` // follow /dev/kmsg
	Netconsole    NetconsoleConfig `yaml:"netconsole"`
	KdumpDir      string           `yaml:"kdump_dir"`      // under paths.root; "" = no kdump scan
	PstoreDir     string           `yaml:"pstore_dir"`     // under paths.root; "" = no pstore scan
	Taint         bool             `yaml:"taint"`          // watch /proc/sys/kernel/tainted
	TaintInterval time.Duration    `yaml:"taint_interval"` // how often
	Command       CommandConfig    `yaml:"command"`
	Policy        health.Policy    `yaml:"policy"`
}

// NetconsoleConfig is the netconsole receiver. UDP is unauthenticated:
// only the listed senders count, only extended records (which carry the
// kernel's facility and level), and a netconsole report alone does not
// roll back unless Acts says so.
type NetconsoleConfig struct {
	Listen string   `yaml:"listen"` // UDP address, e.g. 0.0.0.0:6666; "" = off
	Allow  []string `yaml:"allow"`  // sender addresses or CIDRs; required to listen
	// RequireRelease drops records that do not name this host's kernel
	// release (netconsole's "r" option; Linux 6.6 and later send it).
	// Off (the default), they are kept: their reports are recorded and
	// journalled but never roll back on their own, acts or not.
	RequireRelease bool `yaml:"require_release"`
	// Acts lets a netconsole report naming this host's release roll back
	// on its own.
	Acts bool `yaml:"acts"`
}

// AllowPrefixes parses Allow; Validate has checked it.
func (n NetconsoleConfig) AllowPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, a := range n.Allow {
		if p, err := parsePrefix(a); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// parsePrefix takes an address (one host) or a CIDR.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// CommandConfig is the operator's own health check, run without a shell.
type CommandConfig struct {
	Argv     []string      `yaml:"argv"` // empty = none
	Timeout  time.Duration `yaml:"timeout"`
	Interval time.Duration `yaml:"interval"`
	Failures int           `yaml:"failures"` // consecutive failures that count as one event
}

// MetricsConfig says where Prometheus metrics go.
type MetricsConfig struct {
	Textfile string `yaml:"textfile"` // node_exporter textfile collector file (*.prom)
	// Listen is an optional HTTP listener: loopback host:port (e.g.
	// 127.0.0.1:9797) or unix:/absolute/path.sock.
	Listen string `yaml:"listen"`
	// SocketMode is the unix socket's mode, octal ("0660"): who may read
	// the metrics, by the socket's group.
	SocketMode string `yaml:"socket_mode"`
}

// ManifestConfig says where the signed manifest is and how to poll it.
type ManifestConfig struct {
	// URL is an http(s) URL, a file:// URL or an absolute path (a
	// directory: its manifest.json), see manifest.Location.
	URL string `yaml:"url"`
	// ShardURL, a template with {kernel}, makes the host poll its own
	// kernel's shard instead of URL (see manifest.ShardURL).
	ShardURL string `yaml:"shard_url"`
	CABundle string `yaml:"ca_bundle"`
	// ClientCert and ClientKey (PEM files, both or neither) authenticate
	// this host to a mirror that requires mutual TLS.
	ClientCert   string        `yaml:"client_cert"`
	ClientKey    string        `yaml:"client_key"`
	PollInterval time.Duration `yaml:"poll_interval"`
	PollJitter   float64       `yaml:"poll_jitter"`
	Timeout      time.Duration `yaml:"timeout"`
	Retries      int           `yaml:"retries"`
	IdleTimeout  time.Duration `yaml:"idle_timeout"`
	MaxSize      ByteSize      `yaml:"max_size"`
	// MaxExpiry refuses a manifest whose expiry is further out than this
	// from its signed_at or, without one, the host's clock at fetch time.
	MaxExpiry time.Duration `yaml:"max_expiry"`
	// RevocationsURL is the fast revocation channel's revocations.json
	// ("": beside the manifest URL).
	RevocationsURL string `yaml:"revocations_url"`
	// RevocationsInterval paces its polls, with poll_jitter (0: off).
	RevocationsInterval time.Duration `yaml:"revocations_interval"`
}

// TrustConfig says whose signatures count.
type TrustConfig struct {
	KeysDir   string `yaml:"keys_dir"`
	Threshold int    `yaml:"threshold"`
	// Root is the provisioned root of trust (root.json). When set, the
	// newest root on the chain names the manifest keys and threshold, and
	// KeysDir and Threshold are not used: the root wins.
	Root string `yaml:"root"`
}

// HostConfig identifies this host for staged rollout.
type HostConfig struct {
	ID     string `yaml:"id"`      // overrides IDFile
	IDFile string `yaml:"id_file"` // read under paths.root
	Tier   string `yaml:"tier"`
}

// PathsConfig roots everything the agent touches, so tests and containers
// can point it elsewhere (like node_exporter's --path.sysfs).
type PathsConfig struct {
	Root     string `yaml:"root"`      // prefix for /proc, /sys, /etc/machine-id
	StateDir string `yaml:"state_dir"` // not under root: it is the agent's own
	// StatusFile is the world-readable status snapshot the daemon writes
	// (no secrets in it), read by `status` without the config or root.
	StatusFile string `yaml:"status_file"`
}

// LogConfig selects logging output.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// DefaultStatusFile is where the daemon writes its status snapshot and
// where `status` looks for it when it cannot read the configuration.
const DefaultStatusFile = "/run/klp-agent/status.json"

// Default returns the built-in defaults, which packaging/config.yaml documents.
func Default() Config {
	return Config{
		Manifest: ManifestConfig{
			PollInterval:        15 * time.Minute,
			PollJitter:          0.2,
			RevocationsInterval: 30 * time.Second,
			Timeout:             2 * time.Minute,
			Retries:             4,
			IdleTimeout:         30 * time.Second,
			MaxSize:             manifest.DefaultMaxSize,
			MaxExpiry:           manifest.DefaultMaxExpiry,
		},
		Trust: TrustConfig{KeysDir: "/etc/klp-agent/keys", Threshold: 1},
		Apply: ApplyConfig{Soak: 30 * time.Minute, TransitionTimeout: 60 * time.Second, Windows: []window.Spec{}},
		Health: HealthConfig{
			Kmsg: true, KdumpDir: "/var/crash", PstoreDir: "/sys/fs/pstore", Taint: true, TaintInterval: 5 * time.Second,
			Netconsole: NetconsoleConfig{Allow: []string{}},
			Command:    CommandConfig{Argv: []string{}, Timeout: 30 * time.Second, Interval: time.Minute, Failures: 3},
			Policy:     health.DefaultPolicy(),
		},
		Host:    HostConfig{IDFile: "/etc/machine-id"},
		Paths:   PathsConfig{Root: "/", StateDir: "/var/lib/klp-agent", StatusFile: DefaultStatusFile},
		Log:     LogConfig{Level: "info", Format: "auto"},
		Metrics: MetricsConfig{SocketMode: "0660"},
	}
}

// UnixPrefix marks metrics.listen as a unix socket path.
const UnixPrefix = "unix:"

// SocketPath is metrics.listen's unix socket path ("" when it is TCP).
func (m MetricsConfig) SocketPath() string {
	p, ok := strings.CutPrefix(m.Listen, UnixPrefix)
	if !ok {
		return ""
	}
	return p
}

// Mode is metrics.socket_mode parsed (validated by Validate).
func (m MetricsConfig) Mode() os.FileMode {
	v, _ := strconv.ParseUint(m.SocketMode, 8, 32)
	return os.FileMode(v) & os.ModePerm
}

// Loaded is a configuration and where each setting came from.
type Loaded struct {
	Config
	Files  []string          // files read, in order
	Origin map[string]string // "manifest.url" -> "config.d/10-x.yaml:3"
}

// Load reads path and, if it exists, the directory config.d beside it
// (its *.yaml and *.yml files, see Dropins).
// A missing main file is an error; a missing config.d is not.
func Load(path string) (*Loaded, error) {
	l := &Loaded{Config: Default(), Origin: map[string]string{}}
	if err := l.apply(path); err != nil {
		return nil, redact.Error(err)
	}
	dropins, err := Dropins(filepath.Join(filepath.Dir(path), "config.d"))
	if err != nil {
		return nil, err
	}
	for _, p := range dropins {
		// A YAML error may quote the value, URL and all.
		if err := l.apply(p); err != nil {
			return nil, redact.Error(err)
		}
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return l, nil
}

// DropinExts are the drop-in file name endings read from config.d; other
// files there (README, *.rpmsave, editor backups) are not configuration.
var DropinExts = []string{".yaml", ".yml"}

// Dropins lists the drop-ins in dir in lexical order of their whole names,
// .yaml and .yml alike (a missing dir has none).
func Dropins(dir string) ([]string, error) {
	var out []string
	for _, ext := range DropinExts {
		m, err := filepath.Glob(filepath.Join(dir, "*"+ext))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		out = append(out, m...)
	}
	sort.Strings(out)
	return out, nil
}

func (l *Loaded) apply(path string) error {
	b, err := limitfile.Read(path, 4<<20)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := Decode(b, &l.Config); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err == nil && len(root.Content) == 1 {
		recordOrigins(root.Content[0], "", path, l.Origin)
	}
	l.Files = append(l.Files, path)
	return nil
}

// Decode applies one YAML document onto cfg strictly: unknown keys,
// duplicate keys, an empty file and a second document are errors. Keys the
// document does not mention keep their current value, which is how
// drop-ins override only what they name.
func Decode(b []byte, cfg *Config) error {
	// Decode into a copy so a file that fails half-way changes nothing;
	// maps are shared by a struct copy, so copy those too.
	//
	// A map a document names replaces the current one, as a list does: a
	// drop-in that sets health.policy.thresholds says which thresholds hold,
	// and one that does not name it keeps them.
	if line := netconsoleScalar(b); line > 0 {
		// What earlier versions took: say what to write instead.
		return fmt.Errorf("line %d: health.netconsole is a section now: listen: ADDRESS and allow: [the senders' addresses]", line)
	}
	tmp := *cfg
	tmp.Health.Policy.Thresholds = nil
	if err := manifest.DecodeStrict(b, &tmp); err != nil {
		if errors.Is(err, manifest.ErrEmptyDocument) {
			return errors.New("empty file (write at least one setting, or remove the file)")
		}
		return err
	}
	if tmp.Health.Policy.Thresholds == nil && !namesThresholds(b) {
		tmp.Health.Policy.Thresholds = maps.Clone(cfg.Health.Policy.Thresholds)
	}
	normalize(&tmp)
	*cfg = tmp
	return nil
}

// namesThresholds reports whether the document sets
// health.policy.thresholds at all (null included), through aliases too.
func namesThresholds(b []byte) bool {
	var doc struct {
		Health struct {
			Policy struct {
				Thresholds yaml.Node `yaml:"thresholds"`
			} `yaml:"policy"`
		} `yaml:"health"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return false
	}
	return doc.Health.Policy.Thresholds.Kind != 0
}

// netconsoleScalar is the line of a health.netconsole given as a plain
// value (0: it is not).
func netconsoleScalar(b []byte) int {
	var doc struct {
		Health struct {
			Netconsole yaml.Node `yaml:"netconsole"`
		} `yaml:"health"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return 0
	}
	if n := doc.Health.Netconsole; n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return n.Line
	}
	return 0
}

// normalize makes "none" one value: a null list or map and an empty one
// mean the same, so the effective config renders and re-reads unchanged.
func normalize(c *Config) {
	if c.Health.Netconsole.Allow == nil {
		c.Health.Netconsole.Allow = []string{}
	}
	if c.Health.Command.Argv == nil {
		c.Health.Command.Argv = []string{}
	}
	p := &c.Health.Policy
	if p.Attributed == nil {
		p.Attributed = []health.Kind{}
	}
	if p.SoakUnattributed == nil {
		p.SoakUnattributed = []health.Kind{}
	}
	if p.Thresholds == nil {
		p.Thresholds = map[health.Kind]int{}
	}
}

// recordOrigins notes file:line for every scalar setting.
func recordOrigins(n *yaml.Node, prefix, file string, out map[string]string) {
	if n.Kind != yaml.MappingNode {
		out[prefix] = file + ":" + strconv.Itoa(n.Line)
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := n.Content[i].Value
		if prefix != "" {
			key = prefix + "." + key
		}
		recordOrigins(n.Content[i+1], key, file, out)
	}
}

// at names where a setting was last set, for error messages.
func (l *Loaded) at(key string) string {
	if o, ok := l.Origin[key]; ok {
		return o
	}
	// A section: name where its first setting came from.
	var keys []string
	for k := range l.Origin {
		if strings.HasPrefix(k, key+".") {
			keys = append(keys, k)
		}
	}
	if len(keys) > 0 {
		sort.Strings(keys)
		return l.Origin[keys[0]]
	}
	return "default"
}

// Validate checks the merged configuration.
func (l *Loaded) Validate() error {
	c := &l.Config
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s (%s): %s", key, l.at(key), fmt.Sprintf(format, args...)))
	}
	if c.Manifest.URL != "" {
		if _, err := manifest.Location(c.Manifest.URL); err != nil {
			bad("manifest.url", "%q is not an http(s) URL, a file:// URL or an absolute path", redactURL(c.Manifest.URL))
		}
	}
	if c.Manifest.ShardURL != "" {
		if err := manifest.CheckShardURL(c.Manifest.ShardURL); err != nil {
			bad("manifest.shard_url", "%v", err)
		} else if c.Manifest.URL == "" {
			bad("manifest.shard_url", "needs manifest.url (the full manifest, beside which the root of trust is read)")
		}
	}
	if (c.Manifest.ClientCert == "") != (c.Manifest.ClientKey == "") {
		bad("manifest.client_cert", "client_cert and client_key go together (both PEM files, or neither)")
	}
	for _, f := range []struct{ key, path string }{{"manifest.client_cert", c.Manifest.ClientCert}, {"manifest.client_key", c.Manifest.ClientKey}} {
		if f.path != "" && !filepath.IsAbs(f.path) {
			bad(f.key, "%q must be an absolute path", f.path)
		}
	}
	if c.Manifest.PollInterval < 10*time.Second {
		bad("manifest.poll_interval", "%s is below the 10s minimum", c.Manifest.PollInterval)
	}
	if ri := c.Manifest.RevocationsInterval; ri != 0 && ri < 5*time.Second {
		bad("manifest.revocations_interval", "%s is neither 0 (off) nor at least 5s", ri)
	}
	if u := c.Manifest.RevocationsURL; u != "" {
		if _, err := manifest.Location(u); err != nil {
			bad("manifest.revocations_url", "%v", err)
		}
	}
	if c.Manifest.PollJitter < 0 || c.Manifest.PollJitter > 1 {
		bad("manifest.poll_jitter", "%v not in [0,1] (a fraction of poll_interval)", c.Manifest.PollJitter)
	}
	if c.Manifest.Timeout <= 0 {
		bad("manifest.timeout", "must be > 0")
	}
	if c.Manifest.IdleTimeout < time.Second || c.Manifest.IdleTimeout > 10*time.Minute {
		bad("manifest.idle_timeout", "%s not in [1s,10m]", c.Manifest.IdleTimeout)
	}
	if c.Manifest.Retries < 0 || c.Manifest.Retries > 20 {
		bad("manifest.retries", "%d not in [0,20]", c.Manifest.Retries)
	}
	if c.Manifest.MaxSize < 1024 || c.Manifest.MaxSize > manifest.MaxSize {
		bad("manifest.max_size", "%s not in [1KiB,64MiB]", c.Manifest.MaxSize)
	}
	if c.Manifest.MaxExpiry < time.Hour || c.Manifest.MaxExpiry > 8760*time.Hour {
		bad("manifest.max_expiry", "%s not in [1h,8760h]", c.Manifest.MaxExpiry)
	}
	if c.Apply.Soak < 0 || c.Apply.Soak > 7*24*time.Hour {
		bad("apply.soak", "%s not in [0,168h]", c.Apply.Soak)
	}
	if c.Apply.TransitionTimeout < time.Second || c.Apply.TransitionTimeout > time.Hour {
		bad("apply.transition_timeout", "%s not in [1s,1h]", c.Apply.TransitionTimeout)
	}
	if _, err := window.ParseAll(c.Apply.Windows, nil); err != nil {
		bad("apply.windows", "%v", err)
	}
	if c.Paths.StatusFile != "" && !filepath.IsAbs(c.Paths.StatusFile) {
		bad("paths.status_file", "%q must be an absolute path", c.Paths.StatusFile)
	}
	if c.Apply.RPMDBPath != "" && !filepath.IsAbs(c.Apply.RPMDBPath) {
		bad("apply.rpm_dbpath", "%q must be an absolute path", c.Apply.RPMDBPath)
	}
	if c.Apply.RPMKeyring != "" && !filepath.IsAbs(c.Apply.RPMKeyring) {
		bad("apply.rpm_keyring", "%q must be an absolute path", c.Apply.RPMKeyring)
	}
	if nc := c.Health.Netconsole; nc.Listen != "" {
		if _, _, err := net.SplitHostPort(nc.Listen); err != nil {
			bad("health.netconsole.listen", "%q is not host:port (e.g. 0.0.0.0:6666)", nc.Listen)
		}
		if len(nc.Allow) == 0 {
			bad("health.netconsole.allow", "list the senders whose netconsole counts (addresses or CIDRs): anyone can send UDP")
		}
	}
	for _, a := range c.Health.Netconsole.Allow {
		if _, err := parsePrefix(a); err != nil {
			bad("health.netconsole.allow", "%q is not an address or CIDR", a)
		}
	}
	if c.Health.KdumpDir != "" && !filepath.IsAbs(c.Health.KdumpDir) {
		bad("health.kdump_dir", "%q must be an absolute path", c.Health.KdumpDir)
	}
	if c.Health.PstoreDir != "" && !filepath.IsAbs(c.Health.PstoreDir) {
		bad("health.pstore_dir", "%q must be an absolute path", c.Health.PstoreDir)
	}
	if c.Health.Taint && c.Health.TaintInterval < 100*time.Millisecond {
		bad("health.taint_interval", "%s is below 100ms", c.Health.TaintInterval)
	}
	if cmd := c.Health.Command; len(cmd.Argv) > 0 {
		if !filepath.IsAbs(cmd.Argv[0]) {
			bad("health.command.argv", "%q: the program must be an absolute path (no shell, no PATH lookup)", cmd.Argv[0])
		}
		if cmd.Timeout <= 0 || cmd.Interval < time.Second || cmd.Failures < 1 {
			bad("health.command", "timeout > 0, interval >= 1s and failures >= 1 required")
		}
	}
	if err := c.Health.Policy.Validate(); err != nil {
		bad("health.policy", "%v", err)
	}
	if c.Metrics.Textfile != "" && (!filepath.IsAbs(c.Metrics.Textfile) || !strings.HasSuffix(c.Metrics.Textfile, ".prom")) {
		bad("metrics.textfile", "%q must be an absolute path ending in .prom", c.Metrics.Textfile)
	}
	c.Metrics.validate(bad)
	if c.Trust.Threshold < 1 {
		bad("trust.threshold", "must be >= 1")
	}
	if !filepath.IsAbs(c.Trust.KeysDir) {
		bad("trust.keys_dir", "%q must be an absolute path", c.Trust.KeysDir)
	}
	if c.Trust.Root != "" && !filepath.IsAbs(c.Trust.Root) {
		bad("trust.root", "%q must be an absolute path", c.Trust.Root)
	}
	if c.Host.Tier != "" && !manifest.ValidTier(c.Host.Tier) {
		bad("host.tier", "%q: use [A-Za-z0-9_.-], at most %d characters", c.Host.Tier, manifest.MaxTierLen)
	}
	if c.Host.ID == "" && !filepath.IsAbs(c.Host.IDFile) {
		bad("host.id_file", "%q must be an absolute path", c.Host.IDFile)
	}
	if strings.ContainsAny(c.Host.ID, "\x00\n") || len(c.Host.ID) > 256 {
		bad("host.id", "must be one line of at most 256 bytes")
	}
	for _, k := range []struct{ key, val string }{{"paths.root", c.Paths.Root}, {"paths.state_dir", c.Paths.StateDir}} {
		if !filepath.IsAbs(k.val) {
			bad(k.key, "%q must be an absolute path", k.val)
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q (debug, info, warn or error)", c.Log.Level)
	}
	switch c.Log.Format {
	case "auto", "journal", "console", "json":
	default:
		bad("log.format", "%q (auto, journal, console or json)", c.Log.Format)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// ErrNoHostID means no usable host identity was found.
var ErrNoHostID = errors.New("no host id")

// HostID returns host.id, or the first line of host.id_file under root.
func (c *Config) HostID() (string, error) {
	if c.Host.ID != "" {
		return c.Host.ID, nil
	}
	p := filepath.Join(c.Paths.Root, c.Host.IDFile)
	b, err := limitfile.Read(p, 64<<10)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: %s does not exist (set host.id)", ErrNoHostID, p)
		}
		return "", fmt.Errorf("%w: %w", ErrNoHostID, err)
	}
	id := strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
	if id == "" || id == "uninitialized" {
		return "", fmt.Errorf("%w: %s is empty or uninitialized", ErrNoHostID, p)
	}
	return id, nil
}

// YAML renders the effective configuration for display, secrets masked
// (see Redacted).
func (c *Config) YAML() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	r := c.Redacted()
	if err := enc.Encode(&r); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

// validate checks metrics.listen's shape and metrics.socket_mode.
func (m MetricsConfig) validate(bad func(key, format string, a ...any)) {
	if v, err := strconv.ParseUint(m.SocketMode, 8, 32); err != nil || v > 0o777 {
		bad("metrics.socket_mode", "%q is not an octal mode such as \"0660\"", m.SocketMode)
	}
	switch p := m.SocketPath(); {
	case m.Listen == "":
	case strings.HasPrefix(m.Listen, UnixPrefix):
		if !filepath.IsAbs(p) {
			bad("metrics.listen", "%q: the unix socket path must be absolute (unix:/run/klp-agent/metrics.sock)", m.Listen)
		}
	default:
		if _, _, err := net.SplitHostPort(m.Listen); err != nil {
			bad("metrics.listen", "%q is neither host:port (127.0.0.1:9797) nor unix:/path.sock", m.Listen)
		}
	}
}
