package klp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Runner runs a program with an argument vector, never through a shell:
// arguments come from manifests and RPM headers.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExecRunner is the real Runner.
type ExecRunner struct{}

// StopGrace is how long a cancelled command has, after SIGTERM, before it
// is killed: rpm defers SIGTERM until its transaction ends (rpm >= 4.17
// blocks signals during one), and only SIGKILL cuts it short.
const StopGrace = 2 * time.Minute

// Run implements Runner; the error carries the command's stderr. A
// cancelled ctx sends SIGTERM, never SIGKILL at once: see StopGrace.
func (ExecRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = StopGrace
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		// rpm reports some failures on stdout; keep both.
		msg := strings.TrimSpace(strings.TrimSpace(stderr.String()) + "\n" + strings.TrimSpace(stdout.String()))
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// ErrSignature means rpmkeys rejected a package signature.
var ErrSignature = errors.New("rpm signature check failed")

// RPM drives the real rpm tools.
type RPM struct {
	Runner  Runner
	Root    string // rpm --root; "" or "/" for the host
	Keyring string // rpmkeys --define "_keyringpath ..."; "" = rpm's configured keyring
	NoDeps  bool   // kpatch-patch RPMs require kernel-uname-r, which Debian's rpm database lacks
	// DBPath overrides rpm's %_dbpath. Debian's rpm computes it with
	// `bash -c 'echo ~/.rpmdb'`, which fails without bash or a home.
	DBPath string
	// Scripts lets the package's %pre/%post scriptlets and triggers run.
	// Off by default: the agent loads livepatches itself, and a kpatch-patch
	// or klp.spec %post (kpatch install, kpatch load --all) would load
	// modules, as root, behind its back.
	Scripts bool
}

// ErrNotInstalled is rpm -e of a package that is not installed.
var ErrNotInstalled = errors.New("package is not installed")

// MutateTimeout bounds an rpm transaction the agent starts. Transactions
// run to their end even when the agent is asked to stop: rpm killed
// between writing the new header and erasing the old one leaves both
// installed (TestAgentRealKernel's boot4 did, when its rollback's rpm -U
// was cancelled by the stop). The bound is for a wedged rpm: one waiting
// on another's transaction lock waits for ever.
const MutateTimeout = 10 * time.Minute

// mutate is ctx for an rpm transaction: not cancelled with ctx.
func mutate(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), MutateTimeout)
}

func (r *RPM) rootArgs() []string {
	var args []string
	if r.Root != "" && r.Root != "/" {
		args = append(args, "--root", r.Root)
	}
	if r.DBPath != "" {
		args = append(args, "--dbpath", r.DBPath)
	}
	return args
}

// Install installs exactly this file: an upgrade, a reinstall or a
// downgrade (stepping back to a previous cumulative level) alike.
func (r *RPM) Install(ctx context.Context, file string) error {
	args := append(r.rootArgs(), "-U", "--replacepkgs", "--oldpackage")
	args = append(args, r.scriptArgs()...)
	if r.NoDeps {
		args = append(args, "--nodeps")
	}
	// -U replaces every installed instance of the name, so this also
	// mends the two a cut-short transaction leaves.
	ctx, cancel := mutate(ctx)
	defer cancel()
	if _, err := r.Runner.Run(ctx, "rpm", append(args, "--", file)...); err != nil {
		return fmt.Errorf("install %s: %w", file, err)
	}
	return nil
}

func (r *RPM) scriptArgs() []string {
	if r.Scripts {
		return nil
	}
	return []string{"--noscripts", "--notriggers"}
}

// Erase removes an installed package by name: every instance of it
// (--allmatches; without it rpm refuses a name installed twice).
func (r *RPM) Erase(ctx context.Context, name string) error {
	args := append(r.rootArgs(), "-e", "--allmatches")
	args = append(args, r.scriptArgs()...)
	if r.NoDeps {
		args = append(args, "--nodeps")
	}
	ctx, cancel := mutate(ctx)
	defer cancel()
	if _, err := r.Runner.Run(ctx, "rpm", append(args, "--", name)...); err != nil {
		if strings.Contains(err.Error(), "is not installed") {
			return fmt.Errorf("erase %s: %w", name, ErrNotInstalled)
		}
		return fmt.Errorf("erase %s: %w", name, err)
	}
	return nil
}

// Instance is one installed instance of a package name. rpm lets a name
// be installed more than once; a transaction cut short (power lost between
// writing the new header and erasing the old) leaves two.
type Instance struct {
	NEVRA string
	Files []string // files and directories
}

// instanceMark starts each instance in Instances' query output: no file
// name starts with it (they are absolute paths).
const instanceMark = "=klp-agent-instance "

// Instances lists the installed instances of a package name, none when it
// is not installed.
func (r *RPM) Instances(ctx context.Context, name string) ([]Instance, error) {
	args := append(r.rootArgs(), "-q", "--qf", instanceMark+"%{NEVRA}\n[%{FILENAMES}\n]", "--", name)
	out, err := r.Runner.Run(ctx, "rpm", args...)
	if err != nil {
		if strings.Contains(err.Error(), "is not installed") {
			return nil, nil
		}
		return nil, fmt.Errorf("query %s: %w", name, err)
	}
	var ins []Instance
	for _, l := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(l, instanceMark):
			ins = append(ins, Instance{NEVRA: strings.TrimPrefix(l, instanceMark)})
		case l == "" || l == "(contains no files)":
		case len(ins) == 0:
			return nil, fmt.Errorf("query %s: unexpected output %q", name, short(l))
		default:
			ins[len(ins)-1].Files = append(ins[len(ins)-1].Files, l)
		}
	}
	return ins, nil
}

// Installed returns the installed version-release of a package, or "" if
// it is not installed.
func (r *RPM) Installed(ctx context.Context, name string) (string, error) {
	args := append(r.rootArgs(), "-q", "--qf", "%{VERSION}-%{RELEASE}\n", "--", name)
	out, err := r.Runner.Run(ctx, "rpm", args...)
	if err != nil {
		if strings.Contains(err.Error(), "is not installed") {
			return "", nil
		}
		return "", fmt.Errorf("query %s: %w", name, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// CheckSig verifies the package's signature with rpmkeys against the
// configured keyring. The sha256 pinned in the signed manifest is checked
// separately and always; this adds the vendor's own signature.
func (r *RPM) CheckSig(ctx context.Context, file string) error {
	args := r.rootArgs()
	if r.Keyring != "" {
		args = append(args, "--define", "_keyringpath "+r.Keyring)
	}
	out, err := r.Runner.Run(ctx, "rpmkeys", append(args, "--checksig", "--", file)...)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrSignature, file, err)
	}
	// rpmkeys exits 0 for an unsigned package whose digests are fine
	// ("digests OK"); only "signatures OK" means a trusted key signed it.
	if !strings.Contains(string(out), "signatures OK") {
		return fmt.Errorf("%w: %s is not signed: %s", ErrSignature, file, strings.TrimSpace(string(out)))
	}
	return nil
}

// EraseTogether erases the named packages in one rpm transaction, with
// their own erase scriptlets (klp-agent uninstall erases the livepatch
// packages with klp-agent itself, whose %preun stops the service):
// either all go or none does.
func (r *RPM) EraseTogether(ctx context.Context, names ...string) error {
	args := append(r.rootArgs(), "-e", "--allmatches")
	if r.NoDeps {
		args = append(args, "--nodeps")
	}
	ctx, cancel := mutate(ctx)
	defer cancel()
	if _, err := r.Runner.Run(ctx, "rpm", append(append(args, "--"), names...)...); err != nil {
		return fmt.Errorf("erase %s: %w", strings.Join(names, " "), err)
	}
	return nil
}
