package manifest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
)

// Source is a host's view of the published manifest: it polls the fetcher,
// runs the trust chain on new bodies, and keeps the last accepted envelope
// and its validators in cache files so that a restarted agent works
// offline and its first poll is still conditional.
type Source struct {
	Fetcher *Fetcher
	Trust   Trust
	Store   VersionStore
	Cache   CacheFiles // zero: memory only
	Now     func() time.Time
	// Kernel, if set, is the host's release: only its entries are decoded
	// (see ParseFor).
	Kernel string
	// Shard: the fetcher's URL is Kernel's shard (manifest.shard_url),
	// verified with VerifyShard; Store should be that shard's floor.
	Shard bool
	// RootURL, if set, is the manifest URL the root chain (root.N.json)
	// is read beside, instead of the fetcher's (a shard's) URL.
	RootURL string
	// OnRootUpdate, if set, hears of every newer root trusted (for the
	// log and the journal), after the version floor was reset if the
	// rotation changed the manifest keys.
	OnRootUpdate func(*RootUpdate)

	mu         sync.Mutex
	current    *Verified
	validators Validators
}

// PollResult says what one poll found.
type PollResult struct {
	Manifest *Verified // the manifest in force after the poll (may be the cached one)
	Changed  bool      // a new version was accepted
	Status   int       // HTTP status seen
	// TrustedRoot is the host's trusted root after the poll (nil without a
	// root of trust), also when the poll failed: an expired root fails
	// every poll, and status and metrics must say which root it is.
	TrustedRoot *Root
}

// CacheFiles are where a Source keeps the last accepted envelope and its
// HTTP validators (the agent's state directory names them).
type CacheFiles struct {
	Envelope, Validators string
}

// ErrNoCache is a 304 Not Modified for a manifest this host never had: the
// agent sent no validators, so the server (or something between) is wrong.
var ErrNoCache = errors.New("304 Not Modified without a cached manifest")

func (s *Source) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Current returns the manifest in force, if any.
func (s *Source) Current() *Verified {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// LoadCache restores the last accepted manifest. A cached envelope goes
// through the whole trust chain again (the keyring may have changed); one
// that fails is dropped with its validators so the next poll refetches.
func (s *Source) LoadCache() error {
	if s.Cache.Envelope == "" {
		return nil
	}
	env, err := limitfile.Read(s.Cache.Envelope, MaxSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load cached manifest: %w", err)
	}
	v, err := s.verifyDoc(env)
	if err != nil {
		return fmt.Errorf("cached manifest no longer accepted: %w", err)
	}
	v.URL = s.URL()
	var val Validators
	if b, err := limitfile.Read(s.Cache.Validators, 64<<10); err == nil && s.Cache.Validators != "" {
		_ = json.Unmarshal(b, &val) // validators are an optimisation only
	}
	s.mu.Lock()
	s.current, s.validators = v, val
	s.mu.Unlock()
	return nil
}

// Poll fetches and, when the body changed, verifies it. A rejected body
// leaves the manifest in force untouched. An unchanged (304) body is not
// verified again, but the manifest in force is still checked for expiry:
// a publisher who stops re-signing must be noticed.
func (s *Source) Poll(ctx context.Context) (PollResult, error) {
	res, err := s.poll(ctx)
	if s.Trust.Root != nil {
		res.TrustedRoot = s.Trust.Root.Current()
	}
	return res, err
}

func (s *Source) poll(ctx context.Context) (PollResult, error) {
	if err := s.updateRoot(ctx); err != nil {
		s.mu.Lock()
		cur := s.current
		s.mu.Unlock()
		return PollResult{Manifest: cur}, err
	}
	s.mu.Lock()
	cur, val := s.current, s.validators
	s.mu.Unlock()
	if cur == nil {
		val = Validators{} // nothing to be "unchanged" against
	}
	fr, err := s.Fetcher.Fetch(ctx, val)
	if err != nil {
		return PollResult{Manifest: cur}, err
	}
	res := PollResult{Manifest: cur, Status: fr.Status}
	if fr.NotModified {
		if cur == nil {
			return res, fmt.Errorf("manifest from %s: %w", redact(s.Fetcher.URL()), ErrNoCache)
		}
		if cur.Expired(s.now()) {
			return res, fmt.Errorf("%w: version %d expired at %s (unchanged on server)", ErrExpired, cur.Version, cur.Expires.UTC().Format(time.RFC3339))
		}
		if s.Trust.Root != nil {
			// The manifest was verified under a root that has since expired.
			if err := s.Trust.Root.Current().CheckExpiry(s.now()); err != nil {
				return res, err
			}
		}
		return res, nil
	}
	v, err := s.verifyDoc(fr.Body)
	if err != nil {
		return res, fmt.Errorf("manifest from %s rejected: %w", redact(s.Fetcher.URL()), err)
	}
	v.URL = s.URL()
	res.Changed = cur == nil || v.Version != cur.Version || v.PayloadSHA256 != cur.PayloadSHA256
	res.Manifest = v
	if s.Cache.Envelope != "" {
		if err := atomicfile.WriteFile(s.Cache.Envelope, fr.Body, 0o644); err != nil {
			return res, err
		}
	}
	if s.Cache.Validators != "" {
		b, _ := json.Marshal(fr.Validators)
		if err := atomicfile.WriteFile(s.Cache.Validators, b, 0o644); err != nil {
			return res, err
		}
	}
	s.mu.Lock()
	s.current, s.validators = v, fr.Validators
	s.mu.Unlock()
	return res, nil
}

// updateRoot follows the root chain (with a root of trust configured).
// A rotation that changes the manifest keys resets the version floor
// first and only then trusts the new root (a crash in between repeats the
// reset, never skips it), and drops the manifest in force: it was
// verified with keys that may now be revoked, so the next fetch is
// unconditional and verified with the new ones.
func (s *Source) updateRoot(ctx context.Context) error {
	rt := s.Trust.Root
	if rt == nil {
		return nil
	}
	// The whole walk runs under one poll deadline (slow retrieval).
	ctx, cancel := context.WithTimeout(ctx, s.Fetcher.timeout)
	defer cancel()
	u, err := rt.Walk(ctx, s.Fetcher.Client(), s.RootBase())
	if err != nil {
		return fmt.Errorf("root of trust beside %s: %w", redact(s.RootBase()), err)
	}
	if u.AdoptedKeysChanged {
		s.dropCurrent()
	}
	if !u.Changed() {
		return nil
	}
	if u.ManifestKeysChanged {
		if r, ok := s.Store.(FloorResetter); ok && !rt.readOnly {
			if err := r.ResetFloor(); err != nil {
				return fmt.Errorf("reset manifest version floor for root version %d: %w", u.To.Version, err)
			}
		}
	}
	if err := rt.Commit(u); err != nil {
		return err
	}
	if u.ManifestKeysChanged {
		s.dropCurrent()
	}
	if s.OnRootUpdate != nil {
		s.OnRootUpdate(u)
	}
	return nil
}

// dropCurrent forgets the manifest in force and its validators, so the
// next fetch is unconditional and verified with the root's current keys.
func (s *Source) dropCurrent() {
	s.mu.Lock()
	s.current, s.validators = nil, Validators{}
	s.mu.Unlock()
}

// URL is where the manifest is published; RPM URLs resolve against it.
func (s *Source) URL() string { return s.Fetcher.URL() }
