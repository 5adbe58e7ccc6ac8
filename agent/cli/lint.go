package cli

import (
	"bytes"
	"fmt"
	"path/filepath"

	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/manifest"
)

func cmdLint(env *Env, args []string) error {
	fs := newFlags(env, "manifest lint", "manifest lint [--max-expiry D] [--publish-dir DIR] FILE   (unsigned source or signed envelope)")
	maxExpiry := fs.Duration("max-expiry", manifest.DefaultMaxExpiry, "warn when expires is further out than this from now (hosts' manifest.max_expiry)")
	pubDir := fs.String("publish-dir", "", "the directory the manifest is published from: each relative URL must resolve there to a file with the pinned size and sha256 (default: FILE's directory)")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	path := fs.Arg(0)
	b, err := limitfile.Read(path, manifest.DefaultMaxSize)
	if err != nil {
		return err
	}
	payload := b
	signed := bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) && bytes.Contains(b, []byte(`"payloadType"`))
	if signed {
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
	var problems []string
	if signed {
		// The hosts' bound on a signed YAML payload; an unsigned source is
		// the hand-editing format, which 'manifest sign' renders as JSON.
		switch w, err := manifest.CheckYAMLPayload(payload); {
		case err != nil:
			problems = append(problems, err.Error())
		case w != "":
			warnings = append(warnings, w)
		}
	}
	for _, w := range warnings {
		fmt.Fprintf(env.Stdout, "%s: warning: %s\n", path, w)
	}
	published := path
	if *pubDir != "" {
		published = filepath.Join(*pubDir, filepath.Base(path))
	}
	problems = append(problems, manifest.CheckFiles(m, published)...)
	for _, e := range problems {
		fmt.Fprintf(env.Stdout, "%s: error: %s\n", path, e)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %d error(s), %d warning(s)", path, len(problems), len(warnings))
	}
	fmt.Fprintf(env.Stdout, "%s: version %d, %d patch(es), %d revoked: valid, %d warning(s)\n", path, m.Version, len(m.Patches), len(m.Revoked), len(warnings))
	return nil
}
