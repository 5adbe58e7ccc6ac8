package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/klp-agent/klp-agent/internal/atomicfile"
)

// VersionStore remembers the highest manifest version this host accepted,
// so that a replayed older manifest (rollback attack) is refused even
// across restarts.
type VersionStore interface {
	// Check returns ErrRollback for a version lower than the highest seen,
	// and ErrVersionConflict for the same version with other content.
	Check(version uint64, payloadSHA256 string) error
	// Record stores version if it is higher than the highest seen.
	Record(version uint64, payloadSHA256 string) error
	// Highest returns the highest version seen (0 if none).
	Highest() (uint64, error)
}

type versionRecord struct {
	Version       uint64 `json:"version"`
	PayloadSHA256 string `json:"payload_sha256"`
}

// FileVersionStore keeps the record in one JSON file written atomically.
type FileVersionStore struct {
	Path string
	mu   sync.Mutex
}

func (s *FileVersionStore) load() (versionRecord, error) {
	var r versionRecord
	b, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, fmt.Errorf("read version record: %w", err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		// Refuse to guess: treating a damaged record as "nothing seen" would
		// reopen the rollback window.
		return r, fmt.Errorf("read version record %s: %w", s.Path, err)
	}
	return r, nil
}

// Highest implements VersionStore.
func (s *FileVersionStore) Highest() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.load()
	return r.Version, err
}

// Check implements VersionStore.
func (s *FileVersionStore) Check(version uint64, sum string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.load()
	if err != nil {
		return err
	}
	return checkVersion(r, version, sum)
}

func checkVersion(r versionRecord, version uint64, sum string) error {
	switch {
	case version < r.Version:
		return fmt.Errorf("%w: version %d is lower than %d already accepted", ErrRollback, version, r.Version)
	case version == r.Version && r.PayloadSHA256 != "" && sum != r.PayloadSHA256:
		return fmt.Errorf("%w: version %d", ErrVersionConflict, version)
	}
	return nil
}

// Record implements VersionStore.
func (s *FileVersionStore) Record(version uint64, sum string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.load()
	if err != nil {
		return err
	}
	if version <= r.Version {
		return nil
	}
	b, _ := json.Marshal(versionRecord{Version: version, PayloadSHA256: sum})
	return atomicfile.WriteFile(s.Path, append(b, '\n'), 0o644)
}

// FloorResetter is a VersionStore whose floor a root rotation may reset.
type FloorResetter interface {
	// ResetFloor forgets the highest version seen, so that the next
	// manifest signed by the rotated keys is accepted whatever its
	// version: the recovery from a fast-forward (a 2^64-1 manifest signed
	// with a key since revoked).
	ResetFloor() error
}

// ResetFloor implements FloorResetter.
func (s *FileVersionStore) ResetFloor() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, _ := json.Marshal(versionRecord{})
	return atomicfile.WriteFile(s.Path, append(b, '\n'), 0o644)
}

// ResetFloor implements FloorResetter.
func (s *MemVersionStore) ResetFloor() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.r = versionRecord{}
	return nil
}

// MemVersionStore is a VersionStore in memory, for tools and tests.
type MemVersionStore struct {
	mu sync.Mutex
	r  versionRecord
}

// Check implements VersionStore.
func (s *MemVersionStore) Check(version uint64, sum string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return checkVersion(s.r, version, sum)
}

// Record implements VersionStore.
func (s *MemVersionStore) Record(version uint64, sum string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if version > s.r.Version {
		s.r = versionRecord{version, sum}
	}
	return nil
}

// Highest implements VersionStore.
func (s *MemVersionStore) Highest() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.Version, nil
}

// ReadOnly checks against s but never records: for tools (status,
// explain) that must not change what the daemon will accept.
func ReadOnly(s VersionStore) VersionStore { return readOnly{s} }

type readOnly struct{ VersionStore }

func (readOnly) Record(uint64, string) error { return nil }
