package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strings"
)

// helpDoc is one command's help, read back from what `--help` prints, so
// the man page and the shell completions say exactly what --help says.
type helpDoc struct {
	Name     string // "status", "manifest keygen"
	Summary  string
	Synopsis string // the usage line after "usage: klp-agent "
	Flags    []flagDoc
	Subs     []helpDoc // a command group's subcommands (manifest, klp)
}

// flagDoc is one flag as printFlags shows it.
type flagDoc struct {
	Name  string // without dashes
	Arg   string // "STRING", "DURATION", ... ("" for a switch)
	Usage string // with its "(default ...)"
}

// collectHelp runs every command's and subcommand's --help.
func collectHelp(env *Env) ([]helpDoc, error) {
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	var docs []helpDoc
	for _, n := range names {
		d, err := helpOf(env, cmds[n].run, []string{n}, cmds[n].usage)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d)
	}
	return docs, nil
}

// helpOf reads the help of the command at path (run is its top-level
// function) and, for a group, of each of its subcommands.
func helpOf(env *Env, run func(*Env, []string) error, path []string, summary string) (helpDoc, error) {
	var out, errb bytes.Buffer
	sub := &Env{Stdout: &out, Stderr: &errb, Now: env.Now, Ctx: env.Ctx}
	if err := run(sub, append(append([]string{}, path[1:]...), "--help")); err != nil && !errors.Is(err, flag.ErrHelp) {
		return helpDoc{}, fmt.Errorf("%s --help: %w", strings.Join(path, " "), err)
	}
	name := strings.Join(path, " ")
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	first, ok := strings.CutPrefix(lines[0], "usage: klp-agent ")
	if !ok {
		return helpDoc{}, fmt.Errorf("%s --help: no usage line in %q", name, out.String())
	}
	d := helpDoc{Name: name, Summary: summary, Synopsis: first}
	if strings.HasPrefix(first, name+" SUBCOMMAND") {
		// A group: "  NAME     summary" per subcommand.
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			if !strings.HasPrefix(l, "  ") || len(f) < 2 {
				continue
			}
			s, err := helpOf(env, run, append(append([]string{}, path...), f[0]), strings.Join(f[1:], " "))
			if err != nil {
				return helpDoc{}, err
			}
			d.Subs = append(d.Subs, s)
		}
		return d, nil
	}
	for _, l := range lines[1:] {
		switch {
		case strings.HasPrefix(l, "  --"):
			name, arg, _ := strings.Cut(strings.TrimPrefix(l, "  --"), " ")
			d.Flags = append(d.Flags, flagDoc{Name: name, Arg: arg})
		case strings.HasPrefix(l, "    \t") && len(d.Flags) > 0:
			f := &d.Flags[len(d.Flags)-1]
			f.Usage = strings.TrimSpace(f.Usage + " " + strings.TrimPrefix(l, "    \t"))
		}
	}
	return d, nil
}

// leaves lists the commands that take flags (a group's subcommands, not
// the group).
func leaves(docs []helpDoc) []helpDoc {
	var out []helpDoc
	for _, d := range docs {
		if len(d.Subs) > 0 {
			out = append(out, leaves(d.Subs)...)
			continue
		}
		out = append(out, d)
	}
	return out
}

// cmdHelp is `klp-agent help [COMMAND [SUBCOMMAND]]`, and, for packaging,
// the hidden `help --man`, `help --bash-completion` and
// `help --zsh-completion`, which print klp-agent(8) (groff) and the
// completion scripts generated from every command's --help.
func cmdHelp(env *Env, args []string) error {
	gen := map[string]func(*Env, []helpDoc) error{"--man": writeMan, "--bash-completion": writeBash, "--zsh-completion": writeZsh}
	if len(args) == 1 {
		if g, ok := gen[args[0]]; ok {
			docs, err := collectHelp(env)
			if err != nil {
				return err
			}
			return g(env, docs)
		}
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		usage(env.Stdout, commands())
		return nil
	}
	c, ok := commands()[args[0]]
	if !ok {
		return fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
	return c.run(env, append(append([]string{}, args[1:]...), "--help"))
}
