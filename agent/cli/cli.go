// Package cli is the command line: it parses arguments and calls the
// packages that do the work. main.go only hands it os.Args.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/klp-agent/klp-agent/agent/daemon"
	"github.com/klp-agent/klp-agent/internal/sanitize"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// Env is what a command may touch, injectable for tests.
type Env struct {
	Stdout, Stderr io.Writer
	Now            func() time.Time
	Ctx            context.Context
	// KLPKernel is the kernel the klp commands act on under a root; nil:
	// the real one (tests give a simulated kernel).
	KLPKernel func(root string) KLPKernel
}

type command struct {
	usage string
	run   func(env *Env, args []string) error
}

// errUsage makes Main print usage and exit 2.
var errUsage = errors.New("usage")

func commands() map[string]command {
	return map[string]command{
		"version":      {"print the version", cmdVersion},
		"run":          {"the daemon: re-apply after boot, poll, apply, soak, roll back (systemd Type=notify)", cmdRun},
		"status":       {"what this host runs, wants, soaks and has blocked (--json)", cmdStatus},
		"rollback":     {"step back from the current patch now (--block: never re-apply it here)", cmdRollback},
		"check-config": {"validate the configuration and print the effective settings", cmdCheckConfig},
		"reload":       {"ask the running daemon to re-read its configuration; prints its verdict (the unit's ExecReload)", cmdReload},
		"explain":      {"show, for this host, every manifest entry for its kernel and why it is or is not chosen", cmdExplain},
		"manifest":     {"publisher tools: keygen, add, revoke, sign, verify, lint, root", cmdManifest},
		"klp":          {"by hand: list livepatches, apply one RPM, disable one patch", cmdKLP},
		"simulate":     {"model a fleet rolling a patch out, and the crash-budget pull-back of a bad one", cmdSimulate},
		"hold":         {"apply no new levels (--until TIME, --reason TEXT); health watching and rollbacks go on", cmdHold},
		"resume":       {"end a hold", cmdResume},
		"pin":          {"never apply a level above LEVEL on this kernel (pin LEVEL; pin --clear)", cmdPin},
		"unblock":      {"forget the block of NAME@LEVEL after a false positive", cmdUnblock},
		"poll":         {"poll the manifest now and print the outcome (exit 1 on failure)", cmdPoll},
		"history":      {"what this host did and why: applies, soaks, rollbacks, blocks, controls (--json)", cmdHistory},
		"guard":        {"the publisher's fleet loop: Alertmanager's crash-budget alerts, re-checked in Prometheus, signed into revocations.json with the revoke key", cmdGuard},
		"uninstall":    {"take the kernel back to no patch and erase the livepatch packages with klp-agent (one rpm transaction)", cmdUninstall},
	}
}

// subcommand is one verb of a command group (manifest, klp).
type subcommand struct {
	name, summary string
	run           func(env *Env, args []string) error
}

// dispatch runs a group's subcommand; "--help" lists them all.
func dispatch(env *Env, group string, subs []subcommand, args []string) error {
	names := make([]string, len(subs))
	for i, s := range subs {
		names[i] = s.name
	}
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprintf(env.Stdout, "usage: klp-agent %s SUBCOMMAND [flags]   (klp-agent %s SUBCOMMAND --help for its flags)\n\n", group, group)
		for _, s := range subs {
			fmt.Fprintf(env.Stdout, "  %-8s %s\n", s.name, s.summary)
		}
		return nil
	}
	if len(args) == 0 {
		return fmt.Errorf("%w: %s %s", errUsage, group, strings.Join(names, "|"))
	}
	for _, s := range subs {
		if s.name == args[0] {
			return s.run(env, args[1:])
		}
	}
	return fmt.Errorf("%w: unknown subcommand %q (%s)", errUsage, args[0], strings.Join(names, ", "))
}

// Main runs one command line and returns the process exit code.
func Main(args []string, env *Env) int {
	if env.Now == nil {
		env.Now = time.Now
	}
	if env.Ctx == nil {
		env.Ctx = context.Background()
	}
	if daemon.Version != Version {
		// Written once per process (a test runs a daemon beside commands).
		daemon.Version = Version
	}
	cmds := commands()
	switch {
	case len(args) == 0:
		usage(env.Stderr, cmds)
		return 2
	case args[0] == "help" && len(args) > 1:
		// `help COMMAND` and the hidden generators (`help --man`): help
		// stays out of the command table, the usage and the man page.
		cmds["help"] = command{"", cmdHelp}
	case args[0] == "-h" || args[0] == "--help" || args[0] == "help":
		// Asked-for help is output, not an error: stdout, exit 0.
		usage(env.Stdout, cmds)
		return 0
	case args[0] == "--version" || args[0] == "-V":
		args = []string{"version"}
	}
	c, ok := cmds[args[0]]
	if !ok {
		what := "command"
		if strings.HasPrefix(args[0], "-") {
			what = "flag"
		}
		fmt.Fprintf(env.Stderr, "klp-agent: unknown %s %q\n", what, args[0])
		usage(env.Stderr, cmds)
		return 2
	}
	err := c.run(env, args[1:])
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(answerCode)):
		var c answerCode
		errors.As(err, &c)
		return int(c)
	case errors.Is(err, errUsage):
		fmt.Fprintf(env.Stderr, "klp-agent %s: %s\n", args[0], sanitize.Text(err.Error()))
		var ue usageError
		if errors.As(err, &ue) {
			ue.fs.Usage() // after the error, once
		}
		return 2
	case exitCode(err) != 0:
		fmt.Fprintf(env.Stderr, "klp-agent %s: %s\n", args[0], sanitize.Text(err.Error()))
		return exitCode(err)
	default:
		fmt.Fprintf(env.Stderr, "klp-agent %s: %s\n", args[0], sanitize.Text(err.Error()))
		return 1
	}
}

func usage(w io.Writer, cmds map[string]command) {
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(w, "usage: klp-agent <command> [flags]\n\ncommands:")
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, cmds[n].usage)
	}
	fmt.Fprintln(w, "\nRun 'klp-agent <command> --help' for a command's flags; 'klp-agent --version' prints the version.")
}

// newFlags makes a flag set that reports errors instead of exiting. Its
// usage goes to stdout when asked for (--help) and to stderr after a
// flag error; flags show as --name, as documented.
func newFlags(env *Env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		w := env.Stderr
		if helpAsked(fs) {
			w = env.Stdout
		}
		fmt.Fprintf(w, "usage: klp-agent %s\n", synopsis)
		printFlags(w, fs)
	}
	return fs
}

// helpFlagSets records the flag sets whose arguments ask for help, so
// their usage goes to stdout.
var (
	helpMu       sync.Mutex
	helpFlagSets = map[*flag.FlagSet]bool{}
)

func helpAsked(fs *flag.FlagSet) bool {
	helpMu.Lock()
	defer helpMu.Unlock()
	return helpFlagSets[fs]
}

func setHelpAsked(fs *flag.FlagSet, on bool) {
	helpMu.Lock()
	defer helpMu.Unlock()
	if on {
		helpFlagSets[fs] = true
	} else {
		delete(helpFlagSets, fs)
	}
}

// printFlags lists fs's flags as --name VALUE, with defaults.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if name != "" {
			line += " " + strings.ToUpper(name)
		}
		line += "\n    \t" + strings.ReplaceAll(usage, "\n", "\n    \t")
		if d := f.DefValue; d != "" && d != "false" && d != "0" && d != "0s" && d != "[]" {
			line += fmt.Sprintf(" (default %q)", d)
		}
		fmt.Fprintln(w, line)
	})
}

// parse parses flags and refuses stray positional arguments.
func parse(fs *flag.FlagSet, args []string, positional int) error {
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() != positional {
		return usageErr(fs, "unexpected arguments %q", fs.Args())
	}
	return nil
}

// parseArgs parses flags, leaving the positional arguments to the caller.
// A bad flag is reported once, by Main, and then fs's usage.
func parseArgs(fs *flag.FlagSet, args []string) error {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" {
			setHelpAsked(fs, true)
			defer setHelpAsked(fs, false)
			break
		}
	}
	// The flag package prints the error and the usage itself; Main does
	// it instead, error first.
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	if !helpAsked(fs) {
		fs.Usage = func() {}
	}
	err := fs.Parse(args)
	fs.SetOutput(out)
	fs.Usage = usage
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{fmt.Errorf("%w: %w", errUsage, err), fs}
	}
	return nil
}

// usageError is a usage error of fs's command: Main prints it, then fs's
// usage.
type usageError struct {
	err error
	fs  *flag.FlagSet
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usageErr is a usage error of fs's command, formatted.
func usageErr(fs *flag.FlagSet, format string, a ...any) error {
	return usageError{fmt.Errorf("%w: "+format, append([]any{errUsage}, a...)...), fs}
}

func cmdVersion(env *Env, args []string) error {
	fs := newFlags(env, "version", "version")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	fmt.Fprintln(env.Stdout, "klp-agent", Version)
	return nil
}

// stringList is a repeatable flag that also splits on commas.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*s = append(*s, p)
		}
	}
	return nil
}
