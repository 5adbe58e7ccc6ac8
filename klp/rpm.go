package klp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Runner runs a program with an argument vector, never through a shell:
// arguments come from manifests and RPM headers.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExecRunner is the real Runner.
type ExecRunner struct{}

// Run implements Runner; the error carries the command's stderr.
func (ExecRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
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

// Erase removes an installed package by name.
func (r *RPM) Erase(ctx context.Context, name string) error {
	args := append(r.rootArgs(), "-e")
	args = append(args, r.scriptArgs()...)
	if r.NoDeps {
		args = append(args, "--nodeps")
	}
	if _, err := r.Runner.Run(ctx, "rpm", append(args, "--", name)...); err != nil {
		if strings.Contains(err.Error(), "is not installed") {
			return fmt.Errorf("erase %s: %w", name, ErrNotInstalled)
		}
		return fmt.Errorf("erase %s: %w", name, err)
	}
	return nil
}

// Files lists an installed package's files and directories; installed is
// false when no package of that name is installed.
func (r *RPM) Files(ctx context.Context, name string) (files []string, installed bool, err error) {
	args := append(r.rootArgs(), "-q", "--qf", "[%{FILENAMES}\n]", "--", name)
	out, err := r.Runner.Run(ctx, "rpm", args...)
	if err != nil {
		if strings.Contains(err.Error(), "is not installed") {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("query %s: %w", name, err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && l != "(contains no files)" {
			files = append(files, l)
		}
	}
	return files, true, nil
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
