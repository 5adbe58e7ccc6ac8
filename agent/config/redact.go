package config

import (
	"slices"
	"strings"

	"github.com/klp-agent/klp-agent/internal/redact"
)

// Redacted is c as it may be shown (check-config, logs): credentials in
// manifest.url (user:password@, a token as user, query values) and
// secret-like arguments of health.command.argv (--password=..., TOKEN=...,
// and URLs in any argument) are masked. Paths to key files are not
// secrets and stay.
func (c Config) Redacted() Config {
	c.Manifest.URL = redactURL(c.Manifest.URL)
	c.Manifest.ShardURL = redactTemplate(c.Manifest.ShardURL)
	argv := slices.Clone(c.Health.Command.Argv)
	for i, a := range argv {
		argv[i] = redact.Arg(a)
	}
	c.Health.Command.Argv = argv
	return c
}

// redactURL masks credentials; "" stays "", and a plain path (a directory
// source) has none.
func redactURL(raw string) string {
	if raw == "" {
		return ""
	}
	return redact.URL(raw)
}

// redactTemplate is redactURL for manifest.shard_url, keeping {kernel} as
// written (re-encoding a masked URL would show it as %7Bkernel%7D).
func redactTemplate(raw string) string {
	const marker = "klp-shard-kernel-placeholder"
	return strings.ReplaceAll(redactURL(strings.ReplaceAll(raw, "{kernel}", marker)), marker, "{kernel}")
}
