package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

// The klp commands are the operator's (and the real-kernel tests') direct
// handle on klp/: they do one step by hand, outside the daemon's state.
func cmdKLP(env *Env, args []string) error {
	return dispatch(env, "klp", []subcommand{
		{"list", "livepatches in the kernel, with their objects and functions", cmdKLPList},
		{"apply", "verify, install (rpm -U), load and enable one livepatch RPM, timing each step", cmdKLPApply},
		{"disable", "disable one livepatch and unload its module; a module the kernel does not list as a livepatch is refused, never unloaded", cmdKLPDisable},
	}, args)
}

// klpFlags are the flags the klp subcommands share; each subcommand
// registers only the groups it uses (klp list takes no rpm or transition
// flags), the others keep their defaults.
type klpFlags struct {
	root       *string
	timeout    *time.Duration
	force      *bool
	poll       *time.Duration
	scripts    *bool
	nodeps     *bool
	keyring    *string
	requireSig *bool
	dbpath     *string
}

// Flag groups beyond --root.
const (
	transitionFlags = 1 << iota // --transition-timeout, --force, --poll
	rpmFlags                    // --scripts, --nodeps, --rpm-keyring, --require-signature, --rpm-dbpath
)

func addKLPFlags(fs *flag.FlagSet, groups int) klpFlags {
	f := klpFlags{
		root:    fs.String("root", "/", "filesystem root for /sys, /proc and rpm --root"),
		timeout: ptr(60 * time.Second), force: new(bool), poll: ptr(10 * time.Millisecond),
		scripts: new(bool), nodeps: new(bool), keyring: new(string), requireSig: new(bool), dbpath: new(string),
	}
	if groups&transitionFlags != 0 {
		f.timeout = fs.Duration("transition-timeout", *f.timeout, "a transition longer than this is stalled: reversed (or forced with --force)")
		f.force = fs.Bool("force", false, "force a stalled transition instead of reversing it (the module can then never be unloaded)")
		f.poll = fs.Duration("poll", *f.poll, "transition poll period")
	}
	if groups&rpmFlags != 0 {
		f.scripts = fs.Bool("scripts", false, "let rpm run the package's %pre/%post scriptlets and triggers (off: the agent loads the module itself)")
		f.nodeps = fs.Bool("nodeps", false, "rpm --nodeps (kpatch-patch RPMs require kernel-uname-r)")
		f.keyring = fs.String("rpm-keyring", "", "rpm keyring path for the signature check")
		f.requireSig = fs.Bool("require-signature", false, "refuse RPMs without a signature from the rpm keyring")
		f.dbpath = fs.String("rpm-dbpath", "", "rpm --dbpath (default: rpm's own)")
	}
	return f
}

func ptr[T any](v T) *T { return &v }

// KLPKernel is what the klp commands drive: sysfs and procfs, module
// loading and the kernel log.
type KLPKernel struct {
	FS      klp.FS
	Modules klp.Modules
	Log     klp.KernelLog
}

func (f klpFlags) controller(env *Env) *klp.Controller {
	k := KLPKernel{FS: klp.OSFS{Root: *f.root}, Modules: klp.KernelModules{}, Log: klp.KmsgLog{Path: filepath.Join(*f.root, "dev/kmsg")}}
	if env.KLPKernel != nil {
		k = env.KLPKernel(*f.root)
	}
	return &klp.Controller{
		Sysfs:   &klp.Sysfs{FS: k.FS, Poll: *f.poll},
		Modules: k.Modules,
		Log:     k.Log,
		Opts:    klp.Options{TransitionTimeout: *f.timeout, ForceOnStall: *f.force},
	}
}

func cmdKLPList(env *Env, args []string) error {
	fs := newFlags(env, "klp list", "klp list [--json] [--root DIR]")
	f := addKLPFlags(fs, 0)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	ps, err := f.controller(env).Sysfs.List()
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		if ps == nil {
			ps = []klp.Livepatch{}
		}
		return enc.Encode(ps)
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tENABLED\tTRANSITION\tOBJECTS")
	for _, p := range ps {
		var objs []string
		for _, o := range p.Objects {
			objs = append(objs, fmt.Sprintf("%s(%d funcs)", o.Name, len(o.Functions)))
		}
		fmt.Fprintf(tw, "%s\t%v\t%v\t%s\n", p.Name, p.Enabled, p.Transition, strings.Join(objs, " "))
	}
	return tw.Flush()
}

func cmdKLPApply(env *Env, args []string) error {
	fs := newFlags(env, "klp apply", "klp apply --rpm FILE [--sha256 HEX --size N] [--previous-rpm FILE] [flags]")
	f := addKLPFlags(fs, transitionFlags|rpmFlags)
	file := fs.String("rpm", "", "livepatch RPM")
	sum := fs.String("sha256", "", "pinned sha256 (default: the file's own; a manifest always pins it)")
	size := fs.Int64("size", 0, "pinned size in bytes (default: the file's own)")
	level := fs.Int("level", 0, "cumulative level, for packages that do not declare one (shown only)")
	replaces := fs.String("replaces", "", "the livepatch this one must replace (default: the one enabled now, if there is exactly one)")
	prevRPM := fs.String("previous-rpm", "", "the RPM of the livepatch running now, re-installed if this one fails (default: the agent's copy in --state-dir)")
	stateDir := fs.String("state-dir", config.Default().Paths.StateDir, "the agent's state directory, whose copy of the running livepatch's RPM is re-installed if this one fails")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: --rpm is required", errUsage)
	}
	krel, err := klp.KernelRelease(*f.root)
	if err != nil {
		return err
	}
	in := &klp.Installer{
		RPM:        &klp.RPM{Runner: klp.ExecRunner{}, Root: *f.root, NoDeps: *f.nodeps, Keyring: *f.keyring, DBPath: *f.dbpath, Scripts: *f.scripts},
		Controller: f.controller(env),
		Root:       *f.root,
		CheckSig:   *f.requireSig,
	}
	// rpm -q of the name (Apply's collision check) runs beside the rest,
	// from the header alone; Apply checks it is the verified name.
	var names *klp.NameCheck
	if name, err := klp.PackageName(*file); err == nil {
		names = in.StartNameCheck(env.Ctx, name)
		defer names.Stop()
	}
	info, err := klp.InspectRPM(*file)
	if err != nil {
		return err
	}
	want := klp.Want{KernelRelease: krel, Name: info.ModuleName, Level: info.Level, SHA256: *sum, Size: *size, NameCheck: names}
	if *level > 0 {
		if info.Layout == klp.LayoutKLP && *level != info.Level {
			return fmt.Errorf("%w: --level %d, the package declares %d", errUsage, *level, info.Level)
		}
		want.Level = *level
	}
	prev, err := previous(env, f, krel, info.ModuleName, *replaces, *prevRPM, *stateDir)
	if err != nil {
		return err
	}
	want.Previous = prev
	if want.SHA256 == "" {
		want.SHA256 = info.SHA256
	}
	if want.Size == 0 {
		want.Size = info.Size
	}
	res, err := in.Apply(env.Ctx, *file, want)
	if errors.Is(err, klp.ErrNoRestore) {
		return fmt.Errorf("%w; nothing was changed: give --previous-rpm FILE, the RPM of %s", err, prev.Module)
	}
	if err != nil {
		return err
	}
	t := res.Timing
	state := "enabled"
	switch {
	case res.Result.Already:
		state = "already enabled"
	case res.Result.Forced:
		state = "enabled (FORCED)"
	}
	fmt.Fprintf(env.Stdout, "%s level %d %s on %s; verify %s, rpm %s, load %s, transition %s, total %s; verified->transition 0: %s",
		want.Name, want.Level, state, krel, ms(t.Verify), ms(t.Install), ms(t.Load), ms(t.Transition), ms(t.Total), ms(t.Install+t.Load+t.Transition))
	if res.Result.BusyRetry > 0 {
		fmt.Fprintf(env.Stdout, "; %d EBUSY retries", res.Result.BusyRetry)
	}
	if len(res.Result.Replaced) > 0 {
		fmt.Fprintf(env.Stdout, "; replaced %s", strings.Join(res.Result.Replaced, ","))
	}
	fmt.Fprintln(env.Stdout)
	return nil
}

// previous is what `klp apply` must replace and restore on failure: the
// named patch, or the one livepatch enabled now; its RPM when given, else
// the agent's verified copy of it, where the daemon's own apply finds it
// (the state's current record for this kernel, when it is that patch).
func previous(env *Env, f klpFlags, krel, name, replaces, prevRPM, stateDir string) (*klp.Installed, error) {
	if replaces == "" {
		ps, err := f.controller(env).Sysfs.List()
		if err != nil && !errors.Is(err, klp.ErrNoLivepatch) {
			return nil, err
		}
		var on []string
		for _, p := range ps {
			if p.Enabled && p.Name != name {
				on = append(on, p.Name)
			}
		}
		if len(on) == 1 {
			replaces = on[0]
		}
	}
	if replaces == "" && prevRPM == "" {
		return nil, nil
	}
	p := &klp.Installed{Module: replaces}
	if prevRPM != "" {
		pi, err := klp.InspectRPM(prevRPM)
		if err != nil {
			return nil, fmt.Errorf("--previous-rpm: %w", err)
		}
		p.Package, p.RPM = pi.Name, prevRPM
		if p.Module == "" {
			p.Module = pi.ModuleName
		}
		return p, nil
	}
	store := &state.Store{Dir: stateDir}
	st, err := store.Load()
	if err != nil {
		return nil, fmt.Errorf("the agent's copy of %s's RPM: %w (or give --previous-rpm FILE)", replaces, err)
	}
	if k := st.Kernels[krel]; k != nil && k.Current != nil && k.Current.Name == replaces {
		rpm, err := store.RPMPath(k.Current)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(rpm); err == nil {
			p.Package, p.RPM = k.Current.RPMName, rpm
		}
	}
	return p, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func cmdKLPDisable(env *Env, args []string) error {
	fs := newFlags(env, "klp disable", "klp disable NAME [--root DIR] [--transition-timeout D] [--force] [--poll D]")
	f := addKLPFlags(fs, transitionFlags)
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	name := fs.Arg(0)
	if !manifest.ValidName(name) {
		return fmt.Errorf("%w: %q is not a livepatch name", errUsage, name)
	}
	start := time.Now()
	if err := f.controller(env).Disable(env.Ctx, name); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s disabled and unloaded in %s\n", name, ms(time.Since(start)))
	return nil
}
