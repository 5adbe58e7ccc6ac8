package cli

import (
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/agent/daemon"
)

func cmdRun(env *Env, args []string) error {
	fs := newFlags(env, "run", "run [--config PATH]")
	path := fs.String("config", config.DefaultPath, "main configuration file")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	return runExit(daemon.Run(env.Ctx, daemon.Options{ConfigPath: *path, Stderr: env.Stderr}))
}
