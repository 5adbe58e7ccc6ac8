package manifest

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

// The root of trust (TUF's root role, adapted): a signed document naming
// the keys and thresholds of two roles, "root" (who may sign the next root)
// and "manifest" (who may sign manifests). Root N+1 must be signed by a
// threshold of root N's root keys and by a threshold of its own, so
// rotating or revoking any key is one published file, and a key below the
// root threshold can neither rotate nor revoke.

// RootPayloadType binds root signatures to roots: a manifest signature can
// never be replayed as a root, nor the reverse.
const RootPayloadType = "application/vnd.klp-agent.root.v1+json"

// RootType is the payload's "type" member.
const RootType = "klp-agent-root"

// RootMaxSize bounds a root file (the endless-data attack on the chain).
const RootMaxSize = 256 << 10

// MaxRootKeys bounds the keys one root may list.
const MaxRootKeys = 64

// MaxRootRotations bounds how many root versions one update follows.
const MaxRootRotations = 64

// Sentinel errors of the root chain; each wraps ErrRoot.
var (
	ErrRoot         = errors.New("root of trust refused")
	ErrRootVersion  = fmt.Errorf("%w: wrong version", ErrRoot)
	ErrRootExpired  = fmt.Errorf("%w: expired", ErrRoot)
	ErrRootInvalid  = fmt.Errorf("%w: invalid document", ErrRoot)
	ErrRootRollback = fmt.Errorf("%w: rollback", ErrRoot)
)

// Role names keys and how many of them must sign.
type Role struct {
	KeyIDs    []string `json:"keyids"`
	Threshold int      `json:"threshold"`
}

// RootKey is one public key: ed25519, the raw 32 bytes in base64.
type RootKey struct {
	KeyType string `json:"keytype"`
	Public  string `json:"public"`
}

// Roles are the root's roles: root and manifest always, and optionally
// revoke (see revoke_role.go). A root without a revoke role marshals to
// the same bytes as before the role existed.
type Roles struct {
	Root     Role  `json:"root"`
	Manifest Role  `json:"manifest"`
	Revoke   *Role `json:"revoke,omitempty"`
}

// Root is the root document, the signed payload of a root file.
type Root struct {
	Type    string             `json:"type"`
	Version uint64             `json:"version"`
	Expires time.Time          `json:"expires"`
	Keys    map[string]RootKey `json:"keys"`
	Roles   Roles              `json:"roles"`
}

// NewRootKey encodes pub for a root's key list under its key id.
func NewRootKey(pub ed25519.PublicKey) (string, RootKey) {
	return KeyID(pub), RootKey{KeyType: "ed25519", Public: base64.StdEncoding.EncodeToString(pub)}
}

// keyring is the role's keys (validated roots only).
func (r *Root) keyring(role Role) Keyring {
	kr := make(Keyring, len(role.KeyIDs))
	for _, id := range role.KeyIDs {
		b, _ := base64.StdEncoding.DecodeString(r.Keys[id].Public)
		kr[id] = ed25519.PublicKey(b)
	}
	return kr
}

// ManifestTrust is base with the keys and threshold of the manifest role.
func (r *Root) ManifestTrust(base Trust) Trust {
	base.Keys, base.Threshold = r.keyring(r.Roles.Manifest), r.Roles.Manifest.Threshold
	return base
}

// SameManifestRole reports whether both roots name the same manifest keys
// and threshold (a rotation that changes them resets the version floor).
func (r *Root) SameManifestRole(o *Root) bool {
	a, b := slices.Clone(r.Roles.Manifest.KeyIDs), slices.Clone(o.Roles.Manifest.KeyIDs)
	sort.Strings(a)
	sort.Strings(b)
	return slices.Equal(a, b) && r.Roles.Manifest.Threshold == o.Roles.Manifest.Threshold
}

// Validate checks the document's own consistency.
func (r *Root) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", ErrRootInvalid, fmt.Sprintf(f, a...)) }
	if r.Type != RootType {
		return bad("type %q (want %q)", r.Type, RootType)
	}
	if r.Version < 1 {
		return bad("version must be at least 1")
	}
	if r.Expires.IsZero() {
		return bad("expires is missing")
	}
	if len(r.Keys) > MaxRootKeys {
		return bad("%d keys (limit %d)", len(r.Keys), MaxRootKeys)
	}
	for id, k := range r.Keys {
		if k.KeyType != "ed25519" {
			return bad("key %s: keytype %q (want ed25519)", id, k.KeyType)
		}
		b, err := base64.StdEncoding.DecodeString(k.Public)
		if err != nil || len(b) != ed25519.PublicKeySize {
			return bad("key %s: public is not a base64 ed25519 key", id)
		}
		if got := KeyID(ed25519.PublicKey(b)); got != id {
			return bad("key listed as %s has id %s", id, got)
		}
	}
	roles := map[string]Role{"root": r.Roles.Root, "manifest": r.Roles.Manifest}
	if r.Roles.Revoke != nil {
		roles["revoke"] = *r.Roles.Revoke
	}
	for name, role := range roles {
		seen := map[string]bool{}
		for _, id := range role.KeyIDs {
			if _, ok := r.Keys[id]; !ok {
				return bad("role %s: key %s is not in keys", name, id)
			}
			if seen[id] {
				return bad("role %s: key %s listed twice", name, id)
			}
			seen[id] = true
		}
		if role.Threshold < 1 || role.Threshold > len(role.KeyIDs) {
			return bad("role %s: threshold %d with %d key(s)", name, role.Threshold, len(role.KeyIDs))
		}
	}
	return r.validateRevokeRole()
}

// MarshalRoot is the canonical payload: encoding/json sorts map keys and
// the struct fixes member order, so the same root is the same bytes.
func MarshalRoot(r *Root) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("marshal root: %w", err)
	}
	return b, nil
}

// parseRoot decodes a payload strictly: unknown members, duplicate names
// and trailing data are errors.
func parseRoot(payload []byte) (*Root, error) {
	var r Root
	if err := jsonv2.Unmarshal(payload, &r, jsonv2.RejectUnknownMembers(true)); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRootInvalid, err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// SignRoot wraps the canonical root in an envelope signed by signers.
func SignRoot(ctx context.Context, r *Root, signers ...*Signer) ([]byte, error) {
	b, err := MarshalRoot(r)
	if err != nil {
		return nil, err
	}
	return signPayloadType(ctx, RootPayloadType, b, signers...)
}

// UnsignedRoot is a root file with no signature yet, for `manifest root
// sign` to add them one key holder after the other.
func UnsignedRoot(r *Root) ([]byte, error) {
	b, err := MarshalRoot(r)
	if err != nil {
		return nil, err
	}
	return encodeEnvelope(&dsse.Envelope{PayloadType: RootPayloadType, Payload: base64.StdEncoding.EncodeToString(b), Signatures: []dsse.Signature{}})
}

// AddRootSignature co-signs a root file.
func AddRootSignature(envelope []byte, s *Signer) ([]byte, error) {
	return addSignature(envelope, RootPayloadType, s)
}

// RootPayload returns a root file's document without checking signatures
// (for the publisher's tools: rotate starts from it).
func RootPayload(envelope []byte) (*Root, error) {
	env, err := decodeEnvelopeType(envelope, RootPayloadType)
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not base64: %w", ErrRootInvalid, err)
	}
	return parseRoot(b)
}

// VerifySelfSigned checks a root file against the keys it names itself:
// for the root a host is provisioned with (trusted because it came from
// the host's own configuration) and the one it persisted.
func VerifySelfSigned(envelope []byte) (*Root, error) {
	r, err := RootPayload(envelope)
	if err != nil {
		return nil, err
	}
	if _, _, err := verifyEnvelope(envelope, RootPayloadType, r.keyring(r.Roles.Root), r.Roles.Root.Threshold, RootMaxSize); err != nil {
		return nil, fmt.Errorf("root version %d is not signed by its own root keys: %w", r.Version, err)
	}
	return r, nil
}

// VerifyNext checks root file envelope as the successor of r (TUF 5.3):
// signed by a threshold of r's root keys (checked before the payload is
// parsed) and by a threshold of its own, and its version exactly one more.
// Expiry is not checked here: only the newest root's expiry counts.
func (r *Root) VerifyNext(envelope []byte) (*Root, error) {
	payload, _, err := verifyEnvelope(envelope, RootPayloadType, r.keyring(r.Roles.Root), r.Roles.Root.Threshold, RootMaxSize)
	if err != nil {
		return nil, fmt.Errorf("root version %d: not signed by version %d's root keys: %w", r.Version+1, r.Version, err)
	}
	next, err := parseRoot(payload)
	if err != nil {
		return nil, err
	}
	if next.Version != r.Version+1 {
		return nil, fmt.Errorf("%w: root.%d.json holds version %d", ErrRootVersion, r.Version+1, next.Version)
	}
	if _, _, err := verifyEnvelope(envelope, RootPayloadType, next.keyring(next.Roles.Root), next.Roles.Root.Threshold, RootMaxSize); err != nil {
		return nil, fmt.Errorf("root version %d: not signed by its own root keys: %w", next.Version, err)
	}
	return next, nil
}

// CheckExpiry refuses an expired root: a frozen chain must not keep
// hosts trusting keys nobody renews.
func (r *Root) CheckExpiry(now time.Time) error {
	if !now.Before(r.Expires) {
		return fmt.Errorf("%w: root version %d expired at %s", ErrRootExpired, r.Version, r.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}
