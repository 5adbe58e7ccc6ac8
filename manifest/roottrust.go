package manifest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
)

// RootTrust is a host's trusted root: the provisioned one or the newest it
// has followed the chain to, persisted so it never goes back. Safe for
// concurrent use.
type RootTrust struct {
	path     string // persisted newest root file; "" = memory only
	readOnly bool

	mu  sync.Mutex
	cur *Root
}

// LoadRootTrust starts from the provisioned root file (trust.root) and
// the one persisted at statePath, whichever has the higher version (an
// operator may ship a newer root with the package; an older provisioned
// one never rolls the host back). A persisted file that does not verify is
// an error, not a reason to fall back: falling back would trust keys a
// rotation revoked.
func LoadRootTrust(provisioned []byte, statePath string) (*RootTrust, error) {
	r, err := VerifySelfSigned(provisioned)
	if err != nil {
		return nil, fmt.Errorf("provisioned root: %w", err)
	}
	if statePath != "" {
		b, err := limitfile.Read(statePath, RootMaxSize)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("trusted root: %w", err)
		default:
			p, err := VerifySelfSigned(b)
			if err != nil {
				return nil, fmt.Errorf("trusted root %s: %w", statePath, err)
			}
			if p.Version >= r.Version {
				r = p
			}
		}
	}
	return &RootTrust{path: statePath, cur: r}, nil
}

// ReadOnly is a copy that follows the chain in memory but never persists
// it (for status and explain: only the daemon moves the trusted root, so
// that it is the one that sees a rotation and resets the version floor).
func (t *RootTrust) ReadOnly() *RootTrust {
	t.mu.Lock()
	defer t.mu.Unlock()
	return &RootTrust{readOnly: true, cur: t.cur}
}

// Current is the trusted root.
func (t *RootTrust) Current() *Root {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cur
}

// Trust is base with the manifest role of the trusted root, or an error if
// that root has expired at now.
func (t *RootTrust) Trust(base Trust, now time.Time) (Trust, error) {
	r := t.Current()
	if err := r.CheckExpiry(now); err != nil {
		return base, err
	}
	return r.ManifestTrust(base), nil
}

// RootUpdate is one walk of the chain.
type RootUpdate struct {
	From, To *Root
	// Files are the verified root files from From.Version+1 to To.Version.
	Files [][]byte
	// ManifestKeysChanged: the manifest role differs, so the manifest
	// version floor is reset (the fast-forward recovery).
	ManifestKeysChanged bool
	// AdoptedKeysChanged: before the walk, a newer root persisted by
	// another RootTrust was adopted and its manifest role differs (the
	// floor was reset by that one; the manifest in force must go).
	AdoptedKeysChanged bool
}

// Changed reports whether the walk found a newer root.
func (u *RootUpdate) Changed() bool { return u.To.Version != u.From.Version }

// RootURL is where root version n is published: beside the manifest.
func RootURL(manifestURL string, n uint64) (string, error) {
	base, err := parseURL(manifestURL)
	if err != nil {
		return "", fmt.Errorf("manifest url: %w", err)
	}
	return base.ResolveReference(&url.URL{Path: fmt.Sprintf("root.%d.json", n)}).String(), nil
}

// Walk fetches root.<N+1>.json, root.<N+2>.json, ... beside manifestURL
// until a 404, checking each against its predecessor, and returns the
// result without trusting it yet (Commit does). Any other failure stops
// the walk with an error: the manifest must not be verified with keys a
// root the host could not read may have revoked.
func (t *RootTrust) Walk(ctx context.Context, c *Client, manifestURL string) (*RootUpdate, error) {
	return t.WalkFunc(func(n uint64) ([]byte, bool, error) {
		ru, err := RootURL(manifestURL, n)
		if err != nil {
			return nil, false, err
		}
		fr, err := c.Fetch(ctx, ru, Validators{}, RootMaxSize)
		switch {
		case isNotFound(err):
			return nil, false, nil
		case err != nil:
			return nil, false, err
		case fr.NotModified:
			return nil, false, ErrNoCache
		}
		return fr.Body, true, nil
	})
}

// WalkFunc is Walk over get, which returns root version n's file or
// found=false where the chain ends (the publisher's tools read files).
func (t *RootTrust) WalkFunc(get func(n uint64) (body []byte, found bool, err error)) (*RootUpdate, error) {
	before := t.Current()
	if err := t.refresh(); err != nil {
		return nil, err
	}
	cur := t.Current()
	u := &RootUpdate{From: cur, To: cur, AdoptedKeysChanged: !before.SameManifestRole(cur)}
	for range MaxRootRotations {
		n := u.To.Version + 1
		body, found, err := get(n)
		if err != nil {
			return nil, fmt.Errorf("root version %d: %w", n, err)
		}
		if !found {
			break
		}
		next, err := u.To.VerifyNext(body)
		if err != nil {
			return nil, err
		}
		u.To = next
		u.Files = append(u.Files, body)
	}
	u.ManifestKeysChanged = !u.From.SameManifestRole(u.To)
	return u, nil
}

// isNotFound reports a 404 from Client.Fetch, or a file source's missing
// file (the old code knew only the 404: with trust.root, a directory
// source's walk failed on the first root file not yet published, and so
// every poll).
func isNotFound(err error) bool {
	var se *statusErr
	return errors.As(err, &se) && se.code == http.StatusNotFound || errors.Is(err, fs.ErrNotExist)
}

// refresh adopts a newer root another RootTrust on the same file persisted
// (the daemon's previous configuration, still polling during a reload):
// that one already made the rotation's floor reset, which must happen once.
func (t *RootTrust) refresh() error {
	if t.path == "" || t.readOnly {
		return nil
	}
	b, err := limitfile.Read(t.path, RootMaxSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("trusted root: %w", err)
	}
	r, err := VerifySelfSigned(b)
	if err != nil {
		return fmt.Errorf("trusted root %s: %w", t.path, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if r.Version > t.cur.Version {
		t.cur = r
	}
	return nil
}

// Commit trusts the walk's newest root: persisted (atomically) before it
// is used, so a restart never goes back to keys it revoked. A root that
// moved meanwhile (another walk committed) is left alone.
func (t *RootTrust) Commit(u *RootUpdate) error {
	if !u.Changed() {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cur.Version != u.From.Version {
		return fmt.Errorf("%w: trusted root moved from version %d to %d during the update", ErrRootRollback, u.From.Version, t.cur.Version)
	}
	if t.path != "" && !t.readOnly {
		if err := atomicfile.WriteFile(t.path, u.Files[len(u.Files)-1], 0o644); err != nil {
			return fmt.Errorf("persist trusted root: %w", err)
		}
	}
	t.cur = u.To
	return nil
}
