package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/manifest"
)

// yamlSource writes an unsigned manifest source of exactly size bytes
// (entries, then a comment as padding) and returns its path.
func yamlSource(t *testing.T, dir string, size int) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("schema: 1\nversion: 3\nexpires: 2026-12-20T00:00:00Z\npatches:\n")
	for i := 0; b.Len() < size-600 && i < 400; i++ {
		fmt.Fprintf(&b, "  - kernel: 6.1.0-%d-amd64\n    name: klp_cmdline_1\n    level: 1\n    url: https://cdn.example/klp-%d.rpm\n    sha256: %064x\n    size: 9000\n", i, i, i)
	}
	b.WriteString("# ")
	b.WriteString(strings.Repeat("x", size-b.Len()-1))
	b.WriteString("\n")
	path := filepath.Join(dir, fmt.Sprintf("m%d.yaml", size))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != int64(size) {
		t.Fatalf("source is not %d bytes: %v", size, err)
	}
	return path
}

// manifest sign refuses to sign a YAML payload hosts would refuse (over
// manifest.MaxYAMLPayload), warns over half of it, and by default signs
// the canonical JSON rendering of a YAML source of any size, which hosts
// parse without that bound. On the old code the over-cap --format yaml
// row signed (exit 0) an envelope every host then spent 300-400 ms on.
func TestSignYAMLPayloadCap(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	run(t, now, "manifest", "keygen", "--out", filepath.Join(dir, "k"))
	key, pub := filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub")
	small, warn, over := yamlSource(t, dir, 300), yamlSource(t, dir, 200<<10), yamlSource(t, dir, 300<<10)
	for _, tc := range []struct {
		name, in string
		yaml     bool
		code     int
		out      string // a line of the output; "" = no warning at all
		json     bool   // the signed payload is JSON
	}{
		{"small yaml source, yaml payload", small, true, 0, "", false},
		{"yaml over half the cap: signed, with a warning", warn, true, 0,
			"warning: YAML payload of 204800 bytes: hosts refuse one over 262144 (256 KiB); sign it as JSON ('manifest sign' without --format yaml) before it grows past that", false},
		{"yaml over the cap: refused", over, true, 1,
			"manifest too large: YAML payload over 256 KiB: 307200 bytes, hosts parse at most 262144 as YAML; sign it as JSON ('manifest sign' without --format yaml), which every agent reads", false},
		{"yaml source over the cap, default payload: JSON", over, false, 0, "", true},
		{"small yaml source, default payload: JSON", small, false, 0, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			envPath := filepath.Join(t.TempDir(), "m.json")
			args := []string{"manifest", "sign", "--in", tc.in, "--key", key, "--out", envPath}
			if tc.yaml {
				args = append(args, "--format", "yaml")
			}
			out, code := runCode(t, now, args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s", code, tc.code, out)
			}
			if tc.out == "" && strings.Contains(out, "warning") {
				t.Fatalf("unexpected warning:\n%s", out)
			}
			if tc.out != "" && !strings.Contains(out, tc.in+": "+tc.out+"\n") {
				t.Fatalf("output lacks %q:\n%s", tc.in+": "+tc.out, out)
			}
			if code != 0 {
				if _, err := os.Stat(envPath); !os.IsNotExist(err) {
					t.Fatalf("a refused sign wrote %s: %v", envPath, err)
				}
				return
			}
			p, err := manifest.EnvelopePayload(readFile(t, envPath))
			if err != nil {
				t.Fatal(err)
			}
			if manifest.IsJSONPayload(p) != tc.json {
				t.Fatalf("payload is JSON: %v, want %v", !tc.json, tc.json)
			}
			run(t, now, "manifest", "verify", "--envelope", envPath, "--pub", pub)
		})
	}
}

// An envelope whose YAML payload is over the cap (signed by an older
// klp-agent, or by hand) is refused by 'manifest verify' as hosts refuse
// it, is an error for 'manifest lint', and is not co-signed. The source it
// came from lints clean: YAML is the hand-editing format. A YAML envelope
// over half the cap lints with a warning and verifies.
func TestYAMLEnvelopeCap(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	run(t, now, "manifest", "keygen", "--out", filepath.Join(dir, "k"))
	run(t, now, "manifest", "keygen", "--out", filepath.Join(dir, "k2"))
	signer, err := manifest.LoadSigner(filepath.Join(dir, "k.key"))
	if err != nil {
		t.Fatal(err)
	}
	envelope := func(src string) string {
		env, err := manifest.SignPayload(context.Background(), readFile(t, src), signer)
		if err != nil {
			t.Fatal(err)
		}
		path := strings.TrimSuffix(src, ".yaml") + ".json"
		if err := os.WriteFile(path, env, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	warnSrc, overSrc := yamlSource(t, dir, 200<<10), yamlSource(t, dir, 300<<10)
	warnEnv, overEnv := envelope(warnSrc), envelope(overSrc)
	const refused = "manifest too large: YAML payload over 256 KiB: 307200 bytes, hosts parse at most 262144 as YAML; sign it as JSON ('manifest sign' without --format yaml), which every agent reads"
	before := readFile(t, overEnv)
	for _, tc := range []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"verify over the cap", []string{"manifest", "verify", "--envelope", overEnv, "--pub", filepath.Join(dir, "k.pub")}, 1, overEnv + ": " + refused},
		{"lint over the cap", []string{"manifest", "lint", overEnv}, 1, overEnv + ": error: " + refused},
		{"co-sign over the cap", []string{"manifest", "sign", "--envelope", overEnv, "--key", filepath.Join(dir, "k2.key")}, 1, overEnv + ": " + refused},
		{"lint the source over the cap", []string{"manifest", "lint", overSrc}, 0, overSrc + ": version 3, 400 patch(es), 0 revoked: valid, 0 warning(s)"},
		{"verify over half the cap", []string{"manifest", "verify", "--envelope", warnEnv, "--pub", filepath.Join(dir, "k.pub")}, 0, "OK: " + warnEnv + " version 3"},
		{"lint over half the cap", []string{"manifest", "lint", warnEnv}, 0, warnEnv + ": warning: YAML payload of 204800 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runCode(t, now, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.out) {
				t.Fatalf("exit %d, want %d and %q in:\n%s", code, tc.code, tc.out, out)
			}
		})
	}
	if string(readFile(t, overEnv)) != string(before) {
		t.Fatal("the refused co-sign changed the envelope")
	}
}
