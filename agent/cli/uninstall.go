package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/daemon"
	"github.com/klp-agent/klp-agent/agent/state"
)

func cmdUninstall(env *Env, args []string) error {
	fs := newFlags(env, "uninstall", "uninstall [--check] [--config PATH]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	check := fs.Bool("check", false, "only say whether `rpm -e klp-agent` alone would leave livepatch packages installed "+
		"(exit 1 if so; the package's %preun runs it)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *check {
		dir := config.Default().Paths.StateDir
		if l, err := config.Load(*path); err == nil {
			dir = l.Config.Paths.StateDir
		} else {
			fmt.Fprintf(env.Stderr, "klp-agent uninstall: %v; checking %s\n", err, dir)
		}
		err := agent.CheckErase(state.Layout{Dir: dir})
		if err != nil && !errors.Is(err, agent.ErrLeavesPatches) {
			// Unknown is not a reason to make the package impossible to
			// erase: say so and let it go.
			fmt.Fprintf(env.Stderr, "klp-agent uninstall: cannot tell which livepatch packages are left: %v\n", err)
			return nil
		}
		return err
	}
	h, err := daemon.LoadHost(*path)
	if err != nil {
		return err
	}
	store := h.Store()
	if err := store.Lock(); errors.Is(err, state.ErrLocked) {
		return errors.New("the daemon is running: stop it first (systemctl stop klp-agent), then run klp-agent uninstall again")
	} else if err != nil {
		return err
	}
	defer store.Unlock()
	log, err := h.Logger(env.Stderr)
	if err != nil {
		return err
	}
	a, err := h.Agent(log, store, nil)
	if err != nil {
		return err
	}
	pkgs, err := a.Uninstall(env.Ctx, operator())
	if err != nil {
		return err
	}
	if len(pkgs) == 0 {
		fmt.Fprintln(env.Stdout, "the kernel runs no patch of klp-agent's; nothing to erase (klp-agent is not an installed package)")
		return nil
	}
	fmt.Fprintf(env.Stdout, "the kernel runs no patch of klp-agent's; erased in one rpm transaction: %s\n", strings.Join(pkgs, " "))
	return nil
}
