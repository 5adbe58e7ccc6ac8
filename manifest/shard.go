package manifest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Sharded manifests: the publisher splits the full manifest into one
// signed document per kernel release (`manifest shard`), and a host
// fetches only its own (manifest.shard_url). A shard is a manifest like
// any other (same envelope, keys, expiry and version checks) whose
// payload names the kernel it is for in "shard" and holds only that
// kernel's patches and the revocations that could apply to them.

// ShardPlaceholder is where a shard URL template puts the kernel release.
const ShardPlaceholder = "{kernel}"

// Sentinel errors for shards.
var (
	// ErrShardKernel is a shard for another kernel release than the
	// host's: a mirror serving it would hide the host's own entries.
	ErrShardKernel = errors.New("shard is for another kernel release")
	// ErrNotShard is a full manifest where a shard was expected, or a
	// shard where the full manifest was expected.
	ErrNotShard = errors.New("not the kind of manifest expected")
	// ErrShardURL is a shard URL template that cannot name a shard.
	ErrShardURL = errors.New("invalid shard url template")
)

// validateShard checks what a shard may hold: only its kernel's patches
// and revocations that could apply to them. A full manifest (Shard "")
// has nothing to check here.
func (m *Manifest) validateShard() error {
	if m.Shard == "" {
		return nil
	}
	if !ValidKernelRelease(m.Shard) {
		return fmt.Errorf("%w: shard kernel %q", ErrInvalidName, m.Shard)
	}
	for i := range m.Patches {
		if k := m.Patches[i].Kernel; k != m.Shard {
			return fmt.Errorf("%w: patches[%d]: kernel %s in the shard for %s", ErrInvalid, i, k, m.Shard)
		}
	}
	for i := range m.Revoked {
		if k := m.Revoked[i].Kernel; k != "" && k != m.Shard {
			return fmt.Errorf("%w: revoked[%d]: kernel %s in the shard for %s", ErrInvalid, i, k, m.Shard)
		}
	}
	return nil
}

// ShardFor is the shard of m for kernel: its patches for kernel, the
// revocations that could apply to them (those for kernel or for every
// kernel), and the global fields (version, expiry, signing time,
// annotations) unchanged. The version is the full manifest's, so each
// shard's version rises with every publish. A kernel with no entries
// gets an empty shard: the publisher's signed "nothing for this kernel".
func ShardFor(m *Manifest, kernel string) (*Manifest, error) {
	if m.Shard != "" {
		return nil, fmt.Errorf("%w: %s is already the shard for %s", ErrNotShard, "manifest", m.Shard)
	}
	if !ValidKernelRelease(kernel) {
		return nil, fmt.Errorf("%w: kernel %q", ErrInvalidName, kernel)
	}
	s := &Manifest{Schema: m.Schema, Version: m.Version, Expires: m.Expires, SignedAt: m.SignedAt,
		Shard: kernel, Annotations: m.Annotations}
	for _, p := range m.Patches {
		if p.Kernel == kernel {
			s.Patches = append(s.Patches, p)
		}
	}
	for _, r := range m.Revoked {
		if r.Kernel == "" || r.Kernel == kernel {
			s.Revoked = append(s.Revoked, r)
		}
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("shard %s: %w", kernel, err)
	}
	return s, nil
}

// Shards is one shard per kernel release with entries in m, plus an
// empty one for each of extra (kernels the fleet runs that have no patch
// yet: a host then learns "nothing for this kernel" from a signed
// document, never from a 404), sorted by kernel release.
func Shards(m *Manifest, extra ...string) ([]*Manifest, error) {
	var kernels []string
	for _, p := range m.Patches {
		kernels = append(kernels, p.Kernel)
	}
	kernels = append(kernels, extra...)
	slices.Sort(kernels)
	kernels = slices.Compact(kernels)
	out := make([]*Manifest, 0, len(kernels))
	for _, k := range kernels {
		s, err := ShardFor(m, k)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// ShardFileName is a shard's file name in the directory it is published
// from: the kernel release, which ValidKernelRelease keeps a safe name.
func ShardFileName(kernel string) string { return kernel + ".json" }

// ShardURL fills a shard URL template's {kernel} with the host's kernel
// release, escaped for a URL path (the release is first checked as a
// file name: no slash, no "." or "..").
func ShardURL(template, kernel string) (string, error) {
	if !ValidKernelRelease(kernel) {
		return "", fmt.Errorf("%w: kernel %q", ErrInvalidName, kernel)
	}
	if err := CheckShardURL(template); err != nil {
		return "", err
	}
	return strings.Replace(template, ShardPlaceholder, url.PathEscape(kernel), 1), nil
}

// CheckShardURL checks a shard URL template: an http(s) URL, a file://
// URL or an absolute path (as manifest.url) with {kernel} once, in the
// last path segment.
func CheckShardURL(template string) error {
	if strings.Count(template, ShardPlaceholder) != 1 {
		return fmt.Errorf("%w: %s must appear exactly once in %q", ErrShardURL, ShardPlaceholder, redact(template))
	}
	const marker = "klp-shard-kernel"
	filled := strings.Replace(template, ShardPlaceholder, marker, 1)
	if _, err := Location(filled); err != nil {
		return fmt.Errorf("%w: %w", ErrShardURL, err)
	}
	p := filled
	if !strings.HasPrefix(filled, "/") {
		u, err := parseURL(filled)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrShardURL, err)
		}
		p = u.Path
	}
	if !strings.Contains(filepath.Base(p), marker) || strings.HasSuffix(p, "/") {
		return fmt.Errorf("%w: %s must be in the file name of %q", ErrShardURL, ShardPlaceholder, redact(template))
	}
	return nil
}

// VerifyShard is VerifyFor for the shard of kernel: the whole trust chain,
// and the document must be kernel's shard (ErrShardKernel for another
// kernel's, ErrNotShard for a full manifest). The check comes before the
// anti-rollback record, so a refused shard never moves store, which
// should be kernel's own floor (ShardVersionFile).
func (t Trust) VerifyShard(envelope []byte, now time.Time, store VersionStore, kernel string) (*Verified, error) {
	v, err := t.verify(envelope, now, "")
	if err != nil {
		return nil, err
	}
	switch {
	case v.Shard == "":
		return nil, fmt.Errorf("%w: version %d is a full manifest, not a shard (manifest.shard_url names shards)", ErrNotShard, v.Version)
	case v.Shard != kernel:
		return nil, fmt.Errorf("%w: version %d is the shard for %s, this host runs %s", ErrShardKernel, v.Version, v.Shard, kernel)
	}
	if err := recordVersion(store, v); err != nil {
		return nil, fmt.Errorf("shard %s: %w", kernel, err)
	}
	return v, nil
}

// ShardVersionFile is the anti-rollback record of kernel's shard in the
// state directory dir: one floor per shard, so the shards of one publish
// never conflict with each other or with the full manifest's floor.
func ShardVersionFile(dir, kernel string) (string, error) {
	if !ValidKernelRelease(kernel) {
		return "", fmt.Errorf("%w: kernel %q", ErrInvalidName, kernel)
	}
	return filepath.Join(dir, "shard-version."+kernel+".json"), nil
}

// verifyDoc is how a Source verifies a body: its kernel's shard with
// Shard set, else the full manifest.
func (s *Source) verifyDoc(envelope []byte) (*Verified, error) {
	if s.Shard {
		return s.Trust.VerifyShard(envelope, s.now(), s.Store, s.Kernel)
	}
	return s.Trust.VerifyFor(envelope, s.now(), s.Store, s.Kernel)
}

// SignedShard is one shard ready to publish.
type SignedShard struct {
	Kernel   string
	File     string // ShardFileName(Kernel)
	Envelope []byte
	Patches  int
}

// SignShards renders every shard of m (see Shards) as the canonical JSON
// payload and signs it with every signer.
func SignShards(ctx context.Context, m *Manifest, extra []string, signers ...*Signer) ([]SignedShard, error) {
	shards, err := Shards(m, extra...)
	if err != nil {
		return nil, err
	}
	out := make([]SignedShard, 0, len(shards))
	for _, s := range shards {
		payload, err := MarshalJSON(s)
		if err != nil {
			return nil, err
		}
		env, err := SignPayload(ctx, payload, signers...)
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", s.Shard, err)
		}
		out = append(out, SignedShard{Kernel: s.Shard, File: ShardFileName(s.Shard), Envelope: env, Patches: len(s.Patches)})
	}
	return out, nil
}

// RebaseURLs rewrites m's relative patch URLs, which resolve against the
// full manifest published from dir publishDir, so that they resolve to
// the same files from a shard published from shardDir (a host resolves
// them against the URL it fetched: its shard's). Absolute URLs are kept.
func RebaseURLs(m *Manifest, publishDir, shardDir string) error {
	from, err := filepath.Abs(publishDir)
	if err != nil {
		return err
	}
	to, err := filepath.Abs(shardDir)
	if err != nil {
		return err
	}
	if from == to {
		return nil
	}
	for i := range m.Patches {
		p := &m.Patches[i]
		u, err := url.Parse(p.URL)
		if err != nil {
			return fmt.Errorf("%s: url %q: %w", p.ID(), p.URL, err)
		}
		if u.IsAbs() || u.Host != "" || strings.HasPrefix(u.Path, "/") {
			continue
		}
		rel, err := filepath.Rel(to, filepath.Join(from, filepath.FromSlash(u.Path)))
		if err != nil {
			return fmt.Errorf("%s: url %q: %w", p.ID(), p.URL, err)
		}
		u.Path, u.RawPath = filepath.ToSlash(rel), ""
		p.URL = u.String()
	}
	return nil
}

// RootBase is the manifest URL the root chain is read beside.
func (s *Source) RootBase() string {
	if s.RootURL != "" {
		if loc, err := Location(s.RootURL); err == nil {
			return loc
		}
	}
	return s.Fetcher.URL()
}
