package cli

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/testutil/runtest"
	"github.com/klp-agent/klp-agent/internal/testutil/syncbuf"
)

// Credentials in manifest.url (user:password@ and a query token) and a
// secret-like health command argument never appear in check-config, the
// daemon's log (start-up, every retry and failure of a poll), the state's
// poll error as status shows it, status (text and JSON, patch URLs
// resolved against manifest.url included) or the metrics textfile; the
// redacted URL and the error do.
func TestSecretsNeverPrinted(t *testing.T) {
	const password, token, argSecret = "pa55-s3cret", "T0KEN-s3cret", "hunter2-s3cret"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "mirror down", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	secretURL := "http://mirror:" + password + "@" + host + "/klp/manifest.json?token=" + token
	shownURL := "http://mirror:xxxxx@" + host + "/klp/manifest.json?token=xxxxx"
	textfile := filepath.Join(t.TempDir(), "klp-agent.prom")
	dir, keys, cfg := hostConfig(t, "manifest:\n  url: "+secretURL+"\n  retries: 1\n  timeout: 20s\n"+
		"health:\n  kmsg: false\n  taint: false\n  kdump_dir: \"\"\n  command:\n    argv: [/usr/local/bin/check, --password="+argSecret+"]\n"+
		"metrics:\n  textfile: "+textfile+"\nlog:\n  level: debug\n  format: console\n")
	run(t, t0, "manifest", "keygen", "--out", filepath.Join(keys, "release"))
	stateDir := filepath.Join(dir, "state")
	if err := os.MkdirAll(filepath.Join(dir, "config.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "config.d", "10-state.yaml"), []byte("paths:\n  state_dir: "+stateDir+"\n"), 0o644)

	outputs := map[string]string{}
	outputs["check-config"] = run(t, t0, "check-config", "--config", cfg)
	if !strings.Contains(outputs["check-config"], "url: "+shownURL) || !strings.Contains(outputs["check-config"], "--password=xxxxx") {
		t.Errorf("check-config does not show the redacted settings:\n%s", outputs["check-config"])
	}

	logs := &syncbuf.Buffer{}
	stop := runtest.Start(t, func(ctx context.Context) error {
		if code := Main([]string{"run", "--config", cfg}, &Env{Stdout: logs, Stderr: logs, Ctx: ctx}); code != 0 {
			t.Errorf("run: exit %d", code)
		}
		return nil
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "manifest poll failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no failed poll in the log:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	outputs["daemon log"] = logs.String()
	for _, want := range []string{
		"MANIFEST_URL", shownURL, // start-up
		"retrying request: GET " + shownURL + " (status: 503)", // each retry, with the URL and why
		"manifest poll failed: fetch " + shownURL,              // the failure, with the URL and the error
		"mirror down",
	} {
		if !strings.Contains(outputs["daemon log"], want) {
			t.Errorf("the daemon's log lacks %q:\n%s", want, outputs["daemon log"])
		}
	}

	// Patch URLs resolved against manifest.url carry its credentials in
	// the (root-only) state file, which needs them to download again.
	store := &state.Store{Dir: stateDir}
	st, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	rpmURL := "http://mirror:" + password + "@" + host + "/klp/rpms/klp-1.rpm?token=" + token
	rec := func(level int) state.PatchRecord {
		return state.PatchRecord{Name: "klp_cmdline_1", Level: level, SHA256: strings.Repeat("ab", 32), Size: 10, URL: rpmURL}
	}
	cur := rec(2)
	k := st.Kernel(testKernel)
	k.Phase, k.Current, k.Good = state.PhaseGood, &cur, []state.PatchRecord{rec(1)}
	k.Blocked = []state.Blocked{{PatchRecord: rec(3), Reason: "GET " + rpmURL + ": digest mismatch", At: t0}}
	if err := store.Save(st); err != nil {
		t.Fatal(err)
	}
	outputs["status"] = run(t, t0, "status", "--config", cfg)
	outputs["status --json"] = run(t, t0, "status", "--config", cfg, "--json")
	if !strings.Contains(outputs["status --json"], "http://mirror:xxxxx@"+host+"/klp/rpms/klp-1.rpm?token=xxxxx") {
		t.Errorf("status --json does not show the redacted patch URL:\n%s", outputs["status --json"])
	}
	b, err := os.ReadFile(textfile)
	if err != nil {
		t.Fatal(err)
	}
	outputs["metrics textfile"] = string(b)
	for name, out := range outputs {
		for _, secret := range []string{password, token, argSecret} {
			if strings.Contains(out, secret) {
				t.Errorf("%s shows %q:\n%s", name, secret, out)
			}
		}
	}
}

// explain fetching manifest.url names the source with its credentials
// masked.
func TestExplainRedactsURL(t *testing.T) {
	dir, _, env := publisherFixture(t)
	body, err := os.ReadFile(env)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "mirror" || p != "pa55-s3cret" || r.URL.Query().Get("token") != "T0KEN-s3cret" {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		w.Write(body)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	_, keys, cfg := hostConfig(t, "manifest:\n  url: http://mirror:pa55-s3cret@"+host+"/m.json?token=T0KEN-s3cret\n")
	pub, _ := os.ReadFile(filepath.Join(dir, "a.pub"))
	os.WriteFile(filepath.Join(keys, "a.pub"), pub, 0o644)
	out := run(t, t0, "explain", "--config", cfg)
	if strings.Contains(out, "s3cret") || !strings.Contains(out, "manifest: http://mirror:xxxxx@"+host+"/m.json?token=xxxxx version") {
		t.Fatalf("explain:\n%s", out)
	}
}
