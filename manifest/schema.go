// Package manifest holds everything between "a manifest is published" and
// "this host knows which livepatch it wants": the schema and its strict
// parser, the DSSE envelope and its ed25519 threshold signatures, the
// anti-rollback version store, the HTTP fetcher and the per-host selection.
package manifest

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/klp-agent/klp-agent/internal/sanitize"
)

// SchemaVersion is the only payload schema this agent understands.
const SchemaVersion = 1

// Limits on a manifest's contents. A module name becomes a path and a
// kernel module name (MODULE_NAME_LEN is 64 bytes including an unsigned
// long), a kernel release becomes a path and is at most 64 bytes in utsname.
const (
	MaxNameLen          = 55
	MaxKernelReleaseLen = 64
	MaxTierLen          = 64
	MaxPatches          = 1 << 20
)

// Sentinel errors callers branch on. Every rejection wraps one of them.
var (
	ErrSchema          = errors.New("unsupported schema version")
	ErrInvalid         = errors.New("invalid manifest")
	ErrInvalidName     = errors.New("invalid name")
	ErrDuplicate       = errors.New("duplicate entry")
	ErrExpired         = errors.New("manifest expired")
	ErrExpiryTooFar    = errors.New("manifest expiry too far in the future")
	ErrRollback        = errors.New("manifest version rollback")
	ErrTooLarge        = errors.New("manifest too large")
	ErrBadSignature    = errors.New("bad signature")
	ErrNoSignature     = errors.New("manifest not signed")
	ErrUnknownKey      = errors.New("signed by unknown key")
	ErrThreshold       = errors.New("too few valid signatures")
	ErrPayloadType     = errors.New("unexpected payload type")
	ErrVersionConflict = errors.New("manifest version reused with different content")
)

// Character sets, checked byte by byte: validation runs over every entry
// of every poll, and regexps cost most of it on a fleet-sized manifest.
const (
	nameChars          = "_"
	kernelReleaseChars = "._+~-"
	tierChars          = "_.-"
)

// charsOK reports whether s is non-empty and every byte is an ASCII letter,
// digit or one of extra.
func charsOK(s, extra string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte(extra, c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// validSHA256 is 64 lowercase hex digits.
func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9') && !('a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Manifest is the signed payload.
type Manifest struct {
	Schema  int       `yaml:"schema" json:"schema"`
	Version uint64    `yaml:"version" json:"version"`
	Expires time.Time `yaml:"expires" json:"expires"`
	// SignedAt, optional, is when the publisher signed: manifest.max_expiry
	// is then measured from it rather than from the host's clock at fetch
	// time (`manifest sign --signed-at`; agents older than this field
	// refuse a manifest that has it).
	SignedAt time.Time `yaml:"signed_at,omitempty" json:"signed_at,omitzero"`
	Patches  []Patch   `yaml:"patches,omitempty" json:"patches,omitempty"`
	Revoked  []Revoked `yaml:"revoked,omitempty" json:"revoked,omitempty"`
	// Annotations are the publisher's own fields, signed like the rest:
	// shown by status and explain, never acted on. New information goes
	// here so that older hosts, which refuse unknown keys, still parse.
	Annotations map[string]string `yaml:"annotations,omitempty" json:"annotations,omitempty"`
	// Skipped counts entries for other kernels that ParseFor did not decode.
	Skipped int `yaml:"-" json:"-"`

	// Shard, set by `manifest shard`, is the kernel release this document
	// is the shard for (see shard.go); "" for the full manifest.
	Shard string `yaml:"shard,omitempty" json:"shard,omitempty"`
}

// Patch is one cumulative livepatch for one exact kernel release.
type Patch struct {
	Kernel string `yaml:"kernel" json:"kernel"`
	Name   string `yaml:"name" json:"name"`
	Level  int    `yaml:"level" json:"level"`
	URL    string `yaml:"url" json:"url"`
	SHA256 string `yaml:"sha256" json:"sha256"`
	Size   int64  `yaml:"size" json:"size"`
	// omitzero, not omitempty: `rollout: {}` reaches 0% of hosts and no
	// rollout 100%; JSON's omitempty would drop the empty one.
	Rollout *Rollout `yaml:"rollout,omitempty" json:"rollout,omitzero"`
	// What the patch fixes, for status and explain; optional.
	Description string            `yaml:"description,omitempty" json:"description,omitempty"`
	CVEs        []string          `yaml:"cves,omitempty" json:"cves,omitempty"`
	Advisory    string            `yaml:"advisory,omitempty" json:"advisory,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty" json:"annotations,omitempty"`
}

// Rollout stages a patch. Hosts whose tier is listed get it at Start; the
// others get it once their stable bucket falls under the ramp: StartPercent
// at Start, rising linearly to 100 over Duration. A zero Duration holds the
// ramp at StartPercent (0 = tiers only), which is how a stage is paused.
type Rollout struct {
	Tiers        []string  `yaml:"tiers,omitempty" json:"tiers,omitempty"`
	Start        time.Time `yaml:"start,omitempty" json:"start,omitzero"`
	StartPercent float64   `yaml:"start_percent,omitempty" json:"start_percent,omitzero"`
	Duration     Duration  `yaml:"duration,omitempty" json:"duration,omitzero"`
}

// Revoked pulls a patch back everywhere. Kernel and SHA256 narrow the match
// when set.
type Revoked struct {
	Name   string `yaml:"name" json:"name"`
	Level  int    `yaml:"level" json:"level"`
	Kernel string `yaml:"kernel,omitempty" json:"kernel,omitempty"`
	SHA256 string `yaml:"sha256,omitempty" json:"sha256,omitempty"`
	Reason string `yaml:"reason,omitempty" json:"reason,omitempty"`
}

// ID names a patch in messages and in per-host records.
func (p *Patch) ID() string { return p.Name + "@" + strconv.Itoa(p.Level) }

// Matches reports whether the revocation applies to p.
func (r *Revoked) Matches(p *Patch) bool {
	return r.Name == p.Name && r.Level == p.Level &&
		(r.Kernel == "" || r.Kernel == p.Kernel) &&
		(r.SHA256 == "" || r.SHA256 == p.SHA256)
}

// ValidName reports whether s may be used as a livepatch/module name. Names
// become sysfs and state-dir paths, so only [A-Za-z0-9_] is allowed.
func ValidName(s string) bool { return len(s) <= MaxNameLen && charsOK(s, nameChars) }

// ValidKernelRelease reports whether s may be a `uname -r` value used as a
// path component.
func ValidKernelRelease(s string) bool {
	return len(s) <= MaxKernelReleaseLen && s != "." && s != ".." && charsOK(s, kernelReleaseChars)
}

// ValidTier reports whether s may be a rollout tier name.
func ValidTier(s string) bool { return len(s) <= MaxTierLen && charsOK(s, tierChars) }

// Validate checks everything that does not depend on time or keys.
func (m *Manifest) Validate() error {
	if m.Schema != SchemaVersion {
		return fmt.Errorf("%w: schema %d (this agent supports %d)", ErrSchema, m.Schema, SchemaVersion)
	}
	if m.Version == 0 {
		return fmt.Errorf("%w: version must be > 0", ErrInvalid)
	}
	if m.Expires.IsZero() {
		return fmt.Errorf("%w: expires is required", ErrInvalid)
	}
	if !m.SignedAt.IsZero() && !m.SignedAt.Before(m.Expires) {
		return fmt.Errorf("%w: signed_at %s is not before expires %s", ErrInvalid, m.SignedAt.UTC().Format(time.RFC3339), m.Expires.UTC().Format(time.RFC3339))
	}
	if len(m.Patches) > MaxPatches {
		return fmt.Errorf("%w: %d patches (limit %d)", ErrTooLarge, len(m.Patches), MaxPatches)
	}
	type key struct {
		kernel string
		level  int
	}
	seen := make(map[key]int, len(m.Patches))
	for i := range m.Patches {
		p := &m.Patches[i]
		if err := p.validate(); err != nil {
			return fmt.Errorf("patches[%d]: %w", i, err)
		}
		k := key{p.Kernel, p.Level}
		if j, ok := seen[k]; ok {
			return fmt.Errorf("patches[%d]: %w: kernel %s level %d already at patches[%d]", i, ErrDuplicate, p.Kernel, p.Level, j)
		}
		seen[k] = i
	}
	if err := validAnnotations(m.Annotations); err != nil {
		return err
	}
	for i := range m.Revoked {
		if err := m.Revoked[i].validate(); err != nil {
			return fmt.Errorf("revoked[%d]: %w", i, err)
		}
	}
	return m.validateShard()
}

func (p *Patch) validate() error {
	if !ValidKernelRelease(p.Kernel) {
		return fmt.Errorf("%w: kernel %q", ErrInvalidName, p.Kernel)
	}
	if !ValidName(p.Name) {
		return fmt.Errorf("%w: name %q (allowed: [A-Za-z0-9_], at most %d)", ErrInvalidName, p.Name, MaxNameLen)
	}
	if p.Level < 1 {
		return fmt.Errorf("%w: %s: level must be >= 1", ErrInvalid, p.Name)
	}
	if !validSHA256(p.SHA256) {
		return fmt.Errorf("%w: %s: sha256 must be 64 lowercase hex digits", ErrInvalid, p.ID())
	}
	if p.Size <= 0 {
		return fmt.Errorf("%w: %s: size must be > 0", ErrInvalid, p.ID())
	}
	if err := printable(p.URL, MaxURL); err != nil {
		return fmt.Errorf("%w: %s: url: %w", ErrInvalid, p.ID(), err)
	}
	u, err := url.Parse(p.URL)
	if err != nil || p.URL == "" {
		return fmt.Errorf("%w: %s: url %q", ErrInvalid, p.ID(), p.URL)
	}
	if u.IsAbs() && u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%w: %s: url scheme %q (http or https only)", ErrInvalid, p.ID(), u.Scheme)
	}
	if u.User != nil {
		return fmt.Errorf("%w: %s: url must not carry credentials", ErrInvalid, p.ID())
	}
	if err := p.validateInfo(); err != nil {
		return fmt.Errorf("%s: %w", p.ID(), err)
	}
	if r := p.Rollout; r != nil {
		for _, t := range r.Tiers {
			if !ValidTier(t) {
				return fmt.Errorf("%w: %s: tier %q", ErrInvalidName, p.ID(), t)
			}
		}
		if r.StartPercent < 0 || r.StartPercent > 100 {
			return fmt.Errorf("%w: %s: start_percent %v not in [0,100]", ErrInvalid, p.ID(), r.StartPercent)
		}
		if r.Duration < 0 {
			return fmt.Errorf("%w: %s: negative duration", ErrInvalid, p.ID())
		}
	}
	return nil
}

func (r *Revoked) validate() error {
	if !ValidName(r.Name) {
		return fmt.Errorf("%w: name %q", ErrInvalidName, r.Name)
	}
	if r.Level < 1 {
		return fmt.Errorf("%w: %s: level must be >= 1", ErrInvalid, r.Name)
	}
	if r.Kernel != "" && !ValidKernelRelease(r.Kernel) {
		return fmt.Errorf("%w: kernel %q", ErrInvalidName, r.Kernel)
	}
	if r.SHA256 != "" && !validSHA256(r.SHA256) {
		return fmt.Errorf("%w: %s@%d: sha256 must be 64 lowercase hex digits", ErrInvalid, r.Name, r.Level)
	}
	// The reason is shown by status and explain and kept in the state.
	if err := printable(r.Reason, MaxDescription); err != nil {
		return fmt.Errorf("%w: %s@%d: reason: %w", ErrInvalid, r.Name, r.Level, err)
	}
	return nil
}

// Expired reports whether the manifest may no longer be acted on at now.
func (m *Manifest) Expired(now time.Time) bool { return !now.Before(m.Expires) }

// Duration is a time.Duration written as "24h" in YAML and JSON.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; it also accepts "7d".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// UnmarshalYAML keeps the line number in errors.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if err := d.UnmarshalText([]byte(n.Value)); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

// ParseDuration is time.ParseDuration plus whole days ("7d"), which
// rollout and expiry periods are usually written in.
func ParseDuration(s string) (time.Duration, error) {
	if n := len(s); n > 1 && s[n-1] == 'd' {
		days, err := strconv.ParseUint(s[:n-1], 10, 16)
		if err != nil {
			return 0, fmt.Errorf("duration %q: %w", s, err)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: %w", s, err)
	}
	return v, nil
}

// Bounds on the informational fields: they are printed on terminals and
// kept in status snapshots, never acted on.
const (
	MaxAnnotations     = 32
	MaxAnnotationKey   = 63
	MaxAnnotationValue = 1024
	MaxDescription     = 1024
	MaxCVEs            = 64
	MaxURL             = 4096
)

// annotationKeyChars: keys like "vendor.example/ticket" or "risk_level".
const annotationKeyChars = "._/-"

func validAnnotations(a map[string]string) error {
	if len(a) > MaxAnnotations {
		return fmt.Errorf("%w: %d annotations (limit %d)", ErrInvalid, len(a), MaxAnnotations)
	}
	for k, v := range a {
		if len(k) > MaxAnnotationKey || !charsOK(k, annotationKeyChars) {
			return fmt.Errorf("%w: annotation key %q ([A-Za-z0-9._/-], at most %d)", ErrInvalid, k, MaxAnnotationKey)
		}
		if err := printable(v, MaxAnnotationValue); err != nil {
			return fmt.Errorf("%w: annotation %s: %w", ErrInvalid, k, err)
		}
	}
	return nil
}

// printable refuses what sanitize.Text would escape (C0 and C1 control
// characters, DEL, bidi overrides, invalid UTF-8: terminal escapes in
// status) and values over max bytes. Every free-text string a manifest
// signs passes it; the other strings have narrower character sets.
func printable(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%d bytes (limit %d)", len(s), max)
	}
	if !sanitize.Safe(s) {
		return fmt.Errorf("control character, bidi override or invalid UTF-8 in %q", sanitize.Text(s))
	}
	return nil
}

// validCVE is CVE-YYYY-NNNN with four or more digits.
func validCVE(s string) bool {
	y, n, ok := strings.Cut(strings.TrimPrefix(s, "CVE-"), "-")
	if !ok || !strings.HasPrefix(s, "CVE-") || len(y) != 4 || len(n) < 4 || len(n) > 19 {
		return false
	}
	return charsOK(y, "") && charsOK(n, "") && strings.Trim(y+n, "0123456789") == ""
}

func (p *Patch) validateInfo() error {
	if err := printable(p.Description, MaxDescription); err != nil {
		return fmt.Errorf("%w: description: %w", ErrInvalid, err)
	}
	if err := printable(p.Advisory, MaxAnnotationValue); err != nil {
		return fmt.Errorf("%w: advisory: %w", ErrInvalid, err)
	}
	if len(p.CVEs) > MaxCVEs {
		return fmt.Errorf("%w: %d CVEs (limit %d)", ErrInvalid, len(p.CVEs), MaxCVEs)
	}
	for _, c := range p.CVEs {
		if !validCVE(c) {
			return fmt.Errorf("%w: CVE %q (CVE-YYYY-NNNN)", ErrInvalid, c)
		}
	}
	return validAnnotations(p.Annotations)
}

// Fixes is what the patch says it fixes, in one line ("" when nothing).
func (p *Patch) Fixes() string {
	var parts []string
	if p.Description != "" {
		parts = append(parts, p.Description)
	}
	if len(p.CVEs) > 0 {
		parts = append(parts, strings.Join(p.CVEs, ", "))
	}
	if p.Advisory != "" {
		parts = append(parts, p.Advisory)
	}
	return strings.Join(parts, "; ")
}
