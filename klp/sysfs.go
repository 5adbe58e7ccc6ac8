package klp

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const livepatchDir = "sys/kernel/livepatch"

// Sentinel errors callers branch on.
var (
	ErrNoLivepatch  = errors.New("kernel has no livepatch support (/sys/kernel/livepatch missing)")
	ErrNotFound     = errors.New("livepatch not found")
	ErrBusy         = errors.New("another livepatch transition is in progress")
	ErrAlreadyState = errors.New("livepatch already in the requested state")
	ErrStalled      = errors.New("livepatch transition stalled")
	// ErrNotLivepatchModule is a loaded module the kernel does not say is
	// a livepatch: the agent never unloads it.
	ErrNotLivepatchModule = errors.New("not a livepatch module")
)

// Livepatch is one livepatch as /sys/kernel/livepatch shows it. Attributes a
// kernel does not have are nil (6.1 has no replace or stack_order).
type Livepatch struct {
	Name       string   `json:"name"`
	Enabled    bool     `json:"enabled"`
	Transition bool     `json:"transition"`
	Replace    *bool    `json:"replace,omitempty"`
	StackOrder *int     `json:"stack_order,omitempty"`
	Objects    []Object `json:"objects,omitempty"`
}

// Object is a patched object: "vmlinux" or a module name.
type Object struct {
	Name      string   `json:"name"`
	Patched   bool     `json:"patched"`
	Functions []string `json:"functions,omitempty"` // "func,sympos"
}

// Task is a task that keeps a transition from finishing.
type Task struct {
	PID, TID int
	Comm     string
	Stack    string // /proc/<tid>/stack, if readable
}

func (t Task) String() string {
	s := fmt.Sprintf("%s (pid %d tid %d)", t.Comm, t.PID, t.TID)
	if t.Stack != "" {
		// The first frame is usually the sleeping function; keep it short.
		first := strings.SplitN(strings.TrimSpace(t.Stack), "\n", 2)[0]
		s += " at " + strings.TrimSpace(first)
	}
	return s
}

// StallError names the tasks that blocked a transition.
type StallError struct {
	Patch    string
	Waited   time.Duration
	Blockers []Task
}

func (e *StallError) Error() string {
	names := make([]string, len(e.Blockers))
	for i, t := range e.Blockers {
		names[i] = t.String()
	}
	if len(names) == 0 {
		names = []string{"no blocking task found"}
	}
	return fmt.Sprintf("%s: transition stalled: not finished after %s; blocked by %s", e.Patch, e.Waited.Round(time.Millisecond), strings.Join(names, "; "))
}

// Unwrap makes errors.Is(err, ErrStalled) work.
func (e *StallError) Unwrap() error { return ErrStalled }

// Sysfs drives /sys/kernel/livepatch.
type Sysfs struct {
	FS   FS
	Poll time.Duration // transition poll period; 0 = 10ms
}

func (s *Sysfs) poll() time.Duration {
	if s.Poll > 0 {
		return s.Poll
	}
	return 10 * time.Millisecond
}

// Supported reports ErrNoLivepatch when the kernel lacks CONFIG_LIVEPATCH.
func (s *Sysfs) Supported() error {
	if _, err := s.FS.ReadDir(livepatchDir); err != nil {
		if notExist(err) {
			return ErrNoLivepatch
		}
		return fmt.Errorf("livepatch sysfs: %w", err)
	}
	return nil
}

// List returns every livepatch the kernel has, loaded by us or not.
func (s *Sysfs) List() ([]Livepatch, error) {
	ents, err := s.FS.ReadDir(livepatchDir)
	if err != nil {
		if notExist(err) {
			return nil, ErrNoLivepatch
		}
		return nil, fmt.Errorf("list livepatches: %w", err)
	}
	var out []Livepatch
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		p, err := s.Get(e.Name())
		if errors.Is(err, ErrNotFound) {
			continue // freed while we looked
		}
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Get reads one livepatch's attributes.
func (s *Sysfs) Get(name string) (Livepatch, error) {
	dir := path.Join(livepatchDir, name)
	p := Livepatch{Name: name}
	var err error
	if p.Enabled, err = readBool(s.FS, path.Join(dir, "enabled")); err != nil {
		if notExist(err) {
			return p, fmt.Errorf("%s: %w", name, ErrNotFound)
		}
		return p, fmt.Errorf("%s: %w", name, err)
	}
	if p.Transition, err = readBool(s.FS, path.Join(dir, "transition")); err != nil {
		if notExist(err) {
			return p, fmt.Errorf("%s: %w", name, ErrNotFound)
		}
		return p, fmt.Errorf("%s: %w", name, err)
	}
	if r, err := readBool(s.FS, path.Join(dir, "replace")); err == nil {
		p.Replace = &r
	}
	if v, err := readTrim(s.FS, path.Join(dir, "stack_order")); err == nil {
		if n, err := strconv.Atoi(v); err == nil {
			p.StackOrder = &n
		}
	}
	ents, err := s.FS.ReadDir(dir)
	if err != nil {
		if notExist(err) {
			return p, fmt.Errorf("%s: %w", name, ErrNotFound)
		}
		return p, fmt.Errorf("%s: %w", name, err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		o := Object{Name: e.Name()}
		o.Patched, _ = readBool(s.FS, path.Join(dir, e.Name(), "patched"))
		if fents, err := s.FS.ReadDir(path.Join(dir, e.Name())); err == nil {
			for _, f := range fents {
				if f.IsDir() {
					o.Functions = append(o.Functions, f.Name())
				}
			}
		}
		p.Objects = append(p.Objects, o)
	}
	return p, nil
}

// SetEnabled writes the enabled attribute. Writing 0 disables a patch (or
// reverses its running transition); writing 1 reverses a running disable.
func (s *Sysfs) SetEnabled(name string, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	err := s.FS.WriteFile(path.Join(livepatchDir, name, "enabled"), []byte(v))
	switch {
	case err == nil:
		return nil
	case notExist(err):
		return fmt.Errorf("set %s enabled=%s: %w", name, v, ErrNotFound)
	case errors.Is(err, syscall.EBUSY):
		return fmt.Errorf("set %s enabled=%s: %w", name, v, ErrBusy)
	case errors.Is(err, syscall.EINVAL):
		return fmt.Errorf("set %s enabled=%s: %w", name, v, ErrAlreadyState)
	}
	return fmt.Errorf("set %s enabled=%s: %w", name, v, err)
}

// Force writes the force attribute: the kernel then marks every task as
// switched. Forced modules can never be unloaded, so only an operator's
// explicit configuration may lead here.
func (s *Sysfs) Force(name string) error {
	if err := s.FS.WriteFile(path.Join(livepatchDir, name, "force"), []byte("1")); err != nil {
		return fmt.Errorf("force %s: %w", name, err)
	}
	return nil
}

// WaitTransition polls until name's transition is over (or the patch is
// gone, which is how a finished disable or replace ends). On timeout it
// returns a *StallError naming the blocking tasks.
func (s *Sysfs) WaitTransition(ctx context.Context, name string, timeout time.Duration) error {
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(s.poll())
	defer tick.Stop()
	for {
		p, err := s.Get(name)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if !p.Transition {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s transition: %w", name, ctx.Err())
		case <-deadline.C:
			blockers, _ := s.Blockers()
			return &StallError{Patch: name, Waited: time.Since(start), Blockers: blockers}
		case <-tick.C:
		}
	}
}

// Blockers lists the tasks keeping the running transition from finishing.
// patch_state is -1 outside a transition, else the task's current state
// (0 unpatched, 1 patched); the target is the transitioning patch's enabled
// value, so a blocker is any task in the other state.
func (s *Sysfs) Blockers() ([]Task, error) {
	target := -1
	if ps, err := s.List(); err == nil {
		for _, p := range ps {
			if p.Transition {
				target = 0
				if p.Enabled {
					target = 1
				}
			}
		}
	}
	if target < 0 {
		return nil, nil
	}
	procs, err := s.FS.ReadDir("proc")
	if err != nil {
		return nil, fmt.Errorf("scan tasks: %w", err)
	}
	var out []Task
	for _, pe := range procs {
		pid, err := strconv.Atoi(pe.Name())
		if err != nil {
			continue
		}
		tasks, err := s.FS.ReadDir(path.Join("proc", pe.Name(), "task"))
		if err != nil {
			continue // exited
		}
		for _, te := range tasks {
			tid, err := strconv.Atoi(te.Name())
			if err != nil {
				continue
			}
			dir := path.Join("proc", pe.Name(), "task", te.Name())
			st, err := readTrim(s.FS, path.Join(dir, "patch_state"))
			if err != nil {
				continue
			}
			if n, err := strconv.Atoi(st); err != nil || n == -1 || n == target {
				continue
			}
			t := Task{PID: pid, TID: tid}
			t.Comm, _ = readTrim(s.FS, path.Join(dir, "comm"))
			if b, err := s.FS.ReadFile(path.Join(dir, "stack")); err == nil {
				t.Stack = string(b)
			}
			out = append(out, t)
		}
	}
	return out, nil
}

// Refcnt returns /sys/module/<name>/refcnt, or ErrNotFound when the module
// is not loaded.
func (s *Sysfs) Refcnt(module string) (int, error) {
	v, err := readTrim(s.FS, path.Join("sys/module", module, "refcnt"))
	if err != nil {
		if notExist(err) {
			return 0, fmt.Errorf("module %s: %w", module, ErrNotFound)
		}
		return 0, fmt.Errorf("module %s: %w", module, err)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("module %s refcnt %q: %w", module, v, err)
	}
	return n, nil
}

// IsLivepatchModule reports whether the kernel itself says module is a
// livepatch: it lists /sys/kernel/livepatch/<module> (a patch is named
// after its module), or the module's own taint flags
// (/sys/module/<module>/taint) carry K, which the kernel sets when it
// loads a module whose modinfo says livepatch=Y (Linux 4.9+) and keeps
// until the module is gone, so a disabled patch whose directory was freed
// is still known. Nothing else is proof: a name is only a name.
func (s *Sysfs) IsLivepatchModule(module string) (bool, error) {
	if _, err := s.FS.ReadDir(path.Join(livepatchDir, module)); err == nil {
		return true, nil
	}
	t, err := readTrim(s.FS, path.Join("sys/module", module, "taint"))
	if err != nil {
		if notExist(err) {
			return false, nil
		}
		return false, fmt.Errorf("module %s taint: %w", module, err)
	}
	return strings.ContainsRune(t, 'K'), nil
}

// ModuleLoaded reports whether /sys/module/<name> exists.
func (s *Sysfs) ModuleLoaded(module string) bool {
	_, err := s.FS.ReadDir(path.Join("sys/module", module))
	return err == nil
}

// TextRange is [Start, End) of a loaded module's code.
type TextRange struct {
	Section    string
	Start, End uint64
}

// ModuleText says where a loaded module's code is: every allocated,
// executable section of its .ko (ko, the file that was loaded), except
// .init ones (freed after loading), at the address
// /sys/module/<module>/sections/<section> gives, for its size in the
// file. A raw address in a kernel report is the module's when it falls
// inside one of them.
func (s *Sysfs) ModuleText(module string, ko []byte) ([]TextRange, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("module %s text: %w", module, err)
	}
	defer f.Close()
	var out []TextRange
	for _, sec := range f.Sections {
		if sec.Flags&(elf.SHF_ALLOC|elf.SHF_EXECINSTR) != elf.SHF_ALLOC|elf.SHF_EXECINSTR || sec.Size == 0 ||
			strings.HasPrefix(sec.Name, ".init") || strings.Contains(sec.Name, "/") {
			continue
		}
		v, err := readTrim(s.FS, path.Join("sys/module", module, "sections", sec.Name))
		if err != nil {
			if notExist(err) {
				continue // not kept in memory
			}
			return nil, fmt.Errorf("module %s section %s: %w", module, sec.Name, err)
		}
		addr, err := strconv.ParseUint(strings.TrimPrefix(v, "0x"), 16, 64)
		if err != nil || addr == 0 {
			// 0: the addresses are hidden (not root, or kptr_restrict).
			return nil, fmt.Errorf("module %s section %s: address %q", module, sec.Name, v)
		}
		out = append(out, TextRange{Section: sec.Name, Start: addr, End: addr + sec.Size})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("module %s: no loaded code sections", module)
	}
	return out, nil
}
