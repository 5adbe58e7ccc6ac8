// Package klptest is a simulated kernel for fast unit tests of code that
// drives livepatches: it serves the sysfs and procfs files klp reads and
// obeys the kernel's rules (EINVAL when writing the current value, EBUSY
// while another transition runs, the patch directory disappearing after a
// finished disable or replace, module refcounts, the K taint of a loaded
// livepatch module, forced modules that never unload). The real kernel in qemu (e2e/) is the test that counts; this one
// makes every branch reachable in milliseconds.
package klptest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/klp-agent/klp-agent/klp"
)

// Module describes a .ko file the simulated kernel can load.
type Module struct {
	Name      string
	Livepatch bool
	Replace   bool                // atomic replace (.replace = true)
	Funcs     map[string][]string // object -> functions, e.g. "vmlinux": {"cmdline_proc_show"}
	// States are its klp_state id -> version (kernel/livepatch/state.c).
	States map[uint64]int
	// PrePatch, if set, is what its vmlinux pre-patch callback returns.
	PrePatch syscall.Errno
	Unsigned bool // refused when the kernel enforces signatures
}

type patch struct {
	mod        *Module
	enabled    bool
	goal       bool // what the transition set out to reach (enabled); a reversal flips enabled only
	transition bool
	since      time.Time
	forced     bool
	order      int
	freeAt     time.Time // replaced or disabled: still visible until then
	going      bool      // disabled: its attributes read ENODEV until freed
}

// Task is a simulated task. A Blocking one sits in a function the
// transition must switch: like a task asleep in a patched function, it
// stays in the state it had when the transition began, so the transition
// cannot finish until it is released, but its reversal (back to that
// state) finishes at once, as on the real kernel.
type Task struct {
	PID      int
	Comm     string
	Stack    string
	Blocking bool
}

// Kernel is the simulated kernel. It implements klp.FS and klp.Modules.
type Kernel struct {
	mu             sync.Mutex
	Now            func() time.Time
	TransitionTime time.Duration // how long a transition takes when nothing blocks

	files    map[string]*Module // .ko path -> module
	contents map[string]*Module // sha256 of a .ko -> module
	loaded   map[string]int     // module name -> refcnt
	klpMods  map[string]bool    // loaded modules with livepatch=Y: tainted K
	forced   map[string]bool
	patches  map[string]*patch
	order    int
	tasks    map[int]*Task

	Loads, Unloads []string // call log, for assertions
	// LoadedSHA256 is the sha256 of the bytes each Load read through the
	// descriptor it was handed, refused loads included.
	LoadedSHA256 []string

	// SigEnforce refuses unsigned modules (module.sig_enforce=1).
	SigEnforce bool
	// ReplaceAttr shows /sys/kernel/livepatch/<p>/replace (Linux 6.11+).
	ReplaceAttr bool
	log         []string // the kernel's log, in the kernel's words

	persist string // Persist path, "" = memory only
}

// printk logs a kernel line. Called with mu held.
func (k *Kernel) printk(format string, args ...any) {
	k.log = append(k.log, fmt.Sprintf(format, args...))
}

// Log is everything the simulated kernel logged.
func (k *Kernel) Log() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.log...)
}

// Mark implements klp.KernelLog.
func (k *Kernel) Mark() (klp.LogCursor, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return &logCursor{k: k, at: len(k.log)}, nil
}

type logCursor struct {
	k  *Kernel
	at int
}

func (c *logCursor) Since() []string {
	c.k.mu.Lock()
	defer c.k.mu.Unlock()
	out := append([]string(nil), c.k.log[c.at:]...)
	c.at = len(c.k.log)
	return out
}

func (c *logCursor) Close() error { return nil }

// New returns an empty simulated kernel with 20 ms transitions.
func New() *Kernel {
	return &Kernel{
		Now: time.Now, TransitionTime: 20 * time.Millisecond,
		files: map[string]*Module{}, loaded: map[string]int{}, klpMods: map[string]bool{}, forced: map[string]bool{},
		patches: map[string]*patch{}, tasks: map[int]*Task{},
	}
}

// AddFile registers the module a .ko path holds.
func (k *Kernel) AddFile(path string, m Module) {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.saveLocked() // after the change, before the unlock
	k.files[path] = &m
}

// SetTask adds or replaces a simulated task.
func (k *Kernel) SetTask(t Task) {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.saveLocked() // after the change, before the unlock
	k.tasks[t.PID] = &t
}

// settle finishes transitions whose time has come. Called with mu held.
func (k *Kernel) settle() {
	k.reap()
	blocked := false
	for _, t := range k.tasks {
		blocked = blocked || t.Blocking
	}
	now := k.Now()
	for name, p := range k.patches {
		if !p.transition || now.Sub(p.since) < k.TransitionTime || (blocked && p.enabled == p.goal) {
			continue
		}
		k.finish(name, p)
	}
}

// finish completes p's transition as the kernel does.
func (k *Kernel) finish(name string, p *patch) {
	p.transition = false
	if !p.enabled {
		// Unpatched: the patch is freed a moment later (its directory
		// lingers with attributes that read ENODEV, as on the real kernel)
		// and its module reference dropped then, unless it was forced.
		p.going, p.freeAt = true, k.Now().Add(k.TransitionTime)
		return
	}
	if p.mod.Replace {
		// Like the kernel, disable the replaced patches now and free them
		// (sysfs directory, module reference) a moment later.
		for other, op := range k.patches {
			if other != name && op.freeAt.IsZero() {
				op.enabled, op.freeAt = false, k.Now().Add(k.TransitionTime)
			}
		}
	}
}

// reap frees replaced patches whose time has come. Called with mu held.
func (k *Kernel) reap() {
	now := k.Now()
	for name, p := range k.patches {
		if !p.freeAt.IsZero() && !now.Before(p.freeAt) {
			delete(k.patches, name)
			if !p.forced {
				k.loaded[name] = 0
			}
		}
	}
}

func (k *Kernel) transitioning() string {
	for name, p := range k.patches {
		if p.transition {
			return name
		}
	}
	return ""
}

// Load implements klp.Modules. The module is told by its path (AddFile)
// or else by the bytes read through the descriptor it was handed, as the
// kernel sees only those.
func (k *Kernel) Load(mod *klp.Module) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.saveLocked() // after the change, before the unlock
	k.settle()
	b, err := io.ReadAll(mod.Content())
	if err != nil {
		return fmt.Errorf("load %s: %w", mod.Path(), err)
	}
	k.LoadedSHA256 = append(k.LoadedSHA256, contentKey(b))
	return k.loadLocked(mod.Path(), b)
}

// LoadPath loads the module registered at file (AddFile), or the one its
// bytes are, as a loader other than the agent would (modprobe of a
// driver, another tool's livepatch): no checks.
func (k *Kernel) LoadPath(file string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.saveLocked() // after the change, before the unlock
	k.settle()
	b, _ := os.ReadFile(file)
	return k.loadLocked(file, b)
}

// loadLocked is finit_module of file's bytes b. Called with mu held.
func (k *Kernel) loadLocked(file string, b []byte) error {
	m, ok := k.files[file]
	if !ok && b != nil {
		m, ok = k.byBytes(b)
	}
	if !ok {
		return &fs.PathError{Op: "open", Path: file, Err: fs.ErrNotExist}
	}
	if _, ok := k.loaded[m.Name]; ok {
		return fmt.Errorf("load %s: %w", file, syscall.EEXIST)
	}
	if k.SigEnforce && m.Unsigned {
		k.printk("Loading of unsigned module is rejected")
		return fmt.Errorf("load %s: %w", file, syscall.EKEYREJECTED)
	}
	if m.Livepatch && k.transitioning() != "" {
		return fmt.Errorf("load %s: %w", file, syscall.EBUSY)
	}
	if m.Livepatch && !k.compatible(m) {
		k.printk("livepatch: Livepatch patch (%s) is not compatible with the already installed livepatches.", m.Name)
		return fmt.Errorf("load %s: %w", file, syscall.EINVAL)
	}
	if m.Livepatch && m.PrePatch != 0 {
		k.printk("livepatch: enabling patch '%s'", m.Name)
		k.printk("livepatch: pre-patch callback failed for object 'vmlinux'")
		k.printk("livepatch: failed to enable patch '%s'", m.Name)
		k.printk("livepatch: '%s': unpatching complete", m.Name)
		return fmt.Errorf("load %s: %w", file, m.PrePatch)
	}
	k.Loads = append(k.Loads, m.Name)
	k.loaded[m.Name] = 0
	if m.Livepatch {
		k.klpMods[m.Name] = true
		k.order++
		k.patches[m.Name] = &patch{mod: m, enabled: true, goal: true, transition: true, since: k.Now(), order: k.order}
		k.loaded[m.Name] = 1
	}
	return nil
}

// AddModule registers the module a .ko's bytes are, wherever the file is
// put: a copy loads as that module, as the kernel sees only content.
func (k *Kernel) AddModule(ko []byte, m Module) {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.saveLocked()
	if k.contents == nil {
		k.contents = map[string]*Module{}
	}
	k.contents[contentKey(ko)] = &m
}

func contentKey(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// byBytes finds the module a file's bytes are (AddModule, or an
// added file's current content). Called with mu held.
func (k *Kernel) byBytes(b []byte) (*Module, bool) {
	if m, ok := k.contents[contentKey(b)]; ok {
		return m, true
	}
	for p, m := range k.files {
		if c, err := os.ReadFile(p); err == nil && bytes.Equal(c, b) {
			return m, true
		}
	}
	return nil, false
}

// compatible is klp_is_patch_compatible: every state of every installed
// patch must be in m at no lower a version, or m must not replace.
func (k *Kernel) compatible(m *Module) bool {
	for _, p := range k.patches {
		if p.going {
			continue
		}
		for id, v := range p.mod.States {
			nv, ok := m.States[id]
			if (!ok && m.Replace) || (ok && nv < v) {
				return false
			}
		}
	}
	return true
}

// Unload implements klp.Modules.
func (k *Kernel) Unload(name string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.saveLocked() // after the change, before the unlock
	k.settle()
	ref, ok := k.loaded[name]
	if !ok {
		return fmt.Errorf("unload %s: %w", name, syscall.ENOENT)
	}
	if ref > 0 || k.forced[name] {
		return fmt.Errorf("unload %s: %w", name, syscall.EWOULDBLOCK)
	}
	k.Unloads = append(k.Unloads, name)
	delete(k.loaded, name)
	delete(k.klpMods, name)
	return nil
}

// SectionAddr is where the simulated kernel says a loaded module's
// section is (/sys/module/<module>/sections/<section>): a stable address
// of the module-mapping range, distinct per module and section.
func SectionAddr(module, section string) uint64 {
	h := fnv.New32a()
	h.Write([]byte(module))
	base := 0xffffffffc0000000 + uint64(h.Sum32()%0x3000)<<12
	h.Write([]byte{0})
	h.Write([]byte(section))
	return base + uint64(h.Sum32()%0x100)<<4
}

// Loaded lists loaded module names.
func (k *Kernel) Loaded() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.settle()
	var out []string
	for n := range k.loaded {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Patched reports which patch's code is live for a function: the newest
// enabled, non-transitioning patch that has it (the kernel's func stack).
func (k *Kernel) Patched(fn string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.settle()
	best, bestOrder := "", -1
	for name, p := range k.patches {
		if !p.enabled || p.order < bestOrder {
			continue
		}
		for _, fns := range p.mod.Funcs {
			for _, f := range fns {
				if f == fn {
					best, bestOrder = name, p.order
				}
			}
		}
	}
	return best
}

var errNotExist = fs.ErrNotExist

// ReadFile implements klp.FS.
func (k *Kernel) ReadFile(name string) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.saveLocked() // after the change, before the unlock
	k.settle()
	parts := strings.Split(path.Clean(name), "/")
	b01 := func(v bool) []byte {
		if v {
			return []byte("1\n")
		}
		return []byte("0\n")
	}
	switch {
	case len(parts) == 5 && parts[0] == "sys" && parts[1] == "kernel" && parts[2] == "livepatch":
		p, ok := k.patches[parts[3]]
		if !ok {
			break
		}
		if p.going {
			return nil, &fs.PathError{Op: "read", Path: name, Err: syscall.ENODEV}
		}
		switch parts[4] {
		case "enabled":
			return b01(p.enabled), nil
		case "transition":
			return b01(p.transition), nil
		case "replace":
			if k.ReplaceAttr {
				return b01(p.mod.Replace), nil
			}
		case "force":
			return nil, &fs.PathError{Op: "read", Path: name, Err: syscall.EACCES}
		}
	case len(parts) == 6 && parts[2] == "livepatch" && parts[5] == "patched":
		if p, ok := k.patches[parts[3]]; ok {
			if _, ok := p.mod.Funcs[parts[4]]; ok {
				return b01(p.enabled && !p.transition), nil
			}
		}
	case len(parts) == 4 && parts[0] == "sys" && parts[1] == "module" && parts[3] == "refcnt":
		if ref, ok := k.loaded[parts[2]]; ok {
			return []byte(strconv.Itoa(ref) + "\n"), nil
		}
	case len(parts) == 4 && parts[0] == "sys" && parts[1] == "module" && parts[3] == "taint":
		// The kernel taints a module with livepatch=Y in its modinfo 'K'
		// when it loads it (check_modinfo_livepatch).
		if _, ok := k.loaded[parts[2]]; ok {
			if k.klpMods[parts[2]] {
				return []byte("K\n"), nil
			}
			return []byte("\n"), nil
		}
	case len(parts) == 5 && parts[0] == "sys" && parts[1] == "module" && parts[3] == "sections":
		// Every section of a loaded module at a fixed place of its own.
		if _, ok := k.loaded[parts[2]]; ok {
			return []byte(fmt.Sprintf("0x%x\n", SectionAddr(parts[2], parts[4]))), nil
		}
	case len(parts) == 5 && parts[0] == "proc" && parts[2] == "task":
		t, ok := k.tasks[atoi(parts[1])]
		if !ok || atoi(parts[3]) != t.PID {
			break
		}
		switch parts[4] {
		case "comm":
			return []byte(t.Comm + "\n"), nil
		case "stack":
			return []byte(t.Stack), nil
		case "patch_state":
			return []byte(k.patchState(t) + "\n"), nil
		}
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: errNotExist}
}

// patchState: -1 outside a transition; blocking tasks stay in the old
// state, the others have switched already.
func (k *Kernel) patchState(t *Task) string {
	name := k.transitioning()
	if name == "" {
		return "-1"
	}
	p := k.patches[name]
	state := p.enabled
	if t.Blocking {
		state = !p.goal
	}
	if state {
		return "1"
	}
	return "0"
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}

// WriteFile implements klp.FS with the kernel's rules for enabled and force.
func (k *Kernel) WriteFile(name string, data []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.saveLocked() // after the change, before the unlock
	k.settle()
	parts := strings.Split(path.Clean(name), "/")
	perr := func(err error) error { return &fs.PathError{Op: "write", Path: name, Err: err} }
	if len(parts) != 5 || parts[2] != "livepatch" {
		return perr(syscall.EACCES)
	}
	p, ok := k.patches[parts[3]]
	if !ok {
		return perr(errNotExist)
	}
	v := strings.TrimSpace(string(data))
	switch parts[4] {
	case "enabled":
		if v != "0" && v != "1" {
			return perr(syscall.EINVAL)
		}
		want := v == "1"
		if want == p.enabled {
			return perr(syscall.EINVAL)
		}
		if p.transition {
			// Writing the opposite value reverses this patch's transition.
			p.enabled, p.since = want, k.Now()
			return nil
		}
		if other := k.transitioning(); other != "" {
			return perr(syscall.EBUSY)
		}
		if want {
			return perr(syscall.EINVAL) // a disabled patch is freed, never re-enabled
		}
		p.enabled, p.goal, p.transition, p.since = false, false, true, k.Now()
		return nil
	case "force":
		if v != "1" || !p.transition {
			return perr(syscall.EINVAL)
		}
		p.forced = true
		k.forced[parts[3]] = true
		for _, t := range k.tasks {
			t.Blocking = false
		}
		k.finish(parts[3], p)
		return nil
	}
	return perr(syscall.EACCES)
}

// ReadDir implements klp.FS.
func (k *Kernel) ReadDir(name string) ([]fs.DirEntry, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	defer k.saveLocked() // after the change, before the unlock
	k.settle()
	parts := strings.Split(path.Clean(name), "/")
	var ents []fs.DirEntry
	dir := func(n string) { ents = append(ents, entry{n, true}) }
	file := func(n string) { ents = append(ents, entry{n, false}) }
	switch {
	case name == "sys/kernel/livepatch":
		for n := range k.patches {
			dir(n)
		}
	case len(parts) == 4 && parts[2] == "livepatch":
		p, ok := k.patches[parts[3]]
		if !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: errNotExist}
		}
		file("enabled")
		file("transition")
		file("force")
		if k.ReplaceAttr {
			file("replace")
		}
		for obj := range p.mod.Funcs {
			dir(obj)
		}
	case len(parts) == 5 && parts[2] == "livepatch":
		p, ok := k.patches[parts[3]]
		if !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: errNotExist}
		}
		fns, ok := p.mod.Funcs[parts[4]]
		if !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: errNotExist}
		}
		file("patched")
		for _, f := range fns {
			dir(f + ",1")
		}
	case len(parts) == 3 && parts[0] == "sys" && parts[1] == "module":
		if _, ok := k.loaded[parts[2]]; !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: errNotExist}
		}
		file("refcnt")
		file("taint")
	case name == "proc":
		for pid := range k.tasks {
			dir(strconv.Itoa(pid))
		}
	case len(parts) == 3 && parts[0] == "proc" && parts[2] == "task":
		if _, ok := k.tasks[atoi(parts[1])]; !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: errNotExist}
		}
		dir(parts[1])
	default:
		return nil, &fs.PathError{Op: "open", Path: name, Err: errNotExist}
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	return ents, nil
}

type entry struct {
	name string
	dir  bool
}

func (e entry) Name() string { return e.name }
func (e entry) IsDir() bool  { return e.dir }
func (e entry) Type() fs.FileMode {
	if e.dir {
		return fs.ModeDir
	}
	return 0
}
func (e entry) Info() (fs.FileInfo, error) { return nil, fs.ErrInvalid }

// snapshot is the kernel's state on disk, so that a simulated kernel can
// outlive the agent process that drives it (kill -9 tests: the agent dies,
// the kernel does not).
type snapshot struct {
	Contents map[string]*Module
	Files    map[string]*Module
	Loaded   map[string]int
	KLPMods  map[string]bool
	Forced   map[string]bool
	Patches  map[string]*patchSnap
	Order    int
	Tasks    map[int]*Task
	Loads    []string
	Unloads  []string
}

type patchSnap struct {
	Mod                       *Module
	Enabled, Goal, Transition bool
	Since, FreeAt             time.Time
	Forced, Going             bool
	Order                     int
}

// Persist makes every operation save the kernel's state to path.
func (k *Kernel) Persist(path string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.persist = path
	return k.saveLocked()
}

func (k *Kernel) saveLocked() error {
	if k.persist == "" {
		return nil
	}
	s := snapshot{Contents: k.contents, Files: k.files, Loaded: k.loaded, KLPMods: k.klpMods, Forced: k.forced, Patches: map[string]*patchSnap{},
		Order: k.order, Tasks: k.tasks, Loads: k.Loads, Unloads: k.Unloads}
	for n, p := range k.patches {
		s.Patches[n] = &patchSnap{p.mod, p.enabled, p.goal, p.transition, p.since, p.freeAt, p.forced, p.going, p.order}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := k.persist + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, k.persist)
}

// Open restores a kernel saved by Persist and keeps persisting to path.
func Open(path string) (*Kernel, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("simulated kernel %s: %w", path, err)
	}
	k := New()
	k.files, k.loaded, k.forced, k.order, k.tasks, k.contents = s.Files, s.Loaded, s.Forced, s.Order, s.Tasks, s.Contents
	k.Loads, k.Unloads = s.Loads, s.Unloads
	if s.KLPMods != nil {
		k.klpMods = s.KLPMods
	}
	for n, p := range s.Patches {
		k.patches[n] = &patch{mod: p.Mod, enabled: p.Enabled, goal: p.Goal, transition: p.Transition, since: p.Since,
			freeAt: p.FreeAt, forced: p.Forced, going: p.Going, order: p.Order}
	}
	if k.loaded == nil {
		k.loaded = map[string]int{}
	}
	if k.files == nil {
		k.files = map[string]*Module{}
	}
	if k.forced == nil {
		k.forced = map[string]bool{}
	}
	if k.tasks == nil {
		k.tasks = map[int]*Task{}
	}
	k.persist = path
	return k, nil
}
