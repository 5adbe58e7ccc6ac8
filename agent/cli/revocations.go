package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/manifest"
)

// The publisher's fast revocation channel: revocations.json beside the
// manifest, signed by the revoke role's key (or the release key). Each
// add or pause writes the next version, signed, in one step; sign adds
// co-signatures when the role's threshold is above one.

func cmdRevocations(env *Env, args []string) error {
	return dispatch(env, "manifest revocations", []subcommand{
		{"add", "revoke a patch in revocations.json (the next version, signed): hosts running it roll back within a revocations_interval", cmdRevocationsAdd},
		{"pause", "pause a patch's ramp in revocations.json (the next version, signed): hosts not yet on it do not take it", cmdRevocationsPause},
		{"sign", "add signatures to revocations.json, in place", cmdRevocationsSign},
		{"verify", "check revocations.json as a host would: the revoke or release role's signatures, schema, expiry", cmdRevocationsVerify},
	}, args)
}

// revocationEntryFlags are add's and pause's.
type revocationEntryFlags struct {
	file, name, kernel, reason, expiresIn *string
	level                                 *int
	keys                                  stringList
}

func addRevocationEntryFlags(env *Env, name, synopsis string) (*revocationEntryFlags, *flag.FlagSet) {
	fl := newFlags(env, name, synopsis)
	f := &revocationEntryFlags{
		file:      fl.String("file", manifest.RevocationsFile, "the signed revocations.json to write the next version of (created at version 1)"),
		name:      fl.String("name", "", "livepatch (module) name"),
		level:     fl.Int("level", 0, "its cumulative level"),
		kernel:    fl.String("kernel", "", "only for this kernel release (default: every kernel)"),
		reason:    fl.String("reason", "", "why, for every host's journal and block record"),
		expiresIn: fl.String("expires-in", "7d", "the document expires this long from now (within hosts' manifest.max_expiry)"),
	}
	fl.Var(&f.keys, "key", "private key file: the revoke role's (or a release key), repeatable")
	return f, fl
}

// revise writes the next version of the file with edit applied.
func (f *revocationEntryFlags) revise(env *Env, what string, edit func(*manifest.Revocations) error) error {
	if *f.name == "" || *f.level < 1 || strings.TrimSpace(*f.reason) == "" || len(f.keys) == 0 {
		return fmt.Errorf("%w: --name, --level, --reason and --key are required", errUsage)
	}
	exp, err := manifest.ParseDuration(*f.expiresIn)
	if err != nil || exp <= 0 {
		return fmt.Errorf("%w: --expires-in %q", errUsage, *f.expiresIn)
	}
	prev, err := limitfile.Read(*f.file, manifest.RevocationsMaxSize)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	signers := make([]*manifest.Signer, 0, len(f.keys))
	for _, k := range f.keys {
		s, err := manifest.LoadSigner(k)
		if err != nil {
			return err
		}
		signers = append(signers, s)
	}
	b, doc, err := manifest.ReviseRevocations(context.Background(), prev, env.Now(), exp, edit, signers...)
	if err != nil {
		return fmt.Errorf("%s: %w", *f.file, err)
	}
	if err := atomicfile.WriteFile(*f.file, b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s %s level %d in %s: version %d (%d revoked, %d paused), expires %s; publish it beside the manifest\n",
		what, *f.name, *f.level, *f.file, doc.Version, len(doc.Revoked), len(doc.Paused), doc.Expires.Format(time.RFC3339))
	return nil
}

func cmdRevocationsAdd(env *Env, args []string) error {
	f, fs := addRevocationEntryFlags(env, "manifest revocations add",
		"manifest revocations add --name NAME --level N --reason TEXT --key KEY [--kernel REL] [--sha256 HEX] [--file revocations.json]")
	sum := fs.String("sha256", "", "only this exact RPM")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	r := manifest.Revoked{Name: *f.name, Level: *f.level, Kernel: *f.kernel, SHA256: strings.ToLower(*sum), Reason: *f.reason}
	return f.revise(env, "revoked", func(d *manifest.Revocations) error { return d.AddRevoked(r) })
}

func cmdRevocationsPause(env *Env, args []string) error {
	f, fs := addRevocationEntryFlags(env, "manifest revocations pause",
		"manifest revocations pause --name NAME --level N --reason TEXT --key KEY [--kernel REL] [--file revocations.json]")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	p := manifest.Pause{Name: *f.name, Level: *f.level, Kernel: *f.kernel, Reason: *f.reason}
	return f.revise(env, "paused", func(d *manifest.Revocations) error { return d.AddPause(p) })
}

func cmdRevocationsSign(env *Env, args []string) error {
	fs := newFlags(env, "manifest revocations sign", "manifest revocations sign --key KEY [--key KEY2] [--file revocations.json]")
	var keys stringList
	fs.Var(&keys, "key", "private key file (repeatable)")
	file := fs.String("file", manifest.RevocationsFile, "revocations.json to add signatures to, in place")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if len(keys) == 0 {
		return fmt.Errorf("%w: give --key", errUsage)
	}
	return coSign(env, *file, keys, manifest.RevocationsMaxSize,
		func(b []byte) error { _, err := manifest.RevocationsPayload(b); return err }, manifest.AddRevocationsSignature)
}

func cmdRevocationsVerify(env *Env, args []string) error {
	fl := newFlags(env, "manifest revocations verify", "manifest revocations verify (--root ROOT [--chain DIR] | --keys-dir DIR [--threshold N]) [--file revocations.json]")
	file := fl.String("file", manifest.RevocationsFile, "signed revocations.json")
	dir := fl.String("keys-dir", "", "directory of trusted *.pub release keys (hosts without trust.root)")
	threshold := fl.Int("threshold", 1, "distinct trusted signatures required (with --keys-dir)")
	rootFile := fl.String("root", "", "trusted root file (a host's trust.root): follow root.<N>.json in --chain; its revoke or manifest role must have signed")
	chain := fl.String("chain", "", "directory of the published root.<N>.json files (default: the file's directory)")
	if err := parse(fl, args, 0); err != nil {
		return err
	}
	if (*dir == "") == (*rootFile == "") {
		return fmt.Errorf("%w: give one of --root or --keys-dir", errUsage)
	}
	var t manifest.RevocationsTrust
	if *rootFile != "" {
		if *chain == "" {
			*chain = filepath.Dir(*file)
		}
		rt, _, err := rootTrustFromFiles(*rootFile, *chain)
		if err != nil {
			return err
		}
		t.Root = rt
	} else {
		kr, err := manifest.LoadKeyring(*dir)
		if err != nil {
			return err
		}
		t.Keys, t.Threshold = kr, *threshold
	}
	b, err := limitfile.Read(*file, manifest.RevocationsMaxSize)
	if err != nil {
		return err
	}
	v, err := t.Verify(b, env.Now(), nil)
	if err != nil {
		return fmt.Errorf("%s: %w", *file, err)
	}
	role := "revoke"
	if v.ByRelease {
		role = "release"
	}
	fmt.Fprintf(env.Stdout, "OK: %s version %d, %d revoked, %d paused, expires %s, signed by the %s role: %s\n", *file, v.Version,
		len(v.Revoked), len(v.Paused), v.Expires.UTC().Format(time.RFC3339), role, strings.Join(v.KeyIDs, ", "))
	return nil
}
