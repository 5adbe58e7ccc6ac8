package manifest

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

// PayloadType binds signatures to this use: a signature made for another
// DSSE payload type can never be replayed as a manifest.
const PayloadType = "application/vnd.klp-agent.manifest.v1+yaml"

// MaxSignatures bounds the work an attacker can make a host do.
const MaxSignatures = 32

// SignPayload wraps payload in a DSSE envelope signed by every signer.
func SignPayload(ctx context.Context, payload []byte, signers ...*Signer) ([]byte, error) {
	if len(signers) == 0 {
		return nil, errors.New("sign: no signing key")
	}
	ds := make([]dsse.Signer, len(signers))
	for i, s := range signers {
		ds[i] = s
	}
	es, err := dsse.NewEnvelopeSigner(ds...)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	env, err := es.SignPayload(ctx, PayloadType, payload)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return encodeEnvelope(env)
}

// AddSignature co-signs an existing envelope (threshold signing by several
// people, each with their own key, one after the other).
func AddSignature(envelope []byte, s *Signer) ([]byte, error) {
	env, err := decodeEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not base64: %w", ErrInvalid, err)
	}
	id, _ := s.KeyID()
	for _, sig := range env.Signatures {
		if sig.KeyID == id {
			return nil, fmt.Errorf("envelope is already signed by key %s", id)
		}
	}
	sig, _ := s.Sign(context.Background(), dsse.PAE(env.PayloadType, payload))
	env.Signatures = append(env.Signatures, dsse.Signature{KeyID: id, Sig: base64.StdEncoding.EncodeToString(sig)})
	return encodeEnvelope(env)
}

func encodeEnvelope(env *dsse.Envelope) ([]byte, error) {
	b, err := json.MarshalIndent(env, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode envelope: %w", err)
	}
	return append(b, '\n'), nil
}

// decodeEnvelope parses the JSON envelope strictly.
func decodeEnvelope(b []byte) (*dsse.Envelope, error) {
	// json v2: unknown members, duplicate names and trailing data are
	// errors, names match exactly, and it reads a multi-megabyte base64
	// string several times faster than encoding/json.
	var env dsse.Envelope
	if err := jsonv2.Unmarshal(b, &env, jsonv2.RejectUnknownMembers(true)); err != nil {
		return nil, fmt.Errorf("%w: envelope: %w", ErrInvalid, err)
	}
	if env.PayloadType != PayloadType {
		return nil, fmt.Errorf("%w: %q (want %q)", ErrPayloadType, env.PayloadType, PayloadType)
	}
	return &env, nil
}

// Trust is what a host trusts: its keyring and how many distinct keys must
// have signed.
type Trust struct {
	Keys      Keyring
	Threshold int
	MaxSize   int // envelope and payload limit in bytes; 0 = DefaultMaxSize
}

func (t Trust) maxSize() int {
	if t.MaxSize > 0 {
		return t.MaxSize
	}
	return DefaultMaxSize
}

// VerifyEnvelope checks the signatures and returns the payload and the ids
// of the keys whose signatures verified. A signature that names a trusted
// key but does not verify rejects the whole envelope: it means the payload
// was altered. Signatures by keys not in the keyring are ignored unless
// that leaves too few.
func (t Trust) VerifyEnvelope(envelope []byte) (payload []byte, keyIDs []string, err error) {
	if len(envelope) > t.maxSize() {
		return nil, nil, fmt.Errorf("%w: envelope is %d bytes (limit %d)", ErrTooLarge, len(envelope), t.maxSize())
	}
	if t.Threshold < 1 || t.Threshold > len(t.Keys) {
		return nil, nil, fmt.Errorf("threshold %d with %d trusted keys: %w", t.Threshold, len(t.Keys), ErrKey)
	}
	env, err := decodeEnvelope(envelope)
	if err != nil {
		return nil, nil, err
	}
	if len(env.Signatures) == 0 {
		return nil, nil, ErrNoSignature
	}
	if len(env.Signatures) > MaxSignatures {
		return nil, nil, fmt.Errorf("%w: %d signatures (limit %d)", ErrInvalid, len(env.Signatures), MaxSignatures)
	}
	payload, err = base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: payload is not base64: %w", ErrInvalid, err)
	}
	pae := dsse.PAE(env.PayloadType, payload)
	good := map[string]bool{}
	var unknown []string
	for i, s := range env.Signatures {
		sig, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: signature %d is not base64", ErrBadSignature, i)
		}
		if s.KeyID == "" {
			// DSSE allows anonymous signatures: try every trusted key.
			for id, pub := range t.Keys {
				if ed25519.Verify(pub, pae, sig) {
					good[id] = true
					break
				}
			}
			continue
		}
		pub, ok := t.Keys[s.KeyID]
		if !ok {
			unknown = append(unknown, s.KeyID)
			continue
		}
		if !ed25519.Verify(pub, pae, sig) {
			return nil, nil, fmt.Errorf("%w: signature by key %s does not verify", ErrBadSignature, s.KeyID)
		}
		good[s.KeyID] = true
	}
	for id := range good {
		keyIDs = append(keyIDs, id)
	}
	sort.Strings(keyIDs)
	if len(good) >= t.Threshold {
		return payload, keyIDs, nil
	}
	if len(good) == 0 && len(unknown) > 0 {
		return nil, nil, fmt.Errorf("%w: key ids %v are not among the %d trusted keys", ErrUnknownKey, unknown, len(t.Keys))
	}
	if len(good) == 0 {
		return nil, nil, fmt.Errorf("%w: no signature verifies with a trusted key", ErrBadSignature)
	}
	return nil, nil, fmt.Errorf("%w: %d valid of %d required", ErrThreshold, len(good), t.Threshold)
}

// Verified is a manifest that passed every check.
type Verified struct {
	*Manifest
	Payload       []byte
	PayloadSHA256 string
	KeyIDs        []string
}

// Verify runs the whole trust chain on an envelope: signatures, strict
// parsing and validation, expiry at now, and the anti-rollback check against
// the highest version this host has seen (store may be nil for offline
// tools). It records a newly seen higher version in store.
func (t Trust) Verify(envelope []byte, now time.Time, store VersionStore) (*Verified, error) {
	return t.VerifyFor(envelope, now, store, "")
}

// VerifyFor is Verify for a host running kernel: see ParseFor.
func (t Trust) VerifyFor(envelope []byte, now time.Time, store VersionStore, kernel string) (*Verified, error) {
	payload, ids, err := t.VerifyEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	m, err := ParseFor(payload, t.maxSize(), kernel)
	if err != nil {
		return nil, err
	}
	if m.Expired(now) {
		return nil, fmt.Errorf("%w: version %d expired at %s", ErrExpired, m.Version, m.Expires.UTC().Format(time.RFC3339))
	}
	sum := sha256.Sum256(payload)
	v := &Verified{Manifest: m, Payload: payload, PayloadSHA256: hex.EncodeToString(sum[:]), KeyIDs: ids}
	if store != nil {
		if err := store.Check(m.Version, v.PayloadSHA256); err != nil {
			return nil, err
		}
		if err := store.Record(m.Version, v.PayloadSHA256); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// EnvelopePayload returns an envelope's payload without checking
// signatures, for linting only.
func EnvelopePayload(envelope []byte) ([]byte, error) {
	env, err := decodeEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not base64: %w", ErrInvalid, err)
	}
	return b, nil
}
