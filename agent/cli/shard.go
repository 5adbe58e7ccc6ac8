package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/manifest"
)

// cmdShard writes one signed shard per kernel release: hosts with
// manifest.shard_url fetch only their own.
func cmdShard(env *Env, args []string) error {
	fs := newFlags(env, "manifest shard", "manifest shard --in MANIFEST --key KEY [--key KEY2] --out-dir DIR [--kernel REL]... [--publish-dir DIR]")
	in := fs.String("in", "", "full manifest: the unsigned source (YAML or JSON) or its signed envelope (its payload is re-signed)")
	var keys stringList
	fs.Var(&keys, "key", "private key file (repeatable)")
	outDir := fs.String("out-dir", "", "directory to write <kernel release>.json shards to (manifest.shard_url's {kernel}.json)")
	var extra stringList
	fs.Var(&extra, "kernel", "also write an empty shard for this kernel release, signed \"nothing for this kernel\" (repeatable): hosts treat a missing shard as a failed poll, never as nothing")
	pubDir := fs.String("publish-dir", "", "the directory the full manifest is published from, its relative RPM URLs resolve against it (default: --in's directory)")
	signedAt := fs.Bool("signed-at", false, "record now as each shard's signed_at (see manifest sign --signed-at)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *in == "" || *outDir == "" || len(keys) == 0 {
		return fmt.Errorf("%w: --in, --key and --out-dir are required", errUsage)
	}
	for _, k := range extra {
		if !manifest.ValidKernelRelease(k) {
			return fmt.Errorf("%w: --kernel %q", errUsage, k)
		}
	}
	if *pubDir == "" {
		*pubDir = filepath.Dir(*in)
	}
	signers := make([]*manifest.Signer, 0, len(keys))
	for _, k := range keys {
		s, err := manifest.LoadSigner(k)
		if err != nil {
			return err
		}
		signers = append(signers, s)
	}
	m, err := loadFull(*in)
	if err != nil {
		return err
	}
	if m.Shard != "" {
		return fmt.Errorf("%s: %w: it is the shard for %s", *in, manifest.ErrNotShard, m.Shard)
	}
	if m.Expired(env.Now()) {
		return fmt.Errorf("%s: %w at %s; refresh it with 'manifest add' or edit expires", *in, manifest.ErrExpired, m.Expires.Format(time.RFC3339))
	}
	if *signedAt {
		m.SignedAt = env.Now().UTC().Truncate(time.Second)
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return err
	}
	if err := manifest.RebaseURLs(m, *pubDir, *outDir); err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	// A kernel dropped from the manifest gets an empty shard, not its
	// stale one: hosts on it must learn its entries are gone.
	published, err := publishedShards(*outDir)
	if err != nil {
		return err
	}
	shards, err := manifest.SignShards(env.Ctx, m, append(extra, published...), signers...)
	if err != nil {
		return err
	}
	// Each shard replaces its predecessor atomically; a host reads one
	// shard only, so no set of files has to change at once.
	for _, s := range shards {
		if err := atomicfile.WriteFile(filepath.Join(*outDir, s.File), s.Envelope, 0o644); err != nil {
			return err
		}
	}
	empty := 0
	for _, s := range shards {
		if s.Patches == 0 {
			empty++
		}
	}
	fmt.Fprintf(env.Stdout, "wrote %d shards of manifest version %d to %s (%d with no patch); hosts with manifest.shard_url %s fetch their own\n",
		len(shards), m.Version, *outDir, empty, filepath.Join(*outDir, manifest.ShardPlaceholder+".json"))
	return nil
}

// loadFull reads a full manifest from its unsigned source or from its
// signed envelope's payload (signatures are not checked: it is re-signed).
func loadFull(path string) (*manifest.Manifest, error) {
	b, err := limitfile.Read(path, manifest.MaxSize)
	if err != nil {
		return nil, err
	}
	if payload, err := manifest.EnvelopePayload(b); err == nil {
		b = payload
	}
	m, err := manifest.ParseMax(b, manifest.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// publishedShards are the kernels whose shards dir already holds: files
// named <kernel>.json whose payload says it is that kernel's shard (so a
// manifest.json beside them is not taken for one).
func publishedShards(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var kernels []string
	for _, e := range entries {
		k, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() || !manifest.ValidKernelRelease(k) {
			continue
		}
		b, err := limitfile.Read(filepath.Join(dir, e.Name()), manifest.MaxSize)
		if err != nil {
			return nil, err
		}
		payload, err := manifest.EnvelopePayload(b)
		if err != nil {
			continue
		}
		if m, err := manifest.ParseMax(payload, manifest.MaxSize); err == nil && m.Shard == k {
			kernels = append(kernels, k)
		}
	}
	return kernels, nil
}

// verifyDoc verifies envelope as the full manifest, or with shard set as
// that kernel release's shard.
func verifyDoc(t manifest.Trust, envelope []byte, now time.Time, shard string) (*manifest.Verified, error) {
	if shard == "" {
		return t.Verify(envelope, now, nil)
	}
	if !manifest.ValidKernelRelease(shard) {
		return nil, fmt.Errorf("%w: --shard %q", errUsage, shard)
	}
	return t.VerifyShard(envelope, now, nil, shard)
}
