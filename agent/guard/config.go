// Package guard is the publisher's side of the fleet loop (`klp-agent
// guard`): it takes Alertmanager's crash-budget alerts, re-checks each
// against Prometheus, and signs and publishes the next revocations.json
// with the revoke role's key. It decides nothing on its own counts: the
// rule decides, Prometheus confirms, the guard signs.
package guard

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/manifest"
)

// DefaultConfigPath is the guard's own configuration file: the guard runs
// on the publisher's machine, not on hosts, so it does not share theirs.
const DefaultConfigPath = "/etc/klp-agent/guard.yaml"

// FilePlaceholder in publish_command is replaced by the document's path.
const FilePlaceholder = "{file}"

// The shipped rule's alert and the instant query that re-checks it: the
// alert's own expression (packaging/prometheus/klp-agent.rules.yml) for
// one patch. {patch}, {kernel} and {tier} are the alert's labels, checked
// against the manifest's name rules before they are put in.
const (
	DefaultAlertName = "KLPPatchCrashBudgetExceeded"
	DefaultQuery     = `klp:crashes_per_1000_hosts:1d{patch="{patch}"} > 1 and on (patch) max_over_time(klp:patched_hosts:count{patch="{patch}"}[1d]) >= 100`
	// DefaultLevelQuery finds the level an alert without a level label
	// is about: the levels of the patch hosts ran over the budget's day.
	DefaultLevelQuery = `count by (level) (max_over_time(klp_agent_patch_info{patch="{patch}"}[1d]))`
)

// ErrConfig is an invalid configuration.
var ErrConfig = errors.New("invalid guard configuration")

// Config is guard.yaml.
type Config struct {
	// Listen is the webhook's address (host:port).
	Listen string `yaml:"listen"`
	// TokenFile holds the bearer token Alertmanager's http_config sends;
	// it must not be readable by group or others.
	TokenFile string `yaml:"token_file"`
	// TLS serves the webhook over TLS; ClientCA requires a client
	// certificate it signed (mTLS).
	TLS struct {
		Cert     string `yaml:"cert"`
		Key      string `yaml:"key"`
		ClientCA string `yaml:"client_ca"`
	} `yaml:"tls"`
	Prometheus struct {
		URL        string `yaml:"url"`
		Query      string `yaml:"query"`
		LevelQuery string `yaml:"level_query"`
		Timeout    string `yaml:"timeout"`
	} `yaml:"prometheus"`
	// AlertName is the alert that pulls a patch back (others are ignored).
	AlertName string `yaml:"alert_name"`
	// Root is the publisher's current root.N.json: the guard verifies
	// what it signs as hosts would, and refuses a release or root key.
	Root string `yaml:"root"`
	// Key is the revoke role's private key.
	Key string `yaml:"key"`
	// File is the revocations.json the guard owns: read at each decision
	// (its only state), written atomically, served as is or published by
	// PublishCommand.
	File string `yaml:"file"`
	// PublishCommand is an argv run after each write, {file} replaced by
	// File's path; never through a shell.
	PublishCommand []string `yaml:"publish_command"`
	// Validity is how long a signed document stays valid; RefreshBefore:
	// the guard re-signs when the one in force expires within it.
	Validity      string `yaml:"validity"`
	RefreshBefore string `yaml:"refresh_before"`
	// DecisionsFile, when set, keeps the last MaxDecisions decisions as
	// JSON (written atomically): what the guard did, readable without the
	// journal. Not state: the document alone decides what is signed.
	DecisionsFile string `yaml:"decisions_file"`
	// MaxBody bounds a webhook request, in bytes.
	MaxBody int64 `yaml:"max_body"`
	Log     struct {
		Level  string `yaml:"level"`
		Format string `yaml:"format"`
	} `yaml:"log"`

	// Parsed values.
	validity, refreshBefore, timeout time.Duration
}

// Defaults of the optional keys.
const (
	DefaultListen        = "127.0.0.1:9766"
	DefaultValidity      = "7d"
	DefaultRefreshBefore = "3d"
	DefaultTimeout       = "10s"
	DefaultMaxBody       = 1 << 20
)

// LoadConfig reads and checks path; unknown keys are errors.
func LoadConfig(path string) (*Config, error) {
	b, err := limitfile.Read(path, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return ParseConfig(b)
}

// ParseConfig parses and checks a guard.yaml.
func ParseConfig(b []byte) (*Config, error) {
	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

func orDefault(p *string, def string) {
	if strings.TrimSpace(*p) == "" {
		*p = def
	}
}

func (c *Config) check() error {
	orDefault(&c.Listen, DefaultListen)
	orDefault(&c.AlertName, DefaultAlertName)
	orDefault(&c.Prometheus.Query, DefaultQuery)
	orDefault(&c.Prometheus.LevelQuery, DefaultLevelQuery)
	orDefault(&c.Prometheus.Timeout, DefaultTimeout)
	orDefault(&c.Validity, DefaultValidity)
	orDefault(&c.RefreshBefore, DefaultRefreshBefore)
	if c.MaxBody <= 0 {
		c.MaxBody = DefaultMaxBody
	}
	var problems []string
	bad := func(f string, a ...any) { problems = append(problems, fmt.Sprintf(f, a...)) }
	for _, k := range []struct{ name, v string }{{"prometheus.url", c.Prometheus.URL}, {"root", c.Root}, {"key", c.Key}, {"file", c.File}} {
		if k.v == "" {
			bad("%s is required", k.name)
		}
	}
	if c.TokenFile == "" && c.TLS.ClientCA == "" {
		bad("token_file or tls.client_ca is required: the webhook is never open")
	}
	if c.TLS.ClientCA != "" && (c.TLS.Cert == "" || c.TLS.Key == "") {
		bad("tls.client_ca needs tls.cert and tls.key")
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		bad("tls.cert and tls.key go together")
	}
	if len(c.PublishCommand) > 0 && !slices.Contains(c.PublishCommand, FilePlaceholder) {
		bad("publish_command has no %s argument", FilePlaceholder)
	}
	dur := func(name, s string, to *time.Duration) {
		d, err := manifest.ParseDuration(s)
		if err != nil || d <= 0 {
			bad("%s %q is not a positive duration", name, s)
		}
		*to = d
	}
	dur("validity", c.Validity, &c.validity)
	dur("refresh_before", c.RefreshBefore, &c.refreshBefore)
	dur("prometheus.timeout", c.Prometheus.Timeout, &c.timeout)
	if c.refreshBefore >= c.validity && c.validity > 0 {
		bad("refresh_before %s must be shorter than validity %s", c.RefreshBefore, c.Validity)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrConfig, strings.Join(problems, "; "))
	}
	return nil
}

// readToken reads the bearer token; a file group or others may read is
// refused (a token anyone on the machine can read authenticates no one).
func readToken(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("token_file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: token_file %s is mode %#o: make it 0600 (root-only)", ErrConfig, path, fi.Mode().Perm())
	}
	b, err := limitfile.Read(path, 4096)
	if err != nil {
		return nil, fmt.Errorf("token_file: %w", err)
	}
	tok := bytes.TrimSpace(b)
	if len(tok) < 16 {
		return nil, fmt.Errorf("%w: token_file %s holds a token under 16 bytes", ErrConfig, path)
	}
	return tok, nil
}
