package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// Key is one configuration setting as klp-agent(8) lists it.
type Key struct {
	Name    string // "manifest.poll_interval"
	Default string // "" when it has none
	Doc     string
}

// keyDocs says what each setting does; TestKeysDocumented fails when a
// setting of Config has no entry here (or an entry names no setting).
var keyDocs = map[string]string{
	"manifest.url":                      "The signed manifest: an http(s) URL, a file:// URL or an absolute path (a directory: its manifest.json). Required to poll.",
	"manifest.shard_url":                "Poll only this kernel's signed shard (written by manifest shard) instead of manifest.url: a URL or absolute path template whose file name holds {kernel}, the exact uname -r. Needs manifest.url.",
	"manifest.ca_bundle":                "Extra PEM CAs besides the system roots, for the manifest and RPM downloads.",
	"manifest.client_cert":              "PEM client certificate for a mirror that requires mutual TLS (with client_key).",
	"manifest.client_key":               "PEM key of client_cert. A secret: keep the configuration 0640 root:root.",
	"manifest.poll_interval":            "Poll every interval, plus or minus poll_jitter of it (at least 10s).",
	"manifest.poll_jitter":              "Jitter, as a fraction of poll_interval.",
	"manifest.timeout":                  "Deadline per poll, retries included.",
	"manifest.retries":                  "Retries on 5xx, 429 and connection errors.",
	"manifest.idle_timeout":             "A response that sends nothing for this long is abandoned.",
	"manifest.max_size":                 "Largest manifest accepted (at most 64MiB).",
	"manifest.revocations_url":          "The fast revocation channel's signed revocations.json (default: beside manifest.url).",
	"manifest.revocations_interval":     "Poll revocations.json every interval, plus or minus poll_jitter of it (0: off; else at least 5s).",
	"manifest.max_expiry":               "Refuse a manifest that expires more than this after its signed_at (or the host's clock at fetch time).",
	"trust.keys_dir":                    "Trusted ed25519 *.pub keys (without trust.root).",
	"trust.threshold":                   "Distinct trusted signatures required (without trust.root).",
	"trust.root":                        "Provisioned root of trust (root.json); when set, the newest root on the chain names the keys and threshold.",
	"host.id":                           "Rollout identity; overrides id_file.",
	"host.id_file":                      "File holding the rollout identity, under paths.root.",
	"host.tier":                         "Rollout tier (e.g. canary).",
	"apply.soak":                        "How long a new level must run without a regression before it is good.",
	"apply.transition_timeout":          "A transition still running after this is stalled: reversed and retried at the next poll.",
	"apply.force_on_stall":              "Force a stalled transition instead of reversing it (the module can then never be unloaded).",
	"apply.rpm_nodeps":                  "rpm --nodeps (kpatch-patch RPMs require kernel-uname-r, which Debian's rpm database lacks).",
	"apply.rpm_scripts":                 "Let livepatch packages' scriptlets and triggers run (off: the agent loads livepatches itself).",
	"apply.require_signature":           "rpmkeys --checksig must say the package signatures are OK.",
	"apply.rpm_keyring":                 "Keyring for rpmkeys (default: rpm's own).",
	"apply.rpm_dbpath":                  "rpm's database path (Debian's rpm keeps it under /root, which the unit's ProtectHome hides).",
	"apply.windows":                     "Maintenance windows for new levels: {days: [mon..sun], start: \"HH:MM\", end: \"HH:MM\", timezone: IANA}; none: any time.",
	"health.kmsg":                       "Follow /dev/kmsg for kernel reports.",
	"health.netconsole.listen":          "UDP address of the netconsole receiver (extended format only); empty: off.",
	"health.netconsole.allow":           "Senders (addresses or CIDRs) whose netconsole records count; required to listen.",
	"health.netconsole.require_release": "Drop netconsole records that name no kernel release (off: kept, but their reports never roll back).",
	"health.netconsole.acts":            "A netconsole report naming this host's kernel release may roll back on its own.",
	"health.kdump_dir":                  "kdump dumps (kdump-tools and kexec-tools layouts), under paths.root; empty: no kdump scan.",
	"health.pstore_dir":                 "pstore's kmsg_dump records (ramoops, efi-pstore), under paths.root, read after a reboot and never deleted; empty: no pstore scan.",
	"health.taint":                      "Watch /proc/sys/kernel/tainted for new D and W bits.",
	"health.taint_interval":             "How often the taint flags are read.",
	"health.command.argv":               "The operator's health command, run without a shell; empty: none.",
	"health.command.timeout":            "Its timeout (its process group is killed).",
	"health.command.interval":           "How often it runs.",
	"health.command.failures":           "Consecutive failures that count as one command event.",
	"health.policy":                     "Which events roll back: see README, Health.",
	"metrics.textfile":                  "node_exporter textfile collector file (*.prom), written atomically.",
	"metrics.listen":                    "/metrics on a loopback host:port or unix:/path.sock.",
	"metrics.socket_mode":               "Mode of the metrics unix socket.",
	"paths.root":                        "Root for /proc, /sys and id_file.",
	"paths.state_dir":                   "The agent's state (root's alone, 0700).",
	"paths.status_file":                 "The world-readable status snapshot the daemon writes.",
	"log.level":                         "debug, info, warn or error.",
	"log.format":                        "auto (journald when stderr is the journal, else console), journal, console or json.",
}

// Keys lists every setting with its built-in default, in the order of
// Config, for klp-agent(8).
func Keys() []Key {
	var out []Key
	walkKeys("", reflect.ValueOf(Default()), &out)
	return out
}

func walkKeys(prefix string, v reflect.Value, out *[]Key) {
	t := v.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		full := strings.TrimPrefix(prefix+"."+name, ".")
		f := v.Field(i)
		// Recurse into this package's own sections; other types (a policy,
		// window specs) are one setting.
		if f.Kind() == reflect.Struct && f.Type().PkgPath() == t.PkgPath() {
			walkKeys(full, f, out)
			continue
		}
		*out = append(*out, Key{Name: full, Default: defaultString(f), Doc: keyDocs[full]})
	}
}

func defaultString(f reflect.Value) string {
	switch x := f.Interface().(type) {
	case time.Duration:
		if x == 0 {
			return ""
		}
		return x.String()
	case fmt.Stringer:
		return x.String()
	}
	switch f.Kind() {
	case reflect.String:
		return f.String()
	case reflect.Slice, reflect.Map:
		if f.Len() == 0 {
			return ""
		}
		if f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String {
			return strings.Join(f.Interface().([]string), ", ")
		}
		return "see README"
	case reflect.Struct:
		return "see README"
	case reflect.Bool:
		if f.Bool() {
			return "true"
		}
		return "false"
	}
	if f.IsZero() {
		return ""
	}
	return fmt.Sprint(f.Interface())
}
