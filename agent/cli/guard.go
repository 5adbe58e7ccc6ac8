package cli

import (
	"errors"

	"github.com/klp-agent/klp-agent/agent/guard"
)

func cmdGuard(env *Env, args []string) error {
	fs := newFlags(env, "guard", "guard [--config PATH] [--dry-run | --check-config]")
	path := fs.String("config", guard.DefaultConfigPath, "the guard's configuration file (webhook, Prometheus, revoke key, revocations.json)")
	dry := fs.Bool("dry-run", false, "decide and print what would be signed; write and publish nothing")
	check := fs.Bool("check-config", false, "check the configuration, the key against the root and the token file, print the effective settings, and exit")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *check {
		out, err := guard.Check(*path)
		if err != nil {
			return guardExit(err)
		}
		_, err = env.Stdout.Write(out)
		return err
	}
	return guardExit(guard.Run(env.Ctx, guard.Options{ConfigPath: *path, DryRun: *dry, Stdout: env.Stdout, Stderr: env.Stderr}, guard.ExecRunner))
}

// guardExit maps a configuration the guard cannot run to ExitConfig.
func guardExit(err error) error {
	if errors.Is(err, guard.ErrConfig) || errors.Is(err, guard.ErrKey) {
		return exitCodeError{ExitConfig, err}
	}
	return err
}
