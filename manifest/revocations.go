package manifest

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/klp-agent/klp-agent/internal/atomicfile"
)

// revocations.json, the fast revocation channel: a small signed document
// beside the manifest that only pulls patches back (revoked) or stops
// ramps (paused). Hosts poll it on a short interval with conditional GETs.
// It is signed by the root's revoke role or by the release (manifest)
// role; only the release role may drop an entry a host has seen.

// RevocationsPayloadType binds signatures to revocations documents: a
// revocations signature is never a manifest's or a root's.
const RevocationsPayloadType = "application/vnd.klp-agent.revocations.v1+json"

// RevocationsType is the payload's "type" member.
const RevocationsType = "klp-agent-revocations"

// RevocationsFile is the document's name beside the manifest.
const RevocationsFile = "revocations.json"

// RevocationsMaxSize bounds the envelope.
const RevocationsMaxSize = 256 << 10

// MaxRevocationEntries bounds revoked plus paused entries.
const MaxRevocationEntries = 1024

// maxReasonLen bounds a reason (it goes to every host's journal).
const maxReasonLen = 1024

// Sentinel errors of the channel; each wraps ErrRevocations, and the
// manifest sentinel of the same meaning where there is one.
var (
	ErrRevocations = errors.New("revocations refused")
	// ErrRevokeScope is a document asking for more than revoking and
	// pausing (a patch, a URL, a rollout), or a revoke-role document that
	// drops an entry (un-revoke, un-pause): only the release role may.
	ErrRevokeScope                = fmt.Errorf("%w: outside the revoke role's scope", ErrRevocations)
	ErrRevocationsInvalid   error = &revErr{"invalid document", ErrInvalid}
	ErrRevocationsExpired   error = &revErr{"expired", ErrExpired}
	ErrRevocationsRollback  error = &revErr{"rollback", ErrRollback}
	ErrRevocationsConflict  error = &revErr{"version reused with other content", ErrVersionConflict}
	ErrRevocationsExpiryFar error = &revErr{"expires too far ahead", ErrExpiryTooFar}
)

// revErr is a revocations sentinel that is also the manifest sentinel of
// the same meaning (without the manifest's wording).
type revErr struct {
	what string
	also error
}

func (e *revErr) Error() string        { return ErrRevocations.Error() + ": " + e.what }
func (e *revErr) Is(target error) bool { return target == ErrRevocations || target == e.also }

// Pause stops a patch's ramp: hosts not yet on it do not take it; hosts
// on it keep it (a revocation pulls it back).
type Pause struct {
	Name   string `json:"name"`
	Level  int    `json:"level"`
	Kernel string `json:"kernel,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Matches reports whether the pause applies to p.
func (x *Pause) Matches(p *Patch) bool {
	return x.Name == p.Name && x.Level == p.Level && (x.Kernel == "" || x.Kernel == p.Kernel)
}

// Revocations is the signed payload of revocations.json.
type Revocations struct {
	Type     string    `json:"type"`
	Version  uint64    `json:"version"`
	Expires  time.Time `json:"expires"`
	SignedAt time.Time `json:"signed_at,omitzero"`
	Revoked  []Revoked `json:"revoked,omitempty"`
	Paused   []Pause   `json:"paused,omitempty"`
}

// The members a revocations document may have; anything else is a request
// outside the revoke role's scope and refused, not ignored.
var (
	revocationsMembers = []string{"type", "version", "expires", "signed_at", "revoked", "paused"}
	revokedMembers     = []string{"name", "level", "kernel", "sha256", "reason"}
	pauseMembers       = []string{"name", "level", "kernel", "reason"}
)

// Revokes is the entry revoking p, or nil.
func (r *Revocations) Revokes(p *Patch) *Revoked {
	if r == nil {
		return nil
	}
	for i := range r.Revoked {
		if r.Revoked[i].Matches(p) {
			return &r.Revoked[i]
		}
	}
	return nil
}

// Pauses is the entry pausing p's ramp, or nil.
func (r *Revocations) Pauses(p *Patch) *Pause {
	if r == nil {
		return nil
	}
	for i := range r.Paused {
		if r.Paused[i].Matches(p) {
			return &r.Paused[i]
		}
	}
	return nil
}

// Expired reports whether the document may no longer be acted on at now.
func (r *Revocations) Expired(now time.Time) bool { return !now.Before(r.Expires) }

// Next is the document's next version: the same entries, version one
// more, signed_at now and expiring validFor later. prev nil starts at 1.
func (r *Revocations) Next(now time.Time, validFor time.Duration) *Revocations {
	n := &Revocations{Type: RevocationsType, Version: 1}
	if r != nil {
		n.Version = r.Version + 1
		n.Revoked, n.Paused = slices.Clone(r.Revoked), slices.Clone(r.Paused)
	}
	n.SignedAt = now.UTC().Truncate(time.Second)
	n.Expires = n.SignedAt.Add(validFor)
	return n
}

// AddRevoked adds a revocation; the same name, level, kernel and sha256
// twice is ErrDuplicate (the guard retries: it checks before it signs).
func (r *Revocations) AddRevoked(x Revoked) error {
	if err := x.validate(); err != nil {
		return err
	}
	for _, o := range r.Revoked {
		if o.Name == x.Name && o.Level == x.Level && o.Kernel == x.Kernel && o.SHA256 == x.SHA256 {
			return fmt.Errorf("%w: %s@%d is already revoked", ErrDuplicate, x.Name, x.Level)
		}
	}
	r.Revoked = append(r.Revoked, x)
	return nil
}

// AddPause adds a pause (ErrDuplicate for the same one twice).
func (r *Revocations) AddPause(x Pause) error {
	if err := x.validate(); err != nil {
		return err
	}
	for _, o := range r.Paused {
		if o.Name == x.Name && o.Level == x.Level && o.Kernel == x.Kernel {
			return fmt.Errorf("%w: %s@%d is already paused", ErrDuplicate, x.Name, x.Level)
		}
	}
	r.Paused = append(r.Paused, x)
	return nil
}

// validReason is printable's rule for the signed reasons of the channel,
// as for the manifest's: nothing a terminal or the journal would take as a
// control (C0, C1, DEL, bidi overrides, invalid UTF-8).
func validReason(s string) error {
	if err := printable(s, maxReasonLen); err != nil {
		return fmt.Errorf("%w: reason: %v", ErrInvalid, err)
	}
	return nil
}

func (x *Pause) validate() error {
	if !ValidName(x.Name) {
		return fmt.Errorf("%w: name %q", ErrInvalidName, x.Name)
	}
	if x.Level < 1 {
		return fmt.Errorf("%w: %s: level must be >= 1", ErrInvalid, x.Name)
	}
	if x.Kernel != "" && !ValidKernelRelease(x.Kernel) {
		return fmt.Errorf("%w: kernel %q", ErrInvalidName, x.Kernel)
	}
	return validReason(x.Reason)
}

// Validate checks everything that does not depend on time or keys.
func (r *Revocations) Validate() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrRevocationsInvalid, fmt.Sprintf(f, a...))
	}
	switch {
	case r.Type != RevocationsType:
		return bad("type %q (want %q)", r.Type, RevocationsType)
	case r.Version < 1:
		return bad("version must be at least 1")
	case r.Expires.IsZero():
		return bad("expires is missing")
	case !r.SignedAt.IsZero() && !r.SignedAt.Before(r.Expires):
		return bad("signed_at is not before expires")
	case len(r.Revoked)+len(r.Paused) > MaxRevocationEntries:
		return bad("%d entries (limit %d)", len(r.Revoked)+len(r.Paused), MaxRevocationEntries)
	}
	for i := range r.Revoked {
		if err := r.Revoked[i].validate(); err != nil {
			return bad("revoked[%d]: %v", i, err)
		}
		if err := validReason(r.Revoked[i].Reason); err != nil {
			return bad("revoked[%d]: %v", i, err)
		}
	}
	for i := range r.Paused {
		if err := r.Paused[i].validate(); err != nil {
			return bad("paused[%d]: %v", i, err)
		}
	}
	return nil
}

// MarshalRevocations is the canonical payload.
func MarshalRevocations(r *Revocations) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("marshal revocations: %w", err)
	}
	return b, nil
}

// SignRevocations wraps the canonical document in an envelope signed by
// signers (revoke or release keys).
func SignRevocations(ctx context.Context, r *Revocations, signers ...*Signer) ([]byte, error) {
	b, err := MarshalRevocations(r)
	if err != nil {
		return nil, err
	}
	return signPayloadType(ctx, RevocationsPayloadType, b, signers...)
}

// AddRevocationsSignature co-signs a revocations envelope.
func AddRevocationsSignature(envelope []byte, s *Signer) ([]byte, error) {
	return addSignature(envelope, RevocationsPayloadType, s)
}

// RevocationsPayload reads an envelope's document without checking
// signatures (for the publisher's tools: the next version starts from it).
func RevocationsPayload(envelope []byte) (*Revocations, error) {
	env, err := decodeEnvelopeType(envelope, RevocationsPayloadType)
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not base64: %w", ErrRevocationsInvalid, err)
	}
	return ParseRevocations(b)
}

// onlyMembers refuses a JSON object with a member not in allowed: the
// member names what was asked beyond the document's scope.
func onlyMembers(raw jsontext.Value, allowed []string, where string) error {
	var m map[string]jsontext.Value
	if err := jsonv2.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrRevocationsInvalid, where, err)
	}
	for k := range m {
		if !slices.Contains(allowed, k) {
			return fmt.Errorf("%w: %s: member %q (a revocations document may only revoke or pause)", ErrRevokeScope, where, k)
		}
	}
	return nil
}

// ParseRevocations decodes a payload strictly. A member beyond revoking
// and pausing (patches, url, rollout, unrevoke...) is ErrRevokeScope;
// duplicate names and trailing data are invalid.
func ParseRevocations(payload []byte) (*Revocations, error) {
	if err := onlyMembers(payload, revocationsMembers, "document"); err != nil {
		return nil, err
	}
	var entries struct {
		Revoked []jsontext.Value `json:"revoked"`
		Paused  []jsontext.Value `json:"paused"`
	}
	if err := jsonv2.Unmarshal(payload, &entries); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRevocationsInvalid, err)
	}
	for i, e := range entries.Revoked {
		if err := onlyMembers(e, revokedMembers, fmt.Sprintf("revoked[%d]", i)); err != nil {
			return nil, err
		}
	}
	for i, e := range entries.Paused {
		if err := onlyMembers(e, pauseMembers, fmt.Sprintf("paused[%d]", i)); err != nil {
			return nil, err
		}
	}
	var r Revocations
	if err := jsonv2.Unmarshal(payload, &r, jsonv2.RejectUnknownMembers(true)); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRevocationsInvalid, err)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// RevocationsTrust is who may sign revocations.json: with a root, its
// revoke role or its manifest role; without one, the manifest keys.
type RevocationsTrust struct {
	Root      *RootTrust
	Keys      Keyring // without Root: the release keys
	Threshold int
	// MaxExpiry bounds expires past signed_at (or the host's clock when
	// there is none); 0: no bound.
	MaxExpiry time.Duration
}

// VerifiedRevocations is a revocations document that passed every check.
type VerifiedRevocations struct {
	*Revocations
	PayloadSHA256 string
	KeyIDs        []string
	// ByRelease: signed by a threshold of the release role, which may
	// also drop entries; otherwise by the revoke role, which may only add.
	ByRelease bool
}

// rolesID identifies who may sign revocations under t now: the root's
// manifest and revoke roles, or the keyring.
func (t RevocationsTrust) rolesID() string {
	role := func(r Role) string {
		ids := slices.Clone(r.KeyIDs)
		slices.Sort(ids)
		return fmt.Sprintf("%s/%d", strings.Join(ids, ","), r.Threshold)
	}
	var s string
	if t.Root != nil {
		r := t.Root.Current()
		s = "manifest:" + role(r.Roles.Manifest)
		if r.Roles.Revoke != nil {
			s += " revoke:" + role(*r.Roles.Revoke)
		}
	} else {
		s = "keys:" + role(Role{KeyIDs: t.Keys.IDs(), Threshold: t.Threshold})
	}
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// verify checks the signatures: the release role first (its documents
// may drop entries), then the revoke role.
func (t RevocationsTrust) verify(envelope []byte, now time.Time) (payload []byte, ids []string, byRelease bool, err error) {
	keys, threshold := t.Keys, t.Threshold
	var rk Keyring
	var rt int
	var hasRevoke bool
	if t.Root != nil {
		r := t.Root.Current()
		if err := r.CheckExpiry(now); err != nil {
			return nil, nil, false, err
		}
		keys, threshold = r.keyring(r.Roles.Manifest), r.Roles.Manifest.Threshold
		rk, rt, hasRevoke = r.RevokeTrust()
	}
	payload, ids, rerr := verifyEnvelope(envelope, RevocationsPayloadType, keys, threshold, RevocationsMaxSize)
	if rerr == nil {
		return payload, ids, true, nil
	}
	if !hasRevoke {
		return nil, nil, false, fmt.Errorf("release role: %w", rerr)
	}
	payload, ids, err = verifyEnvelope(envelope, RevocationsPayloadType, rk, rt, RevocationsMaxSize)
	if err != nil {
		return nil, nil, false, fmt.Errorf("neither the revoke role (%w) nor the release role (%w) signed it", err, rerr)
	}
	return payload, ids, false, nil
}

// Verify runs the whole chain on a revocations envelope: signatures,
// strict parsing, expiry at now, the expiry bound, and against store the
// anti-rollback floor and, for a revoke-role document, that no entry seen
// before was dropped. It records the document in store (nil: tools).
func (t RevocationsTrust) Verify(envelope []byte, now time.Time, store *RevocationsStore) (*VerifiedRevocations, error) {
	payload, ids, byRelease, err := t.verify(envelope, now)
	if err != nil {
		return nil, err
	}
	r, err := ParseRevocations(payload)
	if err != nil {
		return nil, err
	}
	if r.Expired(now) {
		return nil, fmt.Errorf("%w: version %d expired at %s", ErrRevocationsExpired, r.Version, r.Expires.UTC().Format(time.RFC3339))
	}
	if t.MaxExpiry > 0 {
		from := now
		if !r.SignedAt.IsZero() {
			from = r.SignedAt
			if from.After(now.Add(MaxClockSkew)) {
				return nil, fmt.Errorf("%w: version %d signed_at is more than %s after this host's clock", ErrRevocationsInvalid, r.Version, MaxClockSkew)
			}
		}
		if d := r.Expires.Sub(from); d > t.MaxExpiry {
			return nil, fmt.Errorf("%w: version %d expires %s after it was signed (limit %s)", ErrRevocationsExpiryFar, r.Version, d.Round(time.Second), t.MaxExpiry)
		}
	}
	sum := sha256.Sum256(payload)
	v := &VerifiedRevocations{Revocations: r, PayloadSHA256: hex.EncodeToString(sum[:]), KeyIDs: ids, ByRelease: byRelease}
	if store != nil {
		if err := store.accept(v, t.rolesID()); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// RevocationsStore is the host's record of the newest revocations
// document it accepted: the anti-rollback floor, and its entries, in force
// across restarts and the base a revoke-role document may only add to.
type RevocationsStore struct {
	Path string // "" = memory only

	mu   sync.Mutex
	rec  *revocationsRecord
	read bool
}

type revocationsRecord struct {
	PayloadSHA256 string       `json:"payload_sha256"`
	Revocations   *Revocations `json:"revocations"`
	// Roles identifies the keys that could sign it (rolesID): a rotation
	// that changes them resets the floor, the recovery from a stolen
	// revoke key's fast-forward (version 2^64-1).
	Roles string `json:"roles,omitempty"`
}

func (s *RevocationsStore) load() (*revocationsRecord, error) {
	if s.read || s.Path == "" {
		return s.rec, nil
	}
	b, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		s.read = true
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read revocations record: %w", err)
	}
	var r revocationsRecord
	// A damaged record is an error, not "nothing seen": that would reopen
	// the rollback window.
	if err := json.Unmarshal(b, &r); err != nil || r.Revocations == nil {
		return nil, fmt.Errorf("read revocations record %s: damaged (%v)", s.Path, err)
	}
	s.rec, s.read = &r, true
	return s.rec, nil
}

// Last is the newest accepted document (nil: none), expired or not.
func (s *RevocationsStore) Last() (*Revocations, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.load()
	if r == nil || err != nil {
		return nil, err
	}
	return r.Revocations, nil
}

// dropped names an entry of old that cur no longer has.
func dropped(old, cur *Revocations) string {
	for _, o := range old.Revoked {
		if !slices.Contains(cur.Revoked, o) {
			return "revoked " + o.Name + "@" + fmt.Sprint(o.Level)
		}
	}
	for _, o := range old.Paused {
		if !slices.ContainsFunc(cur.Paused, func(p Pause) bool { return p.Name == o.Name && p.Level == o.Level && p.Kernel == o.Kernel }) {
			return "paused " + o.Name + "@" + fmt.Sprint(o.Level)
		}
	}
	return ""
}

func (s *RevocationsStore) accept(v *VerifiedRevocations, roles string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, err := s.load()
	if err != nil {
		return err
	}
	if prev != nil && prev.Roles != roles {
		prev = nil // the signing roles were rotated: a new floor
	}
	if prev != nil {
		old := prev.Revocations
		switch {
		case v.Version < old.Version:
			return fmt.Errorf("%w: version %d is lower than %d already accepted", ErrRevocationsRollback, v.Version, old.Version)
		case v.Version == old.Version && v.PayloadSHA256 != prev.PayloadSHA256:
			return fmt.Errorf("%w: version %d", ErrRevocationsConflict, v.Version)
		case v.Version == old.Version:
			return nil
		}
		if d := dropped(old, v.Revocations); d != "" && !v.ByRelease {
			return fmt.Errorf("%w: version %d drops %s, which version %d had: only the release role may", ErrRevokeScope, v.Version, d, old.Version)
		}
	}
	rec := &revocationsRecord{PayloadSHA256: v.PayloadSHA256, Revocations: v.Revocations, Roles: roles}
	if s.Path != "" {
		b, _ := json.Marshal(rec)
		if err := atomicfile.WriteFile(s.Path, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("persist revocations record: %w", err)
		}
	}
	s.rec, s.read = rec, true
	return nil
}

// RevocationsURL is revocations.json beside the manifest.
func RevocationsURL(manifestURL string) (string, error) {
	base, err := parseURL(manifestURL)
	if err != nil {
		return "", fmt.Errorf("manifest url: %w", err)
	}
	return base.ResolveReference(&url.URL{Path: RevocationsFile}).String(), nil
}

// RevocationChannel polls revocations.json: conditional GETs, so an
// unchanged document costs a 304 and no parse. Safe for concurrent use;
// the agent runs one poll at a time.
type RevocationChannel struct {
	URL     string
	Client  *Client
	Trust   RevocationsTrust
	Store   *RevocationsStore // required: the floor and the entries in force
	Timeout time.Duration     // one poll, retries included; 0 = 30 s
	Now     func() time.Time

	mu     sync.Mutex
	prev   Validators
	cur    *Revocations
	loaded bool
	parses int // documents verified (the 304 path must not add one)
}

// RevocationsPoll is one poll's outcome.
type RevocationsPoll struct {
	// InForce is the newest accepted document if it has not expired
	// (from this poll, an earlier one, or the store after a restart).
	InForce      *Revocations
	Changed      bool // a new version was accepted
	NotModified  bool // 304
	NotPublished bool // 404: no revocations.json (fine)
}

func (c *RevocationChannel) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// inForce is cur unless expired; c.mu held.
func (c *RevocationChannel) inForce() *Revocations {
	if c.cur == nil || c.cur.Expired(c.now()) {
		return nil
	}
	return c.cur
}

// InForce is the newest accepted, unexpired document, read from the
// store on first use (so a restarted host keeps its revocations).
func (c *RevocationChannel) InForce() (*Revocations, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.loaded {
		r, err := c.Store.Last()
		if err != nil {
			return nil, err
		}
		c.cur, c.loaded = r, true
	}
	return c.inForce(), nil
}

// Poll does one conditional GET of revocations.json. A failed or refused
// poll leaves the document in force as it was.
func (c *RevocationChannel) Poll(ctx context.Context) (RevocationsPoll, error) {
	if _, err := c.InForce(); err != nil {
		return RevocationsPoll{}, err
	}
	c.mu.Lock()
	prev := c.prev
	c.mu.Unlock()
	d := c.Timeout
	if d <= 0 {
		d = 30 * time.Second
	}
	fctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	fr, err := c.Client.Fetch(fctx, c.URL, prev, RevocationsMaxSize)
	c.mu.Lock()
	defer c.mu.Unlock()
	res := RevocationsPoll{InForce: c.inForce()}
	switch {
	case isNotFound(err) || errors.Is(err, fs.ErrNotExist):
		c.prev = Validators{}
		res.NotPublished = true
		return res, nil
	case err != nil:
		return res, err
	case fr.NotModified:
		res.NotModified = true
		return res, nil
	}
	c.parses++
	v, err := c.Trust.Verify(fr.Body, c.now(), c.Store)
	if err != nil {
		return res, fmt.Errorf("%s: %w", redact(c.URL), err)
	}
	c.prev = fr.Validators
	res.Changed = c.cur == nil || v.Version != c.cur.Version
	c.cur = v.Revocations
	res.InForce = c.inForce()
	return res, nil
}

// String names the channel for messages.
func (c *RevocationChannel) String() string { return strings.TrimSpace(redact(c.URL)) }

// ReviseRevocations is the publisher's one step (`manifest revocations`,
// the guard): the next version of the document in prev (nil or empty:
// version 1), changed by edit, signed_at now, expiring validFor later,
// signed by signers. prev's signatures are not checked here: the
// publisher owns the file; hosts check what comes out.
func ReviseRevocations(ctx context.Context, prev []byte, now time.Time, validFor time.Duration, edit func(*Revocations) error, signers ...*Signer) ([]byte, *Revocations, error) {
	var old *Revocations
	if len(prev) > 0 {
		var err error
		if old, err = RevocationsPayload(prev); err != nil {
			return nil, nil, err
		}
	}
	next := old.Next(now, validFor)
	if err := edit(next); err != nil {
		return nil, nil, err
	}
	b, err := SignRevocations(ctx, next, signers...)
	if err != nil {
		return nil, nil, err
	}
	return b, next, nil
}
