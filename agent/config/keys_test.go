package config

import (
	"strings"
	"testing"
)

// Every setting is in klp-agent(8) with a description: a new key without
// one fails here, and so does a description that names no key.
func TestKeysDocumented(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range Keys() {
		seen[k.Name] = true
		if k.Doc == "" {
			t.Errorf("%s: no description in keyDocs", k.Name)
		}
	}
	for name := range keyDocs {
		if !seen[name] {
			t.Errorf("keyDocs has %s, which is no setting", name)
		}
	}
	var got []string
	for _, k := range Keys() {
		if k.Name == "manifest.poll_interval" || k.Name == "paths.state_dir" || k.Name == "health.kmsg" || k.Name == "manifest.max_size" {
			got = append(got, k.Name+"="+k.Default)
		}
	}
	if s := strings.Join(got, " "); s != "manifest.poll_interval=15m0s manifest.max_size=4MiB health.kmsg=true paths.state_dir=/var/lib/klp-agent" {
		t.Fatalf("defaults: %s", s)
	}
}
