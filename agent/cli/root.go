package cli

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/manifest"
)

// The publisher's root-of-trust tools: init writes root.1.json, rotate
// root.<N+1>.json from root.<N>.json, sign adds signatures, one key holder
// after the other. See docs/security.md "Rotating keys".

func cmdRoot(env *Env, args []string) error {
	return dispatch(env, "manifest root", []subcommand{
		{"init", "write an unsigned root.1.json naming the root, manifest and (optionally) revoke keys and thresholds", cmdRootInit},
		{"rotate", "write an unsigned root.<N+1>.json from root.<N>.json with changed keys or thresholds", cmdRootRotate},
		{"sign", "add signatures to a root file, in place", cmdRootSign},
	}, args)
}

// roleFlags are the flags that set a root's roles and expiry.
type roleFlags struct {
	rootKeys, manifestKeys, revokeKeys     stringList
	rootThresh, manifestThres, revokeThres *int
	noRevoke                               *bool
	expiresIn                              *string
}

func addRoleFlags(fs *flag.FlagSet, rf *roleFlags, keep string) {
	fs.Var(&rf.rootKeys, "root-key", "public key (PEM) of a root key holder, repeatable"+keep)
	fs.Var(&rf.manifestKeys, "manifest-key", "public key (PEM) allowed to sign manifests, repeatable"+keep)
	rf.rootThresh = fs.Int("root-threshold", 0, "root signatures a next root needs"+keep)
	rf.manifestThres = fs.Int("manifest-threshold", 0, "manifest signatures hosts require"+keep)
	fs.Var(&rf.revokeKeys, "revoke-key", "public key (PEM) of the revoke role, repeatable: it may sign revocations.json only (revoke, pause), never a manifest"+keep)
	rf.revokeThres = fs.Int("revoke-threshold", 0, "revoke-role signatures a revocations.json needs"+keep)
	rf.noRevoke = fs.Bool("no-revoke-role", false, "name no revoke role (rotate: remove it); the release keys still sign revocations.json")
	rf.expiresIn = fs.String("expires-in", "365d", "the root expires this long from now (hosts refuse every manifest under an expired root)")
}

// role builds a role from key files (keeping prev when none are given).
func (rf *roleFlags) role(r *manifest.Root, files []string, threshold int, prev manifest.Role, prevKeys map[string]manifest.RootKey) (manifest.Role, error) {
	role := prev
	if len(files) > 0 {
		role = manifest.Role{}
		kr, err := manifest.LoadKeyFiles(files...)
		if err != nil {
			return role, err
		}
		for _, id := range kr.IDs() {
			_, rk := manifest.NewRootKey(kr[id])
			r.Keys[id] = rk
			role.KeyIDs = append(role.KeyIDs, id)
		}
		role.Threshold = 1
	} else {
		for _, id := range prev.KeyIDs {
			r.Keys[id] = prevKeys[id]
		}
	}
	if threshold > 0 {
		role.Threshold = threshold
	}
	return role, nil
}

func (rf *roleFlags) build(env *Env, version uint64, prev *manifest.Root) (*manifest.Root, error) {
	exp, err := manifest.ParseDuration(*rf.expiresIn)
	if err != nil || exp <= 0 {
		return nil, fmt.Errorf("%w: --expires-in %q", errUsage, *rf.expiresIn)
	}
	r := &manifest.Root{Type: manifest.RootType, Version: version, Expires: env.Now().UTC().Add(exp).Truncate(time.Second), Keys: map[string]manifest.RootKey{}}
	var pr, pm manifest.Role
	var prevKeys map[string]manifest.RootKey
	if prev != nil {
		pr, pm, prevKeys = prev.Roles.Root, prev.Roles.Manifest, prev.Keys
	}
	if r.Roles.Root, err = rf.role(r, rf.rootKeys, *rf.rootThresh, pr, prevKeys); err != nil {
		return nil, err
	}
	if r.Roles.Manifest, err = rf.role(r, rf.manifestKeys, *rf.manifestThres, pm, prevKeys); err != nil {
		return nil, err
	}
	if r.Roles.Revoke, err = rf.revokeRole(r, prev, prevKeys); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// revokeRole is the revoke role the flags ask for: new keys, the previous
// root's role (a threshold flag may change it), or none.
func (rf *roleFlags) revokeRole(r *manifest.Root, prev *manifest.Root, prevKeys map[string]manifest.RootKey) (*manifest.Role, error) {
	var pv *manifest.Role
	if prev != nil {
		pv = prev.Roles.Revoke
	}
	switch {
	case *rf.noRevoke && (len(rf.revokeKeys) > 0 || *rf.revokeThres > 0):
		return nil, fmt.Errorf("%w: --no-revoke-role with --revoke-key or --revoke-threshold", errUsage)
	case *rf.noRevoke:
		return nil, nil
	case len(rf.revokeKeys) == 0 && pv == nil:
		if *rf.revokeThres > 0 {
			return nil, fmt.Errorf("%w: --revoke-threshold without a revoke role: give --revoke-key", errUsage)
		}
		return nil, nil
	}
	var base manifest.Role
	if pv != nil {
		base = *pv
	}
	role, err := rf.role(r, rf.revokeKeys, *rf.revokeThres, base, prevKeys)
	if err != nil {
		return nil, err
	}
	return &role, nil
}

func writeRoot(env *Env, out string, r *manifest.Root, prev *manifest.Root) error {
	b, err := manifest.UnsignedRoot(r)
	if err != nil {
		return err
	}
	// A published root version is never rewritten.
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("%s exists: a root version is written once", out)
	}
	if err := atomicfile.WriteFile(out, b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "wrote %s: root version %d, expires %s\n", out, r.Version, r.Expires.Format(time.RFC3339))
	fmt.Fprintf(env.Stdout, "  root role: %d of %s\n  manifest role: %d of %s\n", r.Roles.Root.Threshold, strings.Join(r.Roles.Root.KeyIDs, ", "),
		r.Roles.Manifest.Threshold, strings.Join(r.Roles.Manifest.KeyIDs, ", "))
	if rv := r.Roles.Revoke; rv != nil {
		fmt.Fprintf(env.Stdout, "  revoke role: %d of %s\n", rv.Threshold, strings.Join(rv.KeyIDs, ", "))
	} else {
		fmt.Fprintf(env.Stdout, "  revoke role: none (the manifest role signs revocations.json)\n")
	}
	if prev != nil {
		fmt.Fprintf(env.Stdout, "sign it with %d of version %d's root keys AND %d of its own: manifest root sign --envelope %s --key KEY\n",
			prev.Roles.Root.Threshold, prev.Version, r.Roles.Root.Threshold, out)
	} else {
		fmt.Fprintf(env.Stdout, "sign it with %d of its root keys: manifest root sign --envelope %s --key KEY\n", r.Roles.Root.Threshold, out)
	}
	return nil
}

func cmdRootInit(env *Env, args []string) error {
	fs := newFlags(env, "manifest root init", "manifest root init --root-key PUB... --manifest-key PUB... [--revoke-key PUB...] [--root-threshold N] [--manifest-threshold N] [--revoke-threshold N] [--out root.1.json]")
	var rf roleFlags
	addRoleFlags(fs, &rf, "")
	out := fs.String("out", "root.1.json", "root file to write")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if len(rf.rootKeys) == 0 || len(rf.manifestKeys) == 0 {
		return fmt.Errorf("%w: give --root-key and --manifest-key", errUsage)
	}
	r, err := rf.build(env, 1, nil)
	if err != nil {
		return err
	}
	return writeRoot(env, *out, r, nil)
}

func cmdRootRotate(env *Env, args []string) error {
	fs := newFlags(env, "manifest root rotate", "manifest root rotate --prev root.N.json [--root-key PUB...] [--manifest-key PUB...] [--revoke-key PUB... | --no-revoke-role] [thresholds] [--out root.<N+1>.json]")
	var rf roleFlags
	addRoleFlags(fs, &rf, " (default: as in --prev)")
	prevPath := fs.String("prev", "", "the current root file, root.<N>.json")
	out := fs.String("out", "", "root file to write (default: root.<N+1>.json beside --prev)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *prevPath == "" {
		return fmt.Errorf("%w: --prev is required", errUsage)
	}
	b, err := limitfile.Read(*prevPath, manifest.RootMaxSize)
	if err != nil {
		return err
	}
	prev, err := manifest.VerifySelfSigned(b)
	if err != nil {
		return fmt.Errorf("%s: %w", *prevPath, err)
	}
	r, err := rf.build(env, prev.Version+1, prev)
	if err != nil {
		return err
	}
	if *out == "" {
		*out = filepath.Join(filepath.Dir(*prevPath), fmt.Sprintf("root.%d.json", r.Version))
	}
	return writeRoot(env, *out, r, prev)
}

func cmdRootSign(env *Env, args []string) error {
	fs := newFlags(env, "manifest root sign", "manifest root sign --envelope root.N.json --key KEY [--key KEY2]")
	var keys stringList
	fs.Var(&keys, "key", "private key file (repeatable)")
	file := fs.String("envelope", "", "root file to add signatures to, in place")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if len(keys) == 0 || *file == "" {
		return fmt.Errorf("%w: give --envelope and --key", errUsage)
	}
	return coSign(env, *file, keys, manifest.RootMaxSize,
		func(b []byte) error { _, err := manifest.RootPayload(b); return err }, manifest.AddRootSignature)
}

// coSign adds a signature by each key to the signed file in place (a root
// file, revocations.json): the file must already be one, read bounded,
// written atomically.
func coSign(env *Env, file string, keys []string, max int64, check func([]byte) error,
	add func([]byte, *manifest.Signer) ([]byte, error)) error {
	b, err := limitfile.Read(file, max)
	if err != nil {
		return err
	}
	if err := check(b); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		s, err := manifest.LoadSigner(k)
		if err != nil {
			return err
		}
		if b, err = add(b, s); err != nil {
			return err
		}
		id, _ := s.KeyID()
		ids = append(ids, id)
	}
	if err := atomicfile.WriteFile(file, b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "signed %s with key(s) %s\n", file, strings.Join(ids, ", "))
	return nil
}

// rootTrustFromFiles is the root at path followed through root.<N>.json
// files in dir, as a host would follow them beside the manifest.
func rootTrustFromFiles(path, dir string) (*manifest.RootTrust, *manifest.RootUpdate, error) {
	b, err := limitfile.Read(path, manifest.RootMaxSize)
	if err != nil {
		return nil, nil, err
	}
	rt, err := manifest.LoadRootTrust(b, "")
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	u, err := rt.WalkFunc(func(n uint64) ([]byte, bool, error) {
		b, err := limitfile.Read(filepath.Join(dir, fmt.Sprintf("root.%d.json", n)), manifest.RootMaxSize)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		return b, err == nil, err
	})
	if err != nil {
		return nil, nil, err
	}
	if err := rt.Commit(u); err != nil {
		return nil, nil, err
	}
	return rt, u, nil
}
