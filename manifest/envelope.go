package manifest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

// PayloadType binds signatures to this use: a signature made for another
// DSSE payload type can never be replayed as a manifest.
const PayloadType = "application/vnd.klp-agent.manifest.v1+yaml"

// MaxSignatures bounds the work an attacker can make a host do.
const MaxSignatures = 32

// SignPayload wraps payload in a DSSE envelope signed by every signer.
func SignPayload(ctx context.Context, payload []byte, signers ...*Signer) ([]byte, error) {
	return signPayloadType(ctx, PayloadType, payload, signers...)
}

// signPayloadType is SignPayload for any of this package's payload types.
func signPayloadType(ctx context.Context, payloadType string, payload []byte, signers ...*Signer) ([]byte, error) {
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
	env, err := es.SignPayload(ctx, payloadType, payload)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return encodeEnvelope(env)
}

// AddSignature co-signs an existing envelope (threshold signing by several
// people, each with their own key, one after the other).
func AddSignature(envelope []byte, s *Signer) ([]byte, error) {
	return addSignature(envelope, PayloadType, s)
}

func addSignature(envelope []byte, payloadType string, s *Signer) ([]byte, error) {
	env, err := decodeEnvelopeType(envelope, payloadType)
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

// decodeEnvelope parses the JSON manifest envelope strictly.
func decodeEnvelope(b []byte) (*dsse.Envelope, error) { return decodeEnvelopeType(b, PayloadType) }

// decodeEnvelopeType parses a JSON envelope of payloadType strictly.
func decodeEnvelopeType(b []byte, payloadType string) (*dsse.Envelope, error) {
	// json v2: unknown members, duplicate names and trailing data are
	// errors, names match exactly, and it reads a multi-megabyte base64
	// string several times faster than encoding/json.
	var env dsse.Envelope
	if err := jsonv2.Unmarshal(b, &env, jsonv2.RejectUnknownMembers(true)); err != nil {
		return nil, envelopeError(err)
	}
	if env.PayloadType != payloadType {
		return nil, payloadTypeErr(env.PayloadType, payloadType)
	}
	return &env, nil
}

// envelopeError says why bytes are no envelope without quoting them: they
// are not verified yet and may be anything a source reached (a mirror's
// page, or a root-only file a symlink led to), and the message goes to the
// journal and the world-readable status.json. A JSON decoder's own message
// quotes member names, values and characters; this one gives the byte
// offset and the kind of fault only.
func envelopeError(err error) error {
	var syn *jsontext.SyntacticError
	var sem *jsonv2.SemanticError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("%w: envelope: not valid JSON (at byte offset %d)", ErrInvalid, syn.ByteOffset)
	case errors.As(err, &sem) && errors.Is(err, jsonv2.ErrUnknownName):
		return fmt.Errorf("%w: envelope: a member other than payloadType, payload and signatures (at byte offset %d)", ErrInvalid, sem.ByteOffset)
	case errors.As(err, &sem):
		kind := "value"
		if sem.JSONKind != 0 {
			kind = sem.JSONKind.String()
		}
		return fmt.Errorf("%w: envelope: unexpected JSON %s (at byte offset %d): not a DSSE envelope", ErrInvalid, kind, sem.ByteOffset)
	}
	return fmt.Errorf("%w: envelope: not a DSSE envelope", ErrInvalid)
}

// rawEnvelope is a DSSE envelope with the payload left as JSON text, so
// decodePAE can decode it in place.
type rawEnvelope struct {
	PayloadType string           `json:"payloadType"`
	Payload     jsontext.Value   `json:"payload"`
	Signatures  []dsse.Signature `json:"signatures"`
}

// payloadMember is the envelope's payload member name.
var payloadMember = []byte(`"payload":`)

// decodeRawEnvelope decodes an envelope strictly. The payload string is
// most of a fleet-sized envelope, and a JSON decoder checks it byte by
// byte: when it is plainly written (no escapes), its bounds are found with
// vectorised scans and the rest of the envelope, payload emptied, goes
// through the strict decoder. Anything else takes the decoder's way.
func decodeRawEnvelope(envelope []byte) (rawEnvelope, error) {
	var env rawEnvelope
	strict := func(b []byte) error {
		if err := jsonv2.Unmarshal(b, &env, jsonv2.RejectUnknownMembers(true)); err != nil {
			return envelopeError(err)
		}
		return nil
	}
	i := bytes.Index(envelope, payloadMember)
	if i < 0 {
		return env, strict(envelope)
	}
	start := i + len(payloadMember)
	for start < len(envelope) && (envelope[start] == ' ' || envelope[start] == '\t' || envelope[start] == '\n' || envelope[start] == '\r') {
		start++
	}
	if start >= len(envelope) || envelope[start] != '"' {
		return env, strict(envelope)
	}
	start++
	n := bytes.IndexByte(envelope[start:], '"')
	if n < 0 || bytes.IndexByte(envelope[start:start+n], '\\') >= 0 {
		return env, strict(envelope)
	}
	rest := make([]byte, 0, len(envelope)-n)
	rest = append(append(rest, envelope[:start]...), envelope[start+n:]...)
	if err := strict(rest); err != nil {
		return env, err
	}
	// Only a payload member the decoder saw as the empty string is ours
	// to fill; otherwise the match was not the member (decode it all).
	if string(env.Payload) != `""` {
		env = rawEnvelope{}
		return env, strict(envelope)
	}
	env.Payload = envelope[start-1 : start+n+1]
	return env, nil
}

// decodePAE decodes the base64 payload straight into its DSSE
// pre-authentication encoding ("DSSEv1 <len> <type> <len> <payload>") and
// returns it with the payload as its tail: no copy of a multi-megabyte
// payload, and a large one is decoded in two halves at once (base64 is the
// largest single cost of verifying a fleet-sized manifest).
func decodePAE(payloadType string, raw jsontext.Value) (pae, payload []byte, err error) {
	notB64 := func(err error) error { return fmt.Errorf("%w: payload is not base64: %v", ErrInvalid, err) }
	if raw.Kind() != '"' {
		return nil, nil, fmt.Errorf("%w: payload is not a JSON string", ErrInvalid)
	}
	b64 := raw[1 : len(raw)-1]
	// Three IndexByte scans (vectorised) beat one ContainsAny on megabytes.
	if bytes.IndexByte(b64, '\\') >= 0 || bytes.IndexByte(b64, '\n') >= 0 || bytes.IndexByte(b64, '\r') >= 0 {
		// Escapes or line breaks (which base64 skips): the plain way.
		s, err := jsontext.AppendUnquote(nil, raw)
		if err != nil {
			return nil, nil, notB64(err)
		}
		p, err := base64.StdEncoding.DecodeString(string(s))
		if err != nil {
			return nil, nil, notB64(err)
		}
		pae = dsse.PAE(payloadType, p)
		return pae, pae[len(pae)-len(p):], nil
	}
	if len(b64)%4 != 0 {
		return nil, nil, notB64(errors.New("length is not a multiple of 4"))
	}
	n := len(b64) / 4 * 3
	for i := len(b64) - 1; i >= 0 && i >= len(b64)-2 && b64[i] == '='; i-- {
		n--
	}
	prefix := fmt.Sprintf("DSSEv1 %d %s %d ", len(payloadType), payloadType, n)
	// Room for Decode's whole last quantum: padding makes it write less.
	buf := make([]byte, len(prefix)+n, len(prefix)+n+3)
	copy(buf, prefix)
	body := buf[len(prefix) : len(prefix)+n : cap(buf)]
	half := 0
	if len(b64) >= 1<<20 {
		half = len(b64) / 8 * 4
	}
	var n1 int
	var err1 error
	var wg sync.WaitGroup
	if half > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n1, err1 = base64.StdEncoding.Decode(body[:half/4*3], b64[:half])
		}()
	}
	n2, err2 := base64.StdEncoding.Decode(body[half/4*3:cap(body)], b64[half:])
	wg.Wait()
	if err := errors.Join(err1, err2); err != nil {
		return nil, nil, notB64(err)
	}
	if n1+n2 != n {
		return nil, nil, notB64(fmt.Errorf("decoded %d bytes, expected %d", n1+n2, n))
	}
	return buf, body, nil
}

// Trust is what a host trusts: its keyring and how many distinct keys must
// have signed.
type Trust struct {
	Keys      Keyring
	Threshold int
	MaxSize   int // envelope and payload limit in bytes; 0 = DefaultMaxSize
	// MaxExpiry bounds how far past its signing time a manifest's expiry
	// may be (0: no bound): the payload's signed_at, or without one the
	// verifier's clock at fetch time. A manifest valid for years cannot be
	// replayed by a mirror to freeze hosts for years.
	MaxExpiry time.Duration
	// Root, if set, is the root of trust: its manifest role replaces Keys
	// and Threshold, and an expired root refuses every manifest.
	Root *RootTrust
}

// DefaultMaxExpiry is manifest.max_expiry's default and the period beyond
// which `manifest lint` warns: 30 days.
const DefaultMaxExpiry = 720 * time.Hour

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
	return verifyEnvelope(envelope, PayloadType, t.Keys, t.Threshold, t.maxSize())
}

// verifyEnvelope checks an envelope of payloadType against keys and
// threshold (see Trust.VerifyEnvelope).
func verifyEnvelope(envelope []byte, payloadType string, keys Keyring, threshold, maxSize int) (payload []byte, keyIDs []string, err error) {
	if len(envelope) > maxSize {
		return nil, nil, fmt.Errorf("%w: envelope is %d bytes (limit %d)", ErrTooLarge, len(envelope), maxSize)
	}
	if threshold < 1 || threshold > len(keys) {
		return nil, nil, fmt.Errorf("threshold %d with %d trusted keys: %w", threshold, len(keys), ErrKey)
	}
	env, err := decodeRawEnvelope(envelope)
	if err != nil {
		return nil, nil, err
	}
	if env.PayloadType != payloadType {
		return nil, nil, payloadTypeErr(env.PayloadType, payloadType)
	}
	if len(env.Signatures) == 0 {
		return nil, nil, ErrNoSignature
	}
	if len(env.Signatures) > MaxSignatures {
		return nil, nil, fmt.Errorf("%w: %d signatures (limit %d)", ErrInvalid, len(env.Signatures), MaxSignatures)
	}
	pae, payload, err := decodePAE(env.PayloadType, env.Payload)
	if err != nil {
		return nil, nil, err
	}
	good := map[string]bool{}
	var unknown []string
	for i, s := range env.Signatures {
		sig, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: signature %d is not base64", ErrBadSignature, i)
		}
		if s.KeyID == "" {
			// DSSE allows anonymous signatures: try every trusted key.
			for id, pub := range keys {
				if ed25519.Verify(pub, pae, sig) {
					good[id] = true
					break
				}
			}
			continue
		}
		pub, ok := keys[s.KeyID]
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
	if len(good) >= threshold {
		return payload, keyIDs, nil
	}
	if len(good) == 0 && len(unknown) > 0 {
		return nil, nil, fmt.Errorf("%w: key ids %v are not among the %d trusted keys", ErrUnknownKey, keyIDsShown(unknown), len(keys))
	}
	if len(good) == 0 {
		return nil, nil, fmt.Errorf("%w: no signature verifies with a trusted key", ErrBadSignature)
	}
	return nil, nil, fmt.Errorf("%w: %d valid of %d required", ErrThreshold, len(good), threshold)
}

// The errors below describe a file that was not verified (it failed to):
// they say what is wrong without quoting it. Its bytes may be anything a
// mirror, a man in the middle or a planted file holds, and the error goes
// to the journal and the world-readable status.json.

// payloadTypeErr names the payload type found only when it is one of
// this package's (a root where a manifest belongs, or the reverse).
func payloadTypeErr(got, want string) error {
	what := fmt.Sprintf("another type (%d bytes)", len(got))
	switch got {
	case "":
		what = "none"
	case PayloadType, RootPayloadType:
		what = fmt.Sprintf("%q", got)
	}
	return fmt.Errorf("%w: the envelope's is %s (want %q)", ErrPayloadType, what, want)
}

// keyIDsShown keeps the key ids that are key ids (64 hex digits) and
// counts the others.
func keyIDsShown(ids []string) []string {
	var shown []string
	other := 0
	for _, id := range ids {
		if _, err := hex.DecodeString(id); err == nil && len(id) == 2*sha256.Size {
			shown = append(shown, id)
		} else {
			other++
		}
	}
	if other > 0 {
		shown = append(shown, fmt.Sprintf("(%d malformed)", other))
	}
	return shown
}

// Verified is a manifest that passed every check.
type Verified struct {
	*Manifest
	// URL is where the envelope was fetched (Source sets it; "" for a
	// file): relative RPM URLs resolve against it.
	URL           string
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

// VerifyFor is Verify for a host running kernel: see ParseFor. A shard
// (see VerifyShard) is refused: served in the full manifest's place it
// would hide every other kernel's entries.
func (t Trust) VerifyFor(envelope []byte, now time.Time, store VersionStore, kernel string) (*Verified, error) {
	v, err := t.verify(envelope, now, kernel)
	if err != nil {
		return nil, err
	}
	if v.Shard != "" {
		return nil, fmt.Errorf("%w: version %d is the shard for %s, not the full manifest (manifest.url names the full manifest)", ErrNotShard, v.Version, v.Shard)
	}
	if err := recordVersion(store, v); err != nil {
		return nil, err
	}
	return v, nil
}

// verify runs the trust chain up to, not including, the anti-rollback
// check: signatures, parsing, expiry and its bound.
func (t Trust) verify(envelope []byte, now time.Time, kernel string) (*Verified, error) {
	if t.Root != nil {
		var err error
		if t, err = t.Root.Trust(t, now); err != nil {
			return nil, err
		}
	}
	payload, ids, err := t.VerifyEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	// Before the parse: the bound is on what a YAML payload costs.
	if _, err := CheckYAMLPayload(payload); err != nil {
		return nil, err
	}
	// The anti-rollback hash runs beside the parse: both only read payload.
	sumc := make(chan [sha256.Size]byte, 1)
	go func() { sumc <- sha256.Sum256(payload) }()
	m, err := ParseFor(payload, t.maxSize(), kernel)
	sum := <-sumc
	if err != nil {
		return nil, err
	}
	if m.Expired(now) {
		return nil, fmt.Errorf("%w: version %d expired at %s", ErrExpired, m.Version, m.Expires.UTC().Format(time.RFC3339))
	}
	// Before the anti-rollback record: a refused manifest must not raise
	// the version floor.
	if err := t.checkExpiryBound(m, now); err != nil {
		return nil, err
	}
	return &Verified{Manifest: m, Payload: payload, PayloadSHA256: hex.EncodeToString(sum[:]), KeyIDs: ids}, nil
}

// recordVersion is the anti-rollback check and record (store may be nil).
func recordVersion(store VersionStore, v *Verified) error {
	if store == nil {
		return nil
	}
	if err := store.Check(v.Version, v.PayloadSHA256); err != nil {
		return err
	}
	return store.Record(v.Version, v.PayloadSHA256)
}

// MaxClockSkew is how far a manifest's signed_at may be ahead of the
// host's clock: a signing time in the future would stretch the expiry
// bound by as much.
const MaxClockSkew = time.Hour

// checkExpiryBound refuses an expiry further out than MaxExpiry after the
// signing time: the signed signed_at when the manifest has one (no later
// than MaxClockSkew past now), else the host's clock at fetch time.
func (t Trust) checkExpiryBound(m *Manifest, now time.Time) error {
	if t.MaxExpiry <= 0 {
		return nil
	}
	if !m.SignedAt.IsZero() {
		if m.SignedAt.After(now.Add(MaxClockSkew)) {
			return fmt.Errorf("%w: version %d signed_at %s is more than %s after this host's clock %s", ErrInvalid, m.Version,
				m.SignedAt.UTC().Format(time.RFC3339), MaxClockSkew, now.UTC().Format(time.RFC3339))
		}
		if d := m.Expires.Sub(m.SignedAt); d > t.MaxExpiry {
			return fmt.Errorf("%w: version %d expires at %s, %s after it was signed (signed_at %s); the limit (manifest.max_expiry) is %s",
				ErrExpiryTooFar, m.Version, m.Expires.UTC().Format(time.RFC3339), d.Round(time.Second), m.SignedAt.UTC().Format(time.RFC3339), t.MaxExpiry)
		}
		return nil
	}
	if m.Expires.Sub(now) > t.MaxExpiry {
		return fmt.Errorf("%w: version %d expires at %s, %s after this host's clock at fetch time %s; the limit (manifest.max_expiry) is %s",
			ErrExpiryTooFar, m.Version, m.Expires.UTC().Format(time.RFC3339), m.Expires.Sub(now).Round(time.Second),
			now.UTC().Format(time.RFC3339), t.MaxExpiry)
	}
	return nil
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
