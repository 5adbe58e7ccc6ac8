package klp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"time"
)

// Options tune the controller; zero values take the defaults.
type Options struct {
	// TransitionTimeout bounds a transition before it counts as stalled
	// (default 60 s; kpatch waits 15 s, signals, then 60 s more).
	TransitionTimeout time.Duration
	// ForceOnStall forces a stalled transition instead of reversing it.
	// Forced modules can never be unloaded; only an operator may set this.
	ForceOnStall bool
	// UnloadTimeout bounds the wait for a module's refcount to reach 0.
	UnloadTimeout time.Duration
	LoadBackoff   Backoff
}

func (o Options) withDefaults() Options {
	if o.TransitionTimeout <= 0 {
		o.TransitionTimeout = 60 * time.Second
	}
	if o.UnloadTimeout <= 0 {
		o.UnloadTimeout = 15 * time.Second
	}
	if o.LoadBackoff.Attempts == 0 {
		o.LoadBackoff = DefaultLoadBackoff
	}
	return o
}

// Controller enables and disables livepatch modules.
type Controller struct {
	Sysfs   *Sysfs
	Modules Modules
	Opts    Options
	// Log gives a refused load the kernel's own words; nil: errno only.
	Log KernelLog
	// Hook, if set, is called once the module is in the kernel ("loaded")
	// and, if its transition is still running then, "in-transition": the
	// real-kernel power-cut tests cut the power there.
	Hook func(step string)
}

func (c *Controller) hook(step string) {
	if c.Hook != nil {
		c.Hook(step)
	}
}

// EnableOptions say what an enable must do besides loading.
type EnableOptions struct {
	// Replaces is the livepatch (module name) the new one must replace:
	// the agent's current level. A patch that leaves it enabled is not
	// cumulative and is backed out.
	Replaces string
}

// Timing breaks down one enable.
type Timing struct {
	Load       time.Duration // finit_module, EBUSY retries included
	Transition time.Duration // loaded -> transition 0
	BusyRetry  int           // EBUSY answers while another transition ran
}

// Result describes a finished enable.
type Result struct {
	Timing
	Replaced []string // livepatches the new one atomically replaced (now unloaded)
	Already  bool     // it was already enabled; nothing was done
	Forced   bool
}

// Enable loads the livepatch module file ko, checked against its verified
// sha256 (module name name, read from the module itself by the caller),
// and waits until every task runs the new code. A stalled transition is reversed and the module unloaded, so the
// kernel is left as it was, and a *StallError names the blocking tasks. A
// load the kernel refuses is a *RefusedError with its reason and log
// lines; so is a patch that is not cumulative (sysfs says replace=0, or
// the patch eo.Replaces is still enabled after the transition), which is
// backed out. Patches it atomically replaces are unloaded once their
// refcount drops.
func (c *Controller) Enable(ctx context.Context, ko ModuleFile, name string, eo EnableOptions) (Result, error) {
	o := c.Opts.withDefaults()
	var res Result
	if p, err := c.Sysfs.Get(name); err == nil && p.Enabled && !p.Transition {
		res.Already = true
		return res, nil
	}
	before, err := c.Sysfs.List()
	if err != nil && !errors.Is(err, ErrNoLivepatch) {
		return res, fmt.Errorf("enable %s: %w", name, err)
	}
	var cur LogCursor
	if c.Log != nil {
		if cur, err = c.Log.Mark(); err == nil {
			defer cur.Close()
		}
	}
	start := time.Now()
	res.BusyRetry, err = LoadRetry(ctx, c.Modules, ko, o.LoadBackoff)
	res.Load = time.Since(start)
	var pathErr *fs.PathError
	// The kernel's answers become a RefusedError; a file refused before
	// loading (missing, unsafe, tampered) is not the kernel's.
	if err != nil && !errors.Is(err, ErrModuleLoaded) && !errors.Is(err, ErrBusy) && ctx.Err() == nil && !errors.As(err, &pathErr) &&
		!errors.Is(err, ErrModuleTampered) && !errors.Is(err, ErrModuleUnsafe) {
		var lines []string
		if cur != nil {
			lines = cur.Since()
		}
		return res, fmt.Errorf("enable %s: %w", name, refusal(name, err, lines))
	}
	if err != nil {
		return res, fmt.Errorf("enable %s: %w", name, err)
	}
	p, err := c.Sysfs.Get(name)
	if err != nil {
		// Loaded but no livepatch of that name: a wrong module name or not a
		// livepatch. Take it out again rather than leave an unknown module,
		// if the kernel says a module of that name is a livepatch's; a name
		// that is another module's (a driver's) is left alone.
		if uerr := c.unload(ctx, name, o); uerr != nil {
			return res, fmt.Errorf("enable %s: module loaded but %w; %w", name, err, uerr)
		}
		return res, fmt.Errorf("enable %s: module loaded but %w", name, err)
	}
	c.hook("loaded")
	if p.Transition {
		c.hook("in-transition")
	}
	if p.Replace != nil && !*p.Replace {
		// The kernel says so (6.11+): it would stack, not replace.
		if berr := c.backOut(ctx, name, o); berr != nil {
			return res, fmt.Errorf("enable %s: %w; backing it out failed: %w", name, notCumulative(name, "sysfs replace=0"), berr)
		}
		return res, fmt.Errorf("enable %s: %w", name, notCumulative(name, "sysfs replace=0; backed out and unloaded"))
	}
	tstart := time.Now()
	err = c.Sysfs.WaitTransition(ctx, name, o.TransitionTimeout)
	res.Transition = time.Since(tstart)
	var stall *StallError
	switch {
	case errors.As(err, &stall) && o.ForceOnStall:
		if ferr := c.Sysfs.Force(name); ferr != nil {
			return res, fmt.Errorf("enable %s: %w; force failed: %w", name, err, ferr)
		}
		res.Forced = true
	case errors.As(err, &stall):
		if rerr := c.reverse(ctx, name, true, o); rerr != nil {
			return res, fmt.Errorf("enable %s: %w; reversing failed: %w", name, err, rerr)
		}
		c.unload(ctx, name, o)
		return res, fmt.Errorf("enable %s: %w (reversed and unloaded)", name, err)
	case err != nil:
		return res, fmt.Errorf("enable %s: %w", name, err)
	}
	if eo.Replaces != "" && eo.Replaces != name {
		// Older kernels have no replace attribute: the previous level
		// still enabled after the transition says it all.
		if q, err := c.Sysfs.Get(eo.Replaces); err == nil && q.Enabled {
			why := fmt.Sprintf("%s is still enabled after %s's transition", eo.Replaces, name)
			if berr := c.backOut(ctx, name, o); berr != nil {
				return res, fmt.Errorf("enable %s: %w; backing it out failed: %w", name, notCumulative(name, why), berr)
			}
			return res, fmt.Errorf("enable %s: %w", name, notCumulative(name, why+"; backed out and unloaded"))
		}
	}
	// A patch listed before that is now gone or disabled was replaced
	// atomically. The kernel frees replaced patches asynchronously, so a
	// replaced one may still show (enabled=0) for a moment; unload waits for
	// its refcount to drop.
	for _, p := range before {
		if p.Name == name {
			continue
		}
		q, err := c.Sysfs.Get(p.Name)
		if err == nil && q.Enabled {
			continue // not replaced (the new patch has replace=false)
		}
		if err != nil && !errors.Is(err, ErrNotFound) {
			return res, fmt.Errorf("enable %s: %w", name, err)
		}
		res.Replaced = append(res.Replaced, p.Name)
		if err := c.unload(ctx, p.Name, o); err != nil {
			return res, fmt.Errorf("enable %s: replaced %s but could not unload it: %w", name, p.Name, err)
		}
	}
	return res, nil
}

// backOut takes a patch that must not stay out of the kernel: a
// transition still running is reversed, a finished one undone by a
// disable, and the module unloaded.
func (c *Controller) backOut(ctx context.Context, name string, o Options) error {
	p, err := c.Sysfs.Get(name)
	switch {
	case errors.Is(err, ErrNotFound):
		return c.unload(ctx, name, o)
	case err != nil:
		return err
	case p.Transition && p.Enabled:
		if err := c.reverse(ctx, name, true, o); err != nil {
			return err
		}
		return c.unload(ctx, name, o)
	}
	return c.Disable(ctx, name)
}

// reverse flips a stalled transition back (writing the opposite value is
// how the kernel reverses it) and waits for the reversal.
func (c *Controller) reverse(ctx context.Context, name string, enabling bool, o Options) error {
	if err := c.Sysfs.SetEnabled(name, !enabling); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	return c.Sysfs.WaitTransition(ctx, name, o.TransitionTimeout)
}

// Disable unpatches name and unloads its module. While another patch
// transitions the kernel answers EBUSY; that is retried with the load
// backoff. A stalled disable is reversed (the patch stays enabled). A name
// with neither a livepatch nor a module is ErrNotFound; a loaded module
// the kernel does not say is a livepatch is ErrNotLivepatchModule and
// stays loaded.
func (c *Controller) Disable(ctx context.Context, name string) error {
	o := c.Opts.withDefaults()
	wait := o.LoadBackoff.First
	for attempt := 1; ; attempt++ {
		err := c.Sysfs.SetEnabled(name, false)
		if err == nil {
			break
		}
		if errors.Is(err, ErrNotFound) {
			if !c.Sysfs.ModuleLoaded(name) {
				return fmt.Errorf("disable %s: %w: no /sys/kernel/livepatch/%s and no module of that name loaded", name, ErrNotFound, name)
			}
			// Already disabled and freed: unload the module, which unload
			// does only if the kernel says it is a livepatch's.
			if err := c.unload(ctx, name, o); err != nil {
				return fmt.Errorf("disable %s: %w", name, err)
			}
			return nil
		}
		if !errors.Is(err, ErrBusy) || attempt >= o.LoadBackoff.Attempts {
			return fmt.Errorf("disable %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("disable %s: %w", name, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, o.LoadBackoff.Max)
	}
	err := c.Sysfs.WaitTransition(ctx, name, o.TransitionTimeout)
	var stall *StallError
	if errors.As(err, &stall) {
		if rerr := c.reverse(ctx, name, false, o); rerr != nil {
			return fmt.Errorf("disable %s: %w; reversing failed: %w", name, err, rerr)
		}
		return fmt.Errorf("disable %s: %w (reversed: still enabled)", name, err)
	}
	if err != nil {
		return fmt.Errorf("disable %s: %w", name, err)
	}
	return c.unload(ctx, name, o)
}

// unload waits for the module's refcount to reach 0 and removes it. A
// module that is already gone is fine. Only a module the kernel says is a
// livepatch (Sysfs.IsLivepatchModule) is ever unloaded: every path that
// unloads comes here, and a mistyped or misread name must not take a NIC
// driver out of the kernel.
func (c *Controller) unload(ctx context.Context, name string, o Options) error {
	if !c.Sysfs.ModuleLoaded(name) {
		return nil
	}
	lp, err := c.Sysfs.IsLivepatchModule(name)
	if err != nil {
		return fmt.Errorf("unload %s: %w", name, err)
	}
	if !lp {
		return fmt.Errorf("unload %s: %w: the kernel lists no /sys/kernel/livepatch/%s and /sys/module/%s/taint has no K; nothing unloaded", name, ErrNotLivepatchModule, name, name)
	}
	deadline := time.Now().Add(o.UnloadTimeout)
	for {
		n, err := c.Sysfs.Refcnt(name)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err == nil && n == 0 {
			err = c.Modules.Unload(name)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				return nil
			}
			if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EBUSY) {
				return err
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("unload %s: refcount %d after %s", name, n, o.UnloadTimeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unload %s: %w", name, ctx.Err())
		case <-time.After(c.Sysfs.poll()):
		}
	}
}
