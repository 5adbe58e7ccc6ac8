// Package state is the agent's memory: what it applied, what is good, what
// hurt this host and is blocked, and which step an apply or rollback was in
// when the agent last wrote. It is one versioned JSON file written
// atomically (temp file, fsync, rename, directory fsync) under an exclusive
// lock, so kill -9 or power loss at any point leaves the old or the new
// state, and two agents (or the CLI and the daemon) never act at once.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"syscall"
	"time"

	"github.com/gofrs/flock"

	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
)

// Format is the state file format this agent writes. Older formats are
// migrated on load; newer ones are refused rather than misread.
const Format = 1

// Phase is where a kernel's patch stands.
type Phase string

// Phases, in the order an apply goes through them.
const (
	PhaseNone        Phase = "none"
	PhaseDownloading Phase = "downloading"
	PhaseInstalling  Phase = "installing" // rpm at work; the module is not in the kernel
	PhaseEnabling    Phase = "enabling"   // the module may be in the kernel
	PhaseSoaking     Phase = "soaking"
	PhaseGood        Phase = "good"
	PhaseRollingBack Phase = "rolling-back"
)

// Sentinel errors.
var (
	ErrLocked    = errors.New("another klp-agent holds the state lock")
	ErrFormat    = errors.New("unsupported state format")
	ErrCorrupt   = errors.New("state file is damaged")
	ErrBadRecord = errors.New("invalid patch record")
	// ErrSymlink is a symlink where the agent creates a file in the state
	// directory: someone planted it, and following it would let them steer
	// root's writes.
	ErrSymlink = errors.New("symlink in the state directory, not followed")
)

// NoFollow names a symlink met by an O_NOFOLLOW open of path (ELOOP) as
// ErrSymlink; other errors pass through.
func NoFollow(path string, err error) error {
	if errors.Is(err, syscall.ELOOP) {
		return fmt.Errorf("%w: %s (remove it)", ErrSymlink, path)
	}
	return err
}

// PatchRecord identifies one livepatch RPM as the manifest pinned it.
type PatchRecord struct {
	Name    string    `json:"name"`
	Level   int       `json:"level"`
	SHA256  string    `json:"sha256"`
	Size    int64     `json:"size"`
	URL     string    `json:"url,omitempty"`
	RPMName string    `json:"rpm_name,omitempty"` // package name, for rpm -e
	Applied time.Time `json:"applied,omitzero"`   // transition finished
	Good    time.Time `json:"good,omitzero"`      // soak passed
	// ModuleSHA256 is the sha256 of the module in the RPM's payload, read
	// when the RPM was verified: the kept copy (Layout.Module) loads only
	// if it still hashes to it.
	ModuleSHA256 string `json:"module_sha256,omitempty"`
}

// ID names a patch in logs.
func (p *PatchRecord) ID() string { return fmt.Sprintf("%s@%d", p.Name, p.Level) }

// Same reports whether two records are the same pinned RPM.
func (p *PatchRecord) Same(q *PatchRecord) bool {
	return p != nil && q != nil && p.Name == q.Name && p.Level == q.Level && p.SHA256 == q.SHA256
}

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,55}$`)
	shaRE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate checks fields that become paths or module names.
func (p *PatchRecord) Validate() error {
	if !nameRE.MatchString(p.Name) || p.Level < 1 || !shaRE.MatchString(p.SHA256) || p.Size <= 0 ||
		(p.ModuleSHA256 != "" && !shaRE.MatchString(p.ModuleSHA256)) {
		return fmt.Errorf("%w: %+v", ErrBadRecord, *p)
	}
	return nil
}

// Blocked is a patch that hurt this host: it is never applied again here.
type Blocked struct {
	PatchRecord
	Cause    Cause     `json:"cause"`
	Reason   string    `json:"reason"`
	Evidence []string  `json:"evidence,omitempty"`
	At       time.Time `json:"at"`
}

// Kernel is the state for one kernel release.
type Kernel struct {
	Phase   Phase         `json:"phase"`
	Current *PatchRecord  `json:"current,omitempty"` // enabled in the kernel (or being soaked)
	Target  *PatchRecord  `json:"target,omitempty"`  // in flight: being applied, or rolled back to
	From    *PatchRecord  `json:"from,omitempty"`    // rolling back from this one
	Cause   Cause         `json:"cause,omitempty"`   // why the in-flight rollback
	Reason  string        `json:"reason,omitempty"`  // and in words
	Good    []PatchRecord `json:"good,omitempty"`    // levels that passed their soak here, oldest first

	SoakUntil time.Time `json:"soak_until,omitempty"`
	Blocked   []Blocked `json:"blocked,omitempty"`
	// Pin is the highest level an operator allows here (klp-agent pin).
	Pin *Pin `json:"pin,omitempty"`
}

// IsBlocked reports whether the pinned patch is blocked on this host.
func (k *Kernel) IsBlocked(name string, level int, sha string) bool {
	return slices.ContainsFunc(k.Blocked, func(b Blocked) bool {
		return b.Name == name && b.Level == level && (b.SHA256 == "" || b.SHA256 == sha)
	})
}

// Block records p as blocked (once).
func (k *Kernel) Block(p PatchRecord, cause Cause, reason string, evidence []string, at time.Time) {
	if k.IsBlocked(p.Name, p.Level, p.SHA256) {
		return
	}
	k.Blocked = append(k.Blocked, Blocked{PatchRecord: p, Cause: cause, Reason: reason, Evidence: evidence, At: at})
	// A blocked patch is no longer a good fallback.
	k.Good = slices.DeleteFunc(k.Good, func(g PatchRecord) bool { return g.Same(&p) })
}

// MarkGood appends p to the good history (once, newest last).
func (k *Kernel) MarkGood(p PatchRecord) {
	k.Good = slices.DeleteFunc(k.Good, func(g PatchRecord) bool { return g.Same(&p) })
	k.Good = append(k.Good, p)
	if len(k.Good) > 8 {
		k.Good = k.Good[len(k.Good)-8:]
	}
}

// PreviousGood returns the newest good patch with a lower level than
// level, which is what a rollback steps back to (nil: back to no patch).
func (k *Kernel) PreviousGood(level int) *PatchRecord {
	for i := len(k.Good) - 1; i >= 0; i-- {
		if k.Good[i].Level < level {
			p := k.Good[i]
			return &p
		}
	}
	return nil
}

// Poll is the last poll's outcome, for status.
type Poll struct {
	At              time.Time `json:"at"`
	OK              bool      `json:"ok"`
	Error           string    `json:"error,omitempty"`
	ManifestVersion uint64    `json:"manifest_version,omitempty"`
	// ManifestSince is when this host first accepted ManifestVersion (kept
	// across polls and restarts while the version stays): a manifest that
	// does not change for longer than the publisher's cadence is a frozen
	// or replayed one.
	ManifestSince time.Time `json:"manifest_since,omitzero"`
	Next          time.Time `json:"next,omitempty"`
	// LastOK is the last poll that delivered a verified manifest (this
	// one when OK; kept across failed polls): how long a host has gone
	// without one is what status --check and its alert judge.
	LastOK time.Time `json:"last_ok,omitzero"`
}

// LastGood is when a poll last succeeded (zero: never); a state written
// before LastOK existed knows it only when the last poll was the good one.
func (p *Poll) LastGood() time.Time {
	switch {
	case p == nil:
		return time.Time{}
	case p.OK:
		return p.At
	}
	return p.LastOK
}

// State is the whole file.
type State struct {
	Format    int                `json:"format"`
	BootID    string             `json:"boot_id,omitempty"`    // boot of the last write
	CleanStop bool               `json:"clean_stop,omitempty"` // the last run stopped cleanly
	Kernels   map[string]*Kernel `json:"kernels"`
	LastPoll  *Poll              `json:"last_poll,omitempty"`
	// Events are the most recent health events (MaxEvents), newest last.
	Events  []Event   `json:"events,omitempty"`
	Updated time.Time `json:"updated"`
	// Hold stops new levels on this host (klp-agent hold); nil: none.
	Hold *Hold `json:"hold,omitempty"`
}

// MaxEvents bounds the health events the state keeps for `status`; the
// journal has them all.
const MaxEvents = 20

// Event is one health event as status shows it.
type Event struct {
	At         time.Time `json:"at"`
	Kind       string    `json:"kind"`
	Source     string    `json:"source"`
	Header     string    `json:"header"`
	Patch      string    `json:"patch,omitempty"` // applied when it came
	Attributed bool      `json:"attributed"`
	RolledBack bool      `json:"rolled_back"`
}

// AddEvent records e, dropping the oldest beyond MaxEvents.
func (s *State) AddEvent(e Event) {
	if len(e.Header) > 300 {
		e.Header = e.Header[:300]
	}
	s.Events = append(s.Events, e)
	if n := len(s.Events) - MaxEvents; n > 0 {
		s.Events = append(s.Events[:0:0], s.Events[n:]...)
	}
}

// Kernel returns (creating) the state for release krel.
func (s *State) Kernel(krel string) *Kernel {
	if s.Kernels == nil {
		s.Kernels = map[string]*Kernel{}
	}
	k, ok := s.Kernels[krel]
	if !ok {
		k = &Kernel{Phase: PhaseNone}
		s.Kernels[krel] = k
	}
	return k
}

// Store reads and writes the state file under dir.
type Store struct {
	Dir  string
	Now  func() time.Time
	lock *flock.Flock
}

// Layout is the state directory's file names.
func (s *Store) Layout() Layout { return Layout{Dir: s.Dir} }

// Path is the state file.
func (s *Store) Path() string { return s.Layout().StateFile() }

// Lock takes the exclusive lock, without waiting: a second agent must fail
// loudly, not queue behind the first.
func (s *Store) Lock() error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	// O_NOFOLLOW: a symlink planted at lock must not make root create or
	// open its target.
	s.lock = flock.New(s.Layout().LockFile(), flock.SetFlag(os.O_CREATE|os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC))
	ok, err := s.lock.TryLock()
	if err != nil {
		return fmt.Errorf("lock %s: %w", s.lock.Path(), NoFollow(s.lock.Path(), err))
	}
	if !ok {
		return fmt.Errorf("%w (%s)", ErrLocked, s.lock.Path())
	}
	return nil
}

// Unlock releases the lock.
func (s *Store) Unlock() error {
	if s.lock == nil {
		return nil
	}
	return s.lock.Unlock()
}

// Load reads the state; a missing file is an empty state.
func (s *Store) Load() (*State, error) {
	b, err := limitfile.Read(s.Path(), 64<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return &State{Format: Format, Kernels: map[string]*Kernel{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		// Never start from scratch silently: that would forget blocks and
		// re-apply a patch that hurt this host. The operator decides.
		return nil, fmt.Errorf("%w: %s: %w (move it aside to start fresh)", ErrCorrupt, s.Path(), err)
	}
	if st.Format != Format {
		return nil, fmt.Errorf("%w: %s has format %d, this agent reads %d", ErrFormat, s.Path(), st.Format, Format)
	}
	if st.Kernels == nil {
		st.Kernels = map[string]*Kernel{}
	}
	for krel, k := range st.Kernels {
		migrate(k)
		for _, p := range []*PatchRecord{k.Current, k.Target, k.From} {
			if p != nil {
				if err := p.Validate(); err != nil {
					return nil, fmt.Errorf("%w: kernel %s: %w", ErrCorrupt, krel, err)
				}
			}
		}
	}
	return &st, nil
}

// migrate fills in what files of earlier versions did not record: the
// cause of an in-flight rollback and of each block, from their text.
func migrate(k *Kernel) {
	if k.Cause == "" {
		k.Cause = legacyCause(k.Reason)
	}
	for i := range k.Blocked {
		if b := &k.Blocked[i]; b.Cause == "" {
			b.Cause = legacyCause(b.Reason)
		}
	}
}

// Save writes the state atomically.
func (s *Store) Save(st *State) error {
	st.Format = Format
	if s.Now != nil {
		st.Updated = s.Now().UTC()
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return atomicfile.WriteFile(s.Path(), append(b, '\n'), 0o600)
}

// RPMPath is where the verified copy of a patch's RPM is kept.
func (s *Store) RPMPath(p *PatchRecord) (string, error) { return s.Layout().RPM(p.SHA256) }
