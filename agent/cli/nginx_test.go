package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/manifest"
)

const testKernel = "6.1.0-28-amd64"

// run invokes the CLI as a user would and fails the test on a non-zero exit.
func run(t *testing.T, now time.Time, args ...string) string {
	t.Helper()
	out, code := runCode(t, now, args...)
	if code != 0 {
		t.Fatalf("klp-agent %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

func runCode(t *testing.T, now time.Time, args ...string) (string, int) {
	t.Helper()
	var buf bytes.Buffer
	code := Main(args, &Env{Stdout: &buf, Stderr: &buf, Now: func() time.Time { return now }})
	return buf.String(), code
}

// replaceAtomically publishes like an operator should: write aside, rename.
// nginx's ETag is mtime+size, so the test moves mtime on to make sure a
// same-second, same-size replacement still reads as a change.
func replaceAtomically(t *testing.T, path string, data []byte, mtime time.Time) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestPublishAndFetchThroughNginx is the manifest trust chain end to end:
// publish with the CLI, serve with a real nginx, fetch with the agent's
// fetcher: 200, then 304, a new version after an atomic replace, and a
// tampered file rejected while the accepted manifest stays in force.
func TestPublishAndFetchThroughNginx(t *testing.T) {
	now := time.Now().UTC()
	dir := t.TempDir()
	www := filepath.Join(dir, "www")
	keys := filepath.Join(dir, "keys")
	for _, d := range []string{filepath.Join(www, "rpms"), keys} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src := filepath.Join(dir, "manifest.yaml")
	envPath := filepath.Join(www, "manifest.json")

	out := run(t, now, "manifest", "keygen", "--out", filepath.Join(keys, "release"))
	if !strings.Contains(out, "key id ") {
		t.Fatalf("keygen output: %s", out)
	}
	publish := func(level int) {
		rpm := rpmtest.Build(t, filepath.Join(www, "rpms"), rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_" + string(rune('0'+level)), Level: level, KernelRelease: testKernel})
		run(t, now, "manifest", "add", "--manifest", src, "--rpm", rpm, "--url", "rpms/"+filepath.Base(rpm))
		signed := filepath.Join(dir, "signed.json")
		run(t, now, "manifest", "sign", "--in", src, "--key", filepath.Join(keys, "release.key"), "--out", signed)
		b, err := os.ReadFile(signed)
		if err != nil {
			t.Fatal(err)
		}
		replaceAtomically(t, envPath, b, now.Add(time.Duration(level)*time.Second))
	}
	publish(1)
	run(t, now, "manifest", "verify", "--envelope", envPath, "--keys-dir", keys)
	if out := run(t, now, "manifest", "lint", envPath); !strings.Contains(out, "valid") {
		t.Fatalf("lint: %s", out)
	}

	srv := nginxtest.Start(t, www)
	kr, err := manifest.LoadKeyring(keys)
	if err != nil {
		t.Fatal(err)
	}
	f, err := manifest.NewFetcher(manifest.FetcherConfig{URL: srv.URL + "/manifest.json", Timeout: 10 * time.Second, RetryWait: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	src0 := &manifest.Source{Fetcher: f, Trust: manifest.Trust{Keys: kr, Threshold: 1},
		Store: &manifest.FileVersionStore{Path: filepath.Join(stateDir, "v.json")},
		Cache: manifest.CacheFiles{Envelope: filepath.Join(stateDir, "m.json"), Validators: filepath.Join(stateDir, "v.json.validators")}}
	ctx := context.Background()

	res, err := src0.Poll(ctx)
	if err != nil || res.Status != http.StatusOK || !res.Changed || res.Manifest.Version != 1 {
		t.Fatalf("first poll: status %d changed %v err %v", res.Status, res.Changed, err)
	}
	res, err = src0.Poll(ctx)
	if err != nil || res.Status != http.StatusNotModified || res.Changed || res.Manifest.Version != 1 {
		t.Fatalf("unchanged poll: status %d changed %v err %v", res.Status, res.Changed, err)
	}

	// The relative RPM URL resolves against the manifest URL and nginx
	// serves exactly the bytes whose size and sha256 were pinned.
	p := &res.Manifest.Patches[0]
	u, err := manifest.ResolveURL(f.URL(), p)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	sum := sha256.Sum256(body)
	if resp.StatusCode != 200 || int64(len(body)) != p.Size || hex.EncodeToString(sum[:]) != p.SHA256 {
		t.Fatalf("RPM at %s: status %d, %d bytes, sha256 %x; manifest pins %d bytes %s", u, resp.StatusCode, len(body), sum, p.Size, p.SHA256)
	}

	publish(2)
	res, err = src0.Poll(ctx)
	if err != nil || res.Status != http.StatusOK || !res.Changed || res.Manifest.Version != 2 || len(res.Manifest.Patches) != 2 {
		t.Fatalf("poll after replace: status %d changed %v err %v", res.Status, res.Changed, err)
	}

	// Tamper with the served file: bump a level inside the signed payload.
	good, _ := os.ReadFile(envPath)
	var env map[string]any
	if err := json.Unmarshal(good, &env); err != nil {
		t.Fatal(err)
	}
	payload, _ := base64.StdEncoding.DecodeString(env["payload"].(string))
	if !bytes.Contains(payload, []byte(`"level":2`)) {
		t.Fatalf("payload to tamper with:\n%s", payload)
	}
	env["payload"] = base64.StdEncoding.EncodeToString(bytes.Replace(payload, []byte(`"level":2`), []byte(`"level":9`), 1))
	bad, _ := json.Marshal(env)
	replaceAtomically(t, envPath, bad, now.Add(time.Minute))
	res, err = src0.Poll(ctx)
	if !errors.Is(err, manifest.ErrBadSignature) {
		t.Fatalf("tampered manifest: err %v, want ErrBadSignature", err)
	}
	if res.Manifest == nil || res.Manifest.Version != 2 {
		t.Fatalf("tampered manifest displaced the accepted one: %+v", res.Manifest)
	}
	if _, code := runCode(t, now, "manifest", "verify", "--envelope", envPath, "--keys-dir", keys); code != 1 {
		t.Fatalf("verify of tampered file exited %d, want 1", code)
	}

	// explain, configured like a host, fetches from nginx (good file back).
	replaceAtomically(t, envPath, good, now.Add(2*time.Minute))
	root := t.TempDir()
	writeHostRoot(t, root, testKernel, "0123456789abcdef0123456789abcdef")
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("manifest:\n  url: "+srv.URL+"/manifest.json\ntrust:\n  keys_dir: "+keys+"\npaths:\n  root: "+root+"\n  state_dir: "+stateDir+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out = run(t, now, "explain", "--config", cfg)
	if !strings.Contains(out, "wanted:   klp_cmdline_2 level 2") || !strings.Contains(out, "superseded by level 2") {
		t.Fatalf("explain output:\n%s", out)
	}
}

func writeHostRoot(t *testing.T, root, kernel, machineID string) {
	t.Helper()
	for p, c := range map[string]string{"proc/sys/kernel/osrelease": kernel + "\n", "etc/machine-id": machineID + "\n",
		"proc/sys/kernel/random/boot_id": "b0071d00-0000-4000-8000-000000000001\n"} {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
