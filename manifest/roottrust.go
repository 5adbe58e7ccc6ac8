package manifest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
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

	// configured is the provisioned root file (trust.root) and
	// configuredSum its sha256: the chain persisted at path is trusted
	// only while the origin record beside it names the same sum.
	configured    []byte
	configuredSum string

	mu  sync.Mutex
	cur *Root
	// restart is a re-provisioning LoadRootTrust found and Settle has not
	// persisted yet; needOrigin: the origin record is missing.
	restart    *RootRestart
	needOrigin bool
}

// RootRestart is a chain restarted from a re-provisioned trust.root: the
// configured root file differs from the one the persisted chain started
// from, so the persisted chain (which a holder of the old root keys may
// have rotated to keys of their own) is no longer followed.
type RootRestart struct {
	// From is the persisted chain's newest root, To the configured root.
	From, To *Root
	// FromConfigured and ToConfigured are the sha256 of the configured
	// root files the old chain and the new one start from.
	FromConfigured, ToConfigured string
	// ManifestKeysChanged: the manifest role differs from From's, so the
	// manifest version floor is reset (a fast-forward by the old chain's
	// keys must not lock the real ones out).
	ManifestKeysChanged bool
}

// rootOrigin is the record, beside the persisted root, of the configured
// root file the chain started from.
type rootOrigin struct {
	ConfiguredSHA256  string `json:"configured_sha256"`
	ConfiguredVersion uint64 `json:"configured_version"`
}

// RootOriginPath is where the origin record of the chain persisted at
// statePath is kept (state.Layout names it through this).
func RootOriginPath(statePath string) string {
	return strings.TrimSuffix(statePath, ".json") + ".origin.json"
}

// readOrigin is the origin record at path (nil: none; an unreadable or
// damaged one counts as another origin, so the chain restarts from the
// configured root, which is always safe).
func readOrigin(path string) (o *rootOrigin, missing bool) {
	b, err := limitfile.Read(path, 4096)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, true
	}
	var r rootOrigin
	if err != nil || json.Unmarshal(b, &r) != nil {
		return &rootOrigin{}, false
	}
	return &r, false
}

// LoadRootTrust starts from the provisioned root file (trust.root) and
// the one persisted at statePath. While the persisted chain started from
// this same provisioned file (its origin record, RootOriginPath, says so),
// the higher version wins: an older provisioned root never rolls the host
// back. When the provisioned file differs from the chain's origin, the
// operator re-provisioned (the recovery from compromised root keys): the
// chain restarts from the provisioned root, whatever the persisted one's
// version; Settle persists that. Without an origin record (state from an
// agent before it was kept) the higher version wins and the provisioned
// root is recorded as the origin. A persisted file that does not verify is
// an error, not a reason to fall back: falling back would trust keys a
// rotation revoked.
func LoadRootTrust(provisioned []byte, statePath string) (*RootTrust, error) {
	r, err := VerifySelfSigned(provisioned)
	if err != nil {
		return nil, fmt.Errorf("provisioned root: %w", err)
	}
	sum := sha256.Sum256(provisioned)
	t := &RootTrust{path: statePath, cur: r, configured: provisioned, configuredSum: hex.EncodeToString(sum[:])}
	if statePath == "" {
		return t, nil
	}
	origin, missing := readOrigin(RootOriginPath(statePath))
	b, err := limitfile.Read(statePath, RootMaxSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		t.needOrigin = missing || origin.ConfiguredSHA256 != t.configuredSum
	case err != nil:
		return nil, fmt.Errorf("trusted root: %w", err)
	default:
		p, err := VerifySelfSigned(b)
		if err != nil {
			return nil, fmt.Errorf("trusted root %s: %w", statePath, err)
		}
		switch {
		case missing:
			t.needOrigin = true
			if p.Version >= r.Version {
				t.cur = p
			}
		case origin.ConfiguredSHA256 != t.configuredSum:
			t.restart = &RootRestart{From: p, To: r, FromConfigured: origin.ConfiguredSHA256, ToConfigured: t.configuredSum,
				ManifestKeysChanged: !p.SameManifestRole(r)}
		case p.Version >= r.Version:
			t.cur = p
		}
	}
	return t, nil
}

// Settle persists what LoadRootTrust decided, before the chain is walked:
// on a restart, the manifest version floor is reset in store when the
// manifest keys differ, then the provisioned root replaces the persisted
// one, and only then is the new origin recorded (a crash before that
// restarts again, never keeps the old chain). It returns the restart, for
// the journal (nil when there was none). A read-only or memory-only trust
// persists nothing.
func (t *RootTrust) Settle(store VersionStore) (*RootRestart, error) {
	if t.path == "" || t.readOnly {
		return nil, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	rs := t.restart
	if rs != nil {
		if r, ok := store.(FloorResetter); ok && rs.ManifestKeysChanged {
			if err := r.ResetFloor(); err != nil {
				return nil, fmt.Errorf("reset manifest version floor for the re-provisioned root: %w", err)
			}
		}
		if err := atomicfile.WriteFile(t.path, t.configured, 0o644); err != nil {
			return nil, fmt.Errorf("persist re-provisioned root: %w", err)
		}
	}
	if rs != nil || t.needOrigin {
		b, _ := json.Marshal(rootOrigin{ConfiguredSHA256: t.configuredSum, ConfiguredVersion: rs.toVersion(t.cur)})
		if err := atomicfile.WriteFile(RootOriginPath(t.path), append(b, '\n'), 0o644); err != nil {
			return nil, fmt.Errorf("record the root chain's origin: %w", err)
		}
	}
	t.restart, t.needOrigin = nil, false
	return rs, nil
}

// toVersion is the configured root's version (cur when no restart: the
// provisioned root may be older than the chain it started).
func (rs *RootRestart) toVersion(cur *Root) uint64 {
	if rs != nil {
		return rs.To.Version
	}
	return cur.Version
}

// ReadOnly is a copy that follows the chain in memory but never persists
// it (for status and explain: only the daemon moves the trusted root, so
// that it is the one that sees a rotation and resets the version floor).
func (t *RootTrust) ReadOnly() *RootTrust {
	t.mu.Lock()
	defer t.mu.Unlock()
	return &RootTrust{readOnly: true, cur: t.cur, configured: t.configured, configuredSum: t.configuredSum}
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
	t.mu.Lock()
	pending := t.restart != nil
	t.mu.Unlock()
	// Another configuration's chain (before a re-provisioning settled, or
	// a reloaded daemon's old trust.root) is not adopted.
	if o, missing := readOrigin(RootOriginPath(t.path)); pending || (!missing && o.ConfiguredSHA256 != t.configuredSum) {
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
		// A daemon reloaded with a re-provisioned trust.root settled
		// meanwhile: this (old) configuration's chain must not replace it.
		if o, missing := readOrigin(RootOriginPath(t.path)); !missing && o.ConfiguredSHA256 != t.configuredSum {
			return fmt.Errorf("%w: trust.root was re-provisioned during the update", ErrRootRollback)
		}
		if err := atomicfile.WriteFile(t.path, u.Files[len(u.Files)-1], 0o644); err != nil {
			return fmt.Errorf("persist trusted root: %w", err)
		}
	}
	t.cur = u.To
	return nil
}
