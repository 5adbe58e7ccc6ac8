package manifest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/klp-agent/klp-agent/internal/atomicfile"
)

// The publisher's edits of an unsigned manifest source (the YAML file that
// `manifest sign` turns into an envelope).

// LoadSource reads an unsigned manifest source; a missing file is a new,
// empty manifest unless mustExist.
func LoadSource(path string, mustExist bool) (*Manifest, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && !mustExist {
		return &Manifest{Schema: SchemaVersion}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("read %s: %w: over %d bytes", path, ErrTooLarge, MaxSize)
	}
	var m Manifest
	if err := DecodeStrict(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &m, nil
}

// SaveSource ends every edit: a new version with a new expiry, validated,
// written atomically.
func SaveSource(path string, m *Manifest, expires time.Time) error {
	m.Version++
	m.Expires = expires
	if err := m.Validate(); err != nil {
		return err
	}
	out, err := Marshal(m)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, out, 0o644)
}

// AddPatch adds p, or with replace overwrites the entry for the same
// kernel and level; without replace that entry is ErrDuplicate.
func (m *Manifest) AddPatch(p Patch, replace bool) error {
	for i := range m.Patches {
		if m.Patches[i].Kernel == p.Kernel && m.Patches[i].Level == p.Level {
			if !replace {
				return fmt.Errorf("%w: kernel %s level %d is already listed (replace it explicitly)", ErrDuplicate, p.Kernel, p.Level)
			}
			m.Patches[i] = p
			return nil
		}
	}
	m.Patches = append(m.Patches, p)
	return nil
}

// ErrNoMatch is a revocation that matches no entry of the manifest.
var ErrNoMatch = errors.New("no entry matches")

// Revoke adds r and returns how many entries it matches. A revocation
// listed already is ErrDuplicate; one that matches nothing is ErrNoMatch
// unless allowAbsent (a patch already removed that hosts still run).
func (m *Manifest) Revoke(r Revoked, allowAbsent bool) (int, error) {
	if err := r.validate(); err != nil {
		return 0, err
	}
	for _, old := range m.Revoked {
		if old.Name == r.Name && old.Level == r.Level && old.Kernel == r.Kernel && old.SHA256 == r.SHA256 {
			return 0, fmt.Errorf("%w: %s@%d is already revoked", ErrDuplicate, r.Name, r.Level)
		}
	}
	matched := 0
	for i := range m.Patches {
		if r.Matches(&m.Patches[i]) {
			matched++
		}
	}
	if matched == 0 && !allowAbsent {
		return 0, fmt.Errorf("%w: %s@%d", ErrNoMatch, r.Name, r.Level)
	}
	m.Revoked = append(m.Revoked, r)
	return matched, nil
}
