// Command klp-agent keeps a host live-patched from a signed manifest.
package main

import (
	"os"

	"github.com/klp-agent/klp-agent/agent/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], &cli.Env{Stdout: os.Stdout, Stderr: os.Stderr}))
}
