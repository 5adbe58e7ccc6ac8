package klp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klp-agent/klp-agent/internal/limitfile"
)

// ErrDigest means a downloaded file does not match the pinned digest/size.
var ErrDigest = errors.New("digest mismatch")

// ErrForeignPackage is a livepatch RPM named like an installed package that
// is not a livepatch: rpm -U would replace it (an RPM named
// openssh-server would remove sshd).
var ErrForeignPackage = errors.New("RPM name belongs to an installed package that is not a livepatch")

// Want is what the signed manifest pins for one livepatch RPM, and what
// the installer must know of the livepatch the host runs now.
type Want struct {
	KernelRelease string
	Name          string // module name (modinfo name=)
	Level         int    // checked against klp-agent's own layout, which declares it
	SHA256        string
	Size          int64
	// Previous is the agent's livepatch in the kernel now (nil: none). The
	// new one must replace it; a failed apply leaves it, and rpm's
	// database says it again.
	Previous *Installed
	// BeforeLoad, if set, runs after rpm installed the package and before
	// the module goes into the kernel: the agent records that from here on
	// a crash may be the module's doing. An error stops the apply.
	BeforeLoad func() error
	// NameCheck, if set, is rpm -q of the package name started by the
	// caller (StartNameCheck) as soon as it knew the name. Apply uses it
	// when the verified header names the same package, and stops it when
	// the apply ends either way.
	NameCheck *NameCheck
}

// Installed is a livepatch the agent put in the kernel.
type Installed struct {
	Module  string // module name
	Package string // RPM name
	RPM     string // the agent's verified copy of its RPM
}

// Installer joins rpm and the controller: verify, install, load, enable.
type Installer struct {
	RPM        *RPM
	Controller *Controller
	Root       string // where rpm installs (the module path is read under it)
	CheckSig   bool   // also require an RPM signature from the rpm keyring
	// Hook, if set, is called after each step ("installed", "enabled");
	// crash-consistency tests kill the process there.
	Hook func(step string)
}

func (in *Installer) hook(step string) {
	if in.Hook != nil {
		in.Hook(step)
	}
}

// ApplyTiming breaks an apply down for status and benchmarks.
type ApplyTiming struct {
	Verify  time.Duration // digest + header + module checks
	Install time.Duration // rpm -U
	Timing                // load + transition
	Total   time.Duration
}

// ApplyResult is a finished apply.
type ApplyResult struct {
	Info   *RPMInfo
	Result Result
	Timing ApplyTiming
}

// VerifyFile checks a downloaded RPM against what the manifest pins and
// what this kernel can load: sha256 and size, the header (layout, payload
// of the one module, dependencies, kernel release, level where the
// package declares one) and, when the payload is readable, the module's
// own modinfo (livepatch=Y, vermagic, name). Nothing is installed.
func VerifyFile(file string, want Want) (*RPMInfo, error) {
	return verifyFile(file, want, nil)
}

// verifyFile is VerifyFile calling onHeader with the package name once the
// header is parsed (see inspectRPM).
func verifyFile(file string, want Want, onHeader func(name string)) (*RPMInfo, error) {
	info, err := inspectRPM(file, onHeader)
	if err != nil {
		if info == nil || !errors.Is(err, ErrNoLevel) || info.Layout == LayoutKLP {
			return nil, fmt.Errorf("verify: %w", err)
		}
	}
	if info.Size != want.Size || info.SHA256 != want.SHA256 {
		return nil, fmt.Errorf("verify %s: %w: %d bytes sha256 %s, manifest pins %d bytes %s", file, ErrDigest, info.Size, info.SHA256, want.Size, want.SHA256)
	}
	if info.KernelRelease != want.KernelRelease {
		return nil, fmt.Errorf("verify %s: %w: built for %s, this host runs %s", file, ErrKernelMismatch, info.KernelRelease, want.KernelRelease)
	}
	if info.Layout == LayoutKLP && info.Level != want.Level {
		return nil, fmt.Errorf("verify %s: %w: package declares level %d, manifest says %d", file, ErrLevelMismatch, info.Level, want.Level)
	}
	if info.ModInfo != nil {
		if err := CheckModule(info.ModInfo, want.KernelRelease, want.Name); err != nil {
			return nil, fmt.Errorf("verify %s: %w", file, err)
		}
	}
	return info, nil
}

func checkKO(ko []byte, want Want) error {
	mi, err := ModInfo(ko)
	if err != nil {
		return err
	}
	return CheckModule(mi, want.KernelRelease, want.Name)
}

// Apply verifies, installs and enables one livepatch RPM. The RPM stays
// installed on success, so a reboot can re-apply it offline, and a package
// of another name that the previous level came in is erased. When anything
// after rpm -U fails (the module, the kernel's refusal, a stalled
// transition), rpm's database is put back to what the kernel runs: the
// previous level's RPM re-installed from the agent's copy, or the new
// package erased.
func (in *Installer) Apply(ctx context.Context, file string, want Want) (*ApplyResult, error) {
	t0 := time.Now()
	// rpm -q of the package name runs beside the payload read: from the
	// caller's start, or from when the header names the package.
	nc := want.NameCheck
	defer func() { nc.Stop() }()
	// So does rpmkeys: it reads the file, whatever Go finds in it, and
	// its verdict is awaited before rpm -U as before.
	var sig chan error
	if in.CheckSig {
		sctx, cancel := context.WithCancel(ctx)
		sig = make(chan error, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			sig <- in.RPM.CheckSig(sctx, file)
		}()
		defer func() {
			cancel()
			<-done
		}()
	}
	info, err := verifyFile(file, want, func(name string) {
		if nc == nil || nc.name != name {
			nc.Stop()
			nc = in.StartNameCheck(ctx, name)
		}
	})
	if err != nil {
		return nil, err
	}
	if nc == nil || nc.name != info.Name {
		// Only the verified header's name is judged.
		nc.Stop()
		nc = in.StartNameCheck(ctx, info.Name)
	}
	ins, err := in.checkName(ctx, nc)
	if err != nil {
		return nil, err
	}
	if err := canRestore(ins, info, want); err != nil {
		return nil, err
	}
	if sig != nil {
		if err := <-sig; err != nil {
			return nil, err
		}
	}
	res := &ApplyResult{Info: info}
	res.Timing.Verify = time.Since(t0)
	t1 := time.Now()
	if err := in.RPM.Install(ctx, file); err != nil {
		return res, err
	}
	res.Timing.Install = time.Since(t1)
	in.hook("installed")
	fail := func(err error) (*ApplyResult, error) {
		if rerr := in.restore(context.WithoutCancel(ctx), info, want); rerr != nil {
			return res, errors.Join(err, fmt.Errorf("restoring rpm's database: %w", rerr))
		}
		return res, err
	}
	ko := filepath.Join(in.Root, info.ModulePath)
	var b []byte
	if info.ModuleSHA256 != "" {
		// The installed file must be the payload's bytes, checked as
		// the load will check them, before the phase says enabling.
		b, err = ReadModule(ModuleFile{Path: ko, SHA256: info.ModuleSHA256})
	} else {
		b, err = limitfile.Read(ko, MaxModuleBytes)
	}
	if err != nil {
		return fail(fmt.Errorf("apply %s: %w", want.Name, err))
	}
	if want.Name == "" {
		// By hand, from a payload this build cannot read: the installed
		// module says its name.
		if mi, err := ModInfo(b); err == nil {
			want.Name, _ = moduleName(mi)
		}
	}
	if err := checkKO(b, want); err != nil {
		return fail(fmt.Errorf("apply %s: installed module refused before loading: %w", want.Name, err))
	}
	info.ModuleName = want.Name
	if info.ModuleSHA256 == "" {
		// A payload this build cannot read: what is loaded is at least
		// the bytes just checked.
		sum := sha256.Sum256(b)
		info.ModuleSHA256 = hex.EncodeToString(sum[:])
	}
	if want.BeforeLoad != nil {
		if err := want.BeforeLoad(); err != nil {
			return fail(fmt.Errorf("apply %s: %w", want.Name, err))
		}
	}
	var eo EnableOptions
	if want.Previous != nil {
		eo.Replaces = want.Previous.Module
	}
	res.Result, err = in.Controller.Enable(ctx, ModuleFile{Path: ko, SHA256: info.ModuleSHA256}, want.Name, eo)
	res.Timing.Timing = res.Result.Timing
	res.Timing.Total = time.Since(t0)
	if err != nil {
		return fail(err)
	}
	if p := want.Previous; p != nil && p.Package != "" && p.Package != info.Name {
		// The previous level came in a package of another name: rpm -q
		// names only what the kernel runs.
		if err := in.RPM.Erase(ctx, p.Package); err != nil && !errors.Is(err, ErrNotInstalled) {
			return res, fmt.Errorf("apply %s: enabled, but erasing %s: %w", want.Name, p.Package, err)
		}
	}
	in.hook("enabled")
	return res, nil
}

// checkName refuses a package name an installed non-livepatch package has.
// Each installed instance is judged alone: two livepatch levels of one name
// (a transaction cut short) are not a package with two modules, and the
// install that follows (rpm -U) leaves one.
func (in *Installer) checkName(ctx context.Context, nc *NameCheck) ([]Instance, error) {
	ins, err := nc.wait(ctx)
	if err != nil {
		return nil, err
	}
	for _, i := range ins {
		if err := LivepatchFiles(i.Files); err != nil {
			return nil, fmt.Errorf("%w: %s (%v)", ErrForeignPackage, i.NEVRA, err)
		}
	}
	return ins, nil
}

// ErrNoRestore is an apply that could leave rpm's database unlike the
// kernel: rpm -U would replace the package the running livepatch came in,
// and there is no copy of that package to put back if the kernel refuses
// the new one.
var ErrNoRestore = errors.New("no copy of the running livepatch's package to restore")

// canRestore refuses, before rpm -U, an apply whose failure restore could
// not undo: an installed instance of the new package's name holds the
// module of want.Previous (the livepatch the kernel runs), and
// want.Previous has no RPM of that name to re-install.
func canRestore(ins []Instance, info *RPMInfo, want Want) error {
	p := want.Previous
	if p == nil || p.Module == "" || (p.RPM != "" && p.Package == info.Name) {
		return nil
	}
	for _, i := range ins {
		for _, f := range i.Files {
			if filepath.Ext(f) == ".ko" && strings.ReplaceAll(strings.TrimSuffix(filepath.Base(f), ".ko"), "-", "_") == p.Module {
				return fmt.Errorf("apply %s: %w: rpm -U would replace %s, the package of %s which the kernel runs now",
					info.Name, ErrNoRestore, i.NEVRA, p.Module)
			}
		}
	}
	return nil
}

// restore puts rpm's database back to the livepatch the kernel runs.
func (in *Installer) restore(ctx context.Context, info *RPMInfo, want Want) error {
	p := want.Previous
	var errs []error
	if p != nil && p.RPM != "" {
		if err := in.RPM.Install(ctx, p.RPM); err != nil {
			errs = append(errs, err)
		}
	}
	if p == nil || p.Package != info.Name {
		if err := in.RPM.Erase(ctx, info.Name); err != nil && !errors.Is(err, ErrNotInstalled) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// LivepatchFiles checks that an installed package's files are a
// livepatch's: one module in a livepatch layout and its directories.
func LivepatchFiles(files []string) error {
	var mod string
	for _, f := range files {
		if filepath.Ext(f) == ".ko" {
			if mod != "" {
				return fmt.Errorf("%w: %s and %s", ErrModuleCount, mod, f)
			}
			mod = f
		}
	}
	if mod == "" {
		return fmt.Errorf("%w: no module", ErrModuleCount)
	}
	if _, _, _, err := splitModulePath(mod); err != nil {
		return err
	}
	dirs := ancestors(mod)
	for _, f := range files {
		if f != mod && !dirs[f] {
			return fmt.Errorf("%w: %s", ErrPayload, f)
		}
	}
	return nil
}

// FileSHA256 hashes a file.
func FileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
