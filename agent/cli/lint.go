package cli

import (
	"bytes"
	"fmt"

	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/manifest"
)

func cmdLint(env *Env, args []string) error {
	fs := newFlags(env, "manifest lint", "manifest lint [--max-expiry D] FILE   (unsigned source or signed envelope)")
	maxExpiry := fs.Duration("max-expiry", manifest.DefaultMaxExpiry, "warn when expires is further out than this from now (hosts' manifest.max_expiry)")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	path := fs.Arg(0)
	b, err := limitfile.Read(path, manifest.DefaultMaxSize)
	if err != nil {
		return err
	}
	payload := b
	if bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) && bytes.Contains(b, []byte(`"payloadType"`)) {
		// An envelope: lint its payload (signatures are 'verify's job).
		if payload, err = manifest.EnvelopePayload(b); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	m, err := manifest.Parse(payload)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	warnings := manifest.LintMaxExpiry(m, env.Now(), *maxExpiry)
	for _, w := range warnings {
		fmt.Fprintf(env.Stdout, "%s: warning: %s\n", path, w)
	}
	fmt.Fprintf(env.Stdout, "%s: version %d, %d patch(es), %d revoked: valid, %d warning(s)\n", path, m.Version, len(m.Patches), len(m.Revoked), len(warnings))
	return nil
}
