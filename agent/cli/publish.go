package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

func cmdManifest(env *Env, args []string) error {
	return dispatch(env, "manifest", []subcommand{
		{"keygen", "make an ed25519 release key pair", cmdKeygen},
		{"add", "add a livepatch RPM to an unsigned manifest (pinning its sha256 and size), with its rollout", cmdAdd},
		{"revoke", "pull a patch back everywhere: hosts running it roll back and block it", cmdRevoke},
		{"sign", "sign a manifest into a DSSE envelope, or add a signature to one", cmdSign},
		{"verify", "check an envelope's signatures, expiry and schema against trusted keys", cmdVerify},
		{"lint", "find mistakes in a manifest before publishing it, RPMs missing or different where their URLs resolve among them", cmdLint},
		{"shard", "sign one shard per kernel release from the full manifest, for hosts with manifest.shard_url", cmdShard},
		{"root", "the root of trust: init, rotate, sign root.<N>.json files", cmdRoot},
		{"revocations", "the fast revocation channel: add, pause, sign revocations.json (revoke-role key)", cmdRevocations},
	}, args)
}

func cmdKeygen(env *Env, args []string) error {
	fs := newFlags(env, "manifest keygen", "manifest keygen --out PREFIX   (writes PREFIX.key and PREFIX.pub)")
	out := fs.String("out", "", "path prefix for the key pair")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("%w: --out is required", errUsage)
	}
	priv, pub, id, err := manifest.GenerateKey()
	if err != nil {
		return err
	}
	// O_EXCL: never overwrite a signing key by accident.
	f, err := os.OpenFile(*out+".key", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if _, err := f.Write(priv); err != nil {
		f.Close()
		return fmt.Errorf("keygen: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("keygen: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if err := atomicfile.WriteFile(*out+".pub", pub, 0o644); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	fmt.Fprintf(env.Stdout, "key id %s\nprivate key %s.key (keep it off the hosts)\npublic key  %s.pub (install in the hosts' trust.keys_dir)\n", id, *out, *out)
	return nil
}

func cmdAdd(env *Env, args []string) error {
	fs := newFlags(env, "manifest add", "manifest add --manifest FILE --rpm RPM [flags]")
	path := fs.String("manifest", "manifest.yaml", "unsigned manifest source to edit (created if missing)")
	rpmPath := fs.String("rpm", "", "livepatch RPM to add (its header gives kernel, name, level; its bytes size and sha256)")
	u := fs.String("url", "", "URL of the RPM, absolute or relative to the manifest, taken as given (default: the RPM's path relative to --publish-dir)")
	pubDir := fs.String("publish-dir", "", "the directory the signed manifest is published from, relative URLs resolve against it; the RPM must be under it unless --url is given (default: --manifest's directory)")
	level := fs.Int("level", 0, "cumulative level, for layouts whose RPMs do not declare one (kpatch-patch, Meta's klp, SUSE): required for them")
	var tiers stringList
	fs.Var(&tiers, "tier", "rollout tier that gets the patch at --start (repeatable)")
	start := fs.String("start", "", "rollout start, RFC 3339 (default: now when any rollout flag is given)")
	startPct := fs.Float64("start-percent", 0, "share of other hosts at --start")
	dur := fs.String("duration", "", "linear ramp from --start-percent to 100% over this long (e.g. 24h, 7d); empty holds at --start-percent")
	expiresIn := fs.String("expires-in", "14d", "set expires to now plus this")
	replace := fs.Bool("replace", false, "replace an existing entry with the same kernel and level")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *rpmPath == "" {
		return fmt.Errorf("%w: --rpm is required", errUsage)
	}
	now := env.Now().UTC().Truncate(time.Second)
	info, err := klp.InspectRPM(*rpmPath)
	if err != nil && !(errors.Is(err, klp.ErrNoLevel) && *level > 0) {
		return err
	}
	if info == nil {
		return fmt.Errorf("inspect %s: no header information", *rpmPath)
	}
	p := manifest.Patch{
		Kernel: info.KernelRelease, Name: info.ModuleName, Level: info.Level,
		URL: *u, SHA256: info.SHA256, Size: info.Size,
	}
	switch {
	case *level > 0 && info.Layout == klp.LayoutKLP && info.Level > 0 && *level != info.Level:
		return fmt.Errorf("%w: --level %d, but %s declares level %d", errUsage, *level, *rpmPath, info.Level)
	case *level > 0:
		p.Level = *level
	case p.Level == 0:
		return fmt.Errorf("%w: %s is a %s-layout package, which carries no cumulative level: give --level N", errUsage, *rpmPath, info.Layout)
	}
	if p.Name == "" {
		return fmt.Errorf("%s: the module's name could not be read from its %s payload", *rpmPath, info.PayloadCompression)
	}
	if p.URL == "" {
		dir := *pubDir
		if dir == "" {
			dir = filepath.Dir(*path)
		}
		if p.URL, err = manifest.RelativeURL(dir, *rpmPath); err != nil {
			return fmt.Errorf("%w: copy it under there, or give --url", err)
		}
	}
	if len(tiers) > 0 || *start != "" || *startPct > 0 || *dur != "" {
		r := &manifest.Rollout{Tiers: tiers, Start: now, StartPercent: *startPct}
		if *start != "" {
			if r.Start, err = time.Parse(time.RFC3339, *start); err != nil {
				return fmt.Errorf("%w: --start: %w", errUsage, err)
			}
		}
		if *dur != "" {
			d, err := manifest.ParseDuration(*dur)
			if err != nil {
				return fmt.Errorf("%w: --duration: %w", errUsage, err)
			}
			r.Duration = manifest.Duration(d)
		}
		p.Rollout = r
	}
	exp, err := manifest.ParseDuration(*expiresIn)
	if err != nil || exp <= 0 {
		return fmt.Errorf("%w: --expires-in %q", errUsage, *expiresIn)
	}
	m, err := manifest.LoadSource(*path, false)
	if err != nil {
		return err
	}
	if err := m.AddPatch(p, *replace); err != nil {
		return fmt.Errorf("%s: %w (use --replace)", *path, err)
	}
	if err := manifest.SaveSource(*path, m, now.Add(exp)); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "added %s level %d for kernel %s (%d bytes, sha256 %s) as %s; manifest version %d, expires %s\n",
		p.Name, p.Level, p.Kernel, p.Size, p.SHA256, p.URL, m.Version, m.Expires.Format(time.RFC3339))
	return nil
}

// cmdRevoke is the fleet's pull-back: every host running the patch rolls
// back to its previous good level and blocks it, and no host selects it.
func cmdRevoke(env *Env, args []string) error {
	fs := newFlags(env, "manifest revoke", "manifest revoke --manifest FILE --name NAME --level N --reason TEXT [--kernel REL] [--sha256 HEX]")
	path := fs.String("manifest", "manifest.yaml", "unsigned manifest source to edit")
	name := fs.String("name", "", "livepatch (module) name")
	level := fs.Int("level", 0, "its cumulative level")
	kernel := fs.String("kernel", "", "only for this kernel release (default: every kernel)")
	sum := fs.String("sha256", "", "only this exact RPM")
	reason := fs.String("reason", "", "why, for every host's journal and block record")
	absent := fs.Bool("allow-absent", false, "revoke even if no entry in this manifest matches (a patch already removed that hosts still run)")
	expiresIn := fs.String("expires-in", "14d", "set expires to now plus this")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *name == "" || *level < 1 || strings.TrimSpace(*reason) == "" {
		return fmt.Errorf("%w: --name, --level and --reason are required", errUsage)
	}
	// Checked before matching, so a typo is reported as one and not as
	// "no entry matches". sha256sum prints lowercase; a pasted uppercase
	// digest means the same RPM.
	*sum = strings.ToLower(*sum)
	switch {
	case !manifest.ValidName(*name):
		return fmt.Errorf("%w: --name %q (allowed: [A-Za-z0-9_], at most %d)", errUsage, *name, manifest.MaxNameLen)
	case *kernel != "" && !manifest.ValidKernelRelease(*kernel):
		return fmt.Errorf("%w: --kernel %q", errUsage, *kernel)
	case *sum != "" && (len(*sum) != 64 || strings.Trim(*sum, "0123456789abcdef") != ""):
		return fmt.Errorf("%w: --sha256 %q: 64 hex digits", errUsage, *sum)
	}
	exp, err := manifest.ParseDuration(*expiresIn)
	if err != nil || exp <= 0 {
		return fmt.Errorf("%w: --expires-in %q", errUsage, *expiresIn)
	}
	m, err := manifest.LoadSource(*path, true)
	if err != nil {
		return err
	}
	r := manifest.Revoked{Name: *name, Level: *level, Kernel: *kernel, SHA256: *sum, Reason: *reason}
	matched, err := m.Revoke(r, *absent)
	switch {
	case errors.Is(err, manifest.ErrNoMatch):
		return fmt.Errorf("%s: %w (check --name, --level, --kernel, --sha256; or --allow-absent)", *path, err)
	case err != nil:
		return fmt.Errorf("%s: %w", *path, err)
	}
	if err := manifest.SaveSource(*path, m, env.Now().UTC().Truncate(time.Second).Add(exp)); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "revoked %s level %d (matching entries: %d) in %s; manifest version %d: sign and publish it\n",
		r.Name, r.Level, matched, *path, m.Version)
	return nil
}

func cmdSign(env *Env, args []string) error {
	fs := newFlags(env, "manifest sign", "manifest sign --key KEY [--key KEY2] (--in PAYLOAD --out ENVELOPE | --envelope ENVELOPE)")
	var keys stringList
	fs.Var(&keys, "key", "private key file (repeatable)")
	in := fs.String("in", "", "unsigned manifest source to sign")
	out := fs.String("out", "", "signed envelope to write")
	cosign := fs.String("envelope", "", "existing envelope to add signatures to, in place")
	format := fs.String("format", "json", "payload to sign: json (the manifest re-rendered canonically; hosts parse it an order of magnitude faster) "+fmt.Sprintf("or yaml (the --in file byte for byte; hosts refuse a yaml payload over %d KiB, and so does this command)", manifest.MaxYAMLPayload>>10))
	signedAt := fs.Bool("signed-at", false, "record now as the payload's signed_at: hosts then measure manifest.max_expiry from it, not from their clock at fetch time (json only; agents without signed_at support refuse such a manifest)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *signedAt && *format != "json" {
		return fmt.Errorf("%w: --signed-at needs --format json (a yaml payload is signed byte for byte)", errUsage)
	}
	if len(keys) == 0 || (*cosign == "") == (*in == "" || *out == "") {
		return fmt.Errorf("%w: give --key and either --in and --out, or --envelope", errUsage)
	}
	if *format != "json" && *format != "yaml" {
		return fmt.Errorf("%w: --format %q: json or yaml", errUsage, *format)
	}
	signers := make([]*manifest.Signer, 0, len(keys))
	for _, k := range keys {
		s, err := manifest.LoadSigner(k)
		if err != nil {
			return err
		}
		signers = append(signers, s)
	}
	var envelope []byte
	target := *out
	if *cosign != "" {
		b, err := limitfile.Read(*cosign, manifest.MaxSize)
		if err != nil {
			return err
		}
		for _, s := range signers {
			if b, err = manifest.AddSignature(b, s); err != nil {
				return err
			}
		}
		// An envelope hosts refuse gains nothing from another signature.
		if p, err := manifest.EnvelopePayload(b); err == nil {
			if _, err := manifest.CheckYAMLPayload(p); err != nil {
				return fmt.Errorf("%s: %w", *cosign, err)
			}
		}
		envelope, target = b, *cosign
	} else {
		payload, err := limitfile.Read(*in, manifest.MaxSize)
		if err != nil {
			return err
		}
		m, err := manifest.Parse(payload)
		if err != nil {
			return fmt.Errorf("%s: %w", *in, err)
		}
		if m.Expired(env.Now()) {
			return fmt.Errorf("%s: %w at %s; refresh it with 'manifest add' or edit expires", *in, manifest.ErrExpired, m.Expires.Format(time.RFC3339))
		}
		if *signedAt {
			m.SignedAt = env.Now().UTC().Truncate(time.Second)
		}
		if *format == "json" {
			if payload, err = manifest.MarshalJSON(m); err != nil {
				return err
			}
		}
		// Hosts bound a YAML payload: refuse to sign one they would refuse.
		warning, err := manifest.CheckYAMLPayload(payload)
		if err != nil {
			return fmt.Errorf("%s: %w", *in, err)
		}
		if warning != "" {
			fmt.Fprintf(env.Stderr, "%s: warning: %s\n", *in, warning)
		}
		if envelope, err = manifest.SignPayload(env.Ctx, payload, signers...); err != nil {
			return err
		}
	}
	if err := atomicfile.WriteFile(target, envelope, 0o644); err != nil {
		return err
	}
	ids := make([]string, len(signers))
	for i, s := range signers {
		ids[i], _ = s.KeyID()
	}
	fmt.Fprintf(env.Stdout, "signed %s with key(s) %s\n", target, strings.Join(ids, ", "))
	return nil
}

func cmdVerify(env *Env, args []string) error {
	fs := newFlags(env, "manifest verify", "manifest verify --envelope FILE (--keys-dir DIR | --pub KEY... | --root ROOT [--chain DIR]) [--threshold N] [--shard REL]")
	file := fs.String("envelope", "", "signed envelope")
	dir := fs.String("keys-dir", "", "directory of trusted *.pub keys")
	var pubs stringList
	fs.Var(&pubs, "pub", "trusted public key file (repeatable)")
	threshold := fs.Int("threshold", 1, "distinct trusted signatures required")
	rootFile := fs.String("root", "", "trusted root file (a host's trust.root): follow root.<N>.json in --chain and verify with the newest root's manifest keys")
	chain := fs.String("chain", "", "directory of the published root.<N>.json files (default: the envelope's directory)")
	shard := fs.String("shard", "", "the envelope is the shard for this kernel release (manifest shard), checked as a host running it checks it")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	given := 0
	for _, set := range []bool{*dir != "", len(pubs) > 0, *rootFile != ""} {
		if set {
			given++
		}
	}
	if *file == "" || given != 1 {
		return fmt.Errorf("%w: give --envelope and one of --keys-dir, --pub or --root", errUsage)
	}
	if *rootFile != "" {
		return verifyWithRoot(env, *file, *rootFile, *chain, *shard)
	}
	var kr manifest.Keyring
	var err error
	if *dir != "" {
		kr, err = manifest.LoadKeyring(*dir)
	} else {
		kr, err = manifest.LoadKeyFiles(pubs...)
	}
	if err != nil {
		return err
	}
	b, err := limitfile.Read(*file, manifest.DefaultMaxSize)
	if err != nil {
		return err
	}
	v, err := verifyDoc(manifest.Trust{Keys: kr, Threshold: *threshold}, b, env.Now(), *shard)
	if err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	fmt.Fprintf(env.Stdout, "OK: %s version %d, %d patch(es), %d revoked, expires %s, signed by %s\n", *file, v.Version,
		len(v.Patches), len(v.Revoked), v.Expires.UTC().Format(time.RFC3339), strings.Join(v.KeyIDs, ", "))
	return nil
}

// verifyWithRoot checks the root chain and then the manifest, as a host
// provisioned with rootFile would.
func verifyWithRoot(env *Env, file, rootFile, chain, shard string) error {
	if chain == "" {
		chain = filepath.Dir(file)
	}
	rt, u, err := rootTrustFromFiles(rootFile, chain)
	if err != nil {
		return err
	}
	b, err := limitfile.Read(file, manifest.DefaultMaxSize)
	if err != nil {
		return err
	}
	v, err := verifyDoc(manifest.Trust{Root: rt}, b, env.Now(), shard)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	r := rt.Current()
	fmt.Fprintf(env.Stdout, "OK: root chain version %d to %d, root expires %s, manifest role %d of %d key(s)\n", u.From.Version, r.Version,
		r.Expires.UTC().Format(time.RFC3339), r.Roles.Manifest.Threshold, len(r.Roles.Manifest.KeyIDs))
	fmt.Fprintf(env.Stdout, "OK: %s version %d, %d patch(es), %d revoked, expires %s, signed by %s\n", file, v.Version,
		len(v.Patches), len(v.Revoked), v.Expires.UTC().Format(time.RFC3339), strings.Join(v.KeyIDs, ", "))
	return nil
}
