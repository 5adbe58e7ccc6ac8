package cli

import (
	"errors"

	"github.com/klp-agent/klp-agent/agent/guard"
)

func cmdGuard(env *Env, args []string) error {
	fs := newFlags(env, "guard", "guard [--config PATH] [--dry-run]")
	path := fs.String("config", guard.DefaultConfigPath, "the guard's configuration file (webhook, Prometheus, revoke key, revocations.json)")
	dry := fs.Bool("dry-run", false, "decide and print what would be signed; write and publish nothing")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	err := guard.Run(env.Ctx, guard.Options{ConfigPath: *path, DryRun: *dry, Stdout: env.Stdout, Stderr: env.Stderr}, guard.ExecRunner)
	if errors.Is(err, guard.ErrConfig) || errors.Is(err, guard.ErrKey) {
		return exitCodeError{ExitConfig, err}
	}
	return err
}
