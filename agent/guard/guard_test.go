package guard

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/internal/testutil/syncbuf"
	"github.com/klp-agent/klp-agent/internal/testutil/tlstest"
	"github.com/klp-agent/klp-agent/manifest"
)

var now = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

const token = "s3cret-token-of-the-guard-0123456789"

type key struct {
	path string
	id   string
	s    *manifest.Signer
	pub  []byte
}

func newKey(t *testing.T, dir, name string) key {
	t.Helper()
	priv, pub, id, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name+".key")
	if err := os.WriteFile(p, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := manifest.LoadSigner(p)
	if err != nil {
		t.Fatal(err)
	}
	return key{p, id, s, pub}
}

// fixture is a publisher's machine: a root with root, release and revoke
// keys, a fake Prometheus, and the guard's configuration.
type fixture struct {
	dir                    string
	rootK, relK, revK      key
	rootPath, file, tokenF string
	trust                  manifest.RevocationsTrust

	mu      sync.Mutex
	budget  map[string]string   // patch -> value Prometheus answers ("" = no series)
	levels  map[string][]string // patch -> levels hosts ran
	queries []string
	promErr bool
	prom    *httptest.Server

	runs   [][]string
	runErr error
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), budget: map[string]string{}, levels: map[string][]string{}}
	f.rootK, f.relK, f.revK = newKey(t, f.dir, "root"), newKey(t, f.dir, "release"), newKey(t, f.dir, "revoke")
	r := &manifest.Root{Type: manifest.RootType, Version: 1, Expires: now.Add(365 * 24 * time.Hour), Keys: map[string]manifest.RootKey{}}
	for _, k := range []key{f.rootK, f.relK, f.revK} {
		pub, err := manifest.ParsePublicKey(k.pub)
		if err != nil {
			t.Fatal(err)
		}
		id, rk := manifest.NewRootKey(pub)
		r.Keys[id] = rk
	}
	r.Roles.Root = manifest.Role{KeyIDs: []string{f.rootK.id}, Threshold: 1}
	r.Roles.Manifest = manifest.Role{KeyIDs: []string{f.relK.id}, Threshold: 1}
	r.Roles.Revoke = &manifest.Role{KeyIDs: []string{f.revK.id}, Threshold: 1}
	rb, err := manifest.SignRoot(context.Background(), r, f.rootK.s)
	if err != nil {
		t.Fatal(err)
	}
	f.rootPath = filepath.Join(f.dir, "root.1.json")
	if err := os.WriteFile(f.rootPath, rb, 0o644); err != nil {
		t.Fatal(err)
	}
	rt, err := manifest.LoadRootTrust(rb, "")
	if err != nil {
		t.Fatal(err)
	}
	f.trust = manifest.RevocationsTrust{Root: rt}
	f.file = filepath.Join(f.dir, "www", "revocations.json")
	if err := os.Mkdir(filepath.Dir(f.file), 0o755); err != nil {
		t.Fatal(err)
	}
	f.tokenF = filepath.Join(f.dir, "token")
	if err := os.WriteFile(f.tokenF, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.prom = httptest.NewServer(http.HandlerFunc(f.serveProm))
	t.Cleanup(f.prom.Close)
	return f
}

// serveProm answers /api/v1/query as Prometheus does, for the guard's two
// default queries.
func (f *fixture) serveProm(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q := r.URL.Query().Get("query")
	f.queries = append(f.queries, q)
	if r.URL.Path != "/api/v1/query" || f.promErr {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"status":"error","errorType":"unavailable","error":"rule evaluation stopped"}`)
		return
	}
	var result []string
	for patch, v := range f.budget {
		if v != "" && q == subst(DefaultQuery, patch, "", "") {
			result = append(result, fmt.Sprintf(`{"metric":{"patch":%q},"value":[%d.123,%q]}`, patch, now.Unix(), v))
		}
	}
	for patch, ls := range f.levels {
		if q == subst(DefaultLevelQuery, patch, "", "") {
			for _, l := range ls {
				result = append(result, fmt.Sprintf(`{"metric":{"level":%q},"value":[%d,"40"]}`, l, now.Unix()))
			}
		}
	}
	fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":[%s]}}`, strings.Join(result, ","))
}

func (f *fixture) config(t *testing.T, extra string) *Config {
	t.Helper()
	y := fmt.Sprintf("token_file: %s\nprometheus:\n  url: %s\nroot: %s\nkey: %s\nfile: %s\n%s",
		f.tokenF, f.prom.URL, f.rootPath, f.revK.path, f.file, extra)
	c, err := ParseConfig([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type running struct {
	g      *Guard
	srv    *httptest.Server
	logs   *observer.ObservedLogs
	stdout *bytes.Buffer
}

func (f *fixture) start(t *testing.T, cfg *Config, dryRun bool) *running {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	out := &bytes.Buffer{}
	g, err := New(cfg, dryRun, Deps{Now: func() time.Time { return now }, HTTP: f.prom.Client(), Log: zap.New(core), Stdout: out,
		Run: func(_ context.Context, argv []string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.runs = append(f.runs, argv)
			return f.runErr
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g.Handler())
	t.Cleanup(srv.Close)
	return &running{g, srv, logs, out}
}

func webhookBody(alerts ...Alert) []byte {
	b, _ := json.Marshal(map[string]any{"version": "4", "status": "firing", "receiver": "klp-guard",
		"groupLabels": map[string]string{"alertname": DefaultAlertName}, "alerts": alerts})
	return b
}

func alert(labels ...string) Alert {
	l := map[string]string{"alertname": DefaultAlertName, "severity": "page"}
	for i := 0; i+1 < len(labels); i += 2 {
		l[labels[i]] = labels[i+1]
	}
	return Alert{Status: "firing", Labels: l, StartsAt: now.Add(-2 * time.Minute), Fingerprint: "a1b2c3d4e5f60718"}
}

func (r *running) post(t *testing.T, auth string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, r.srv.URL+WebhookPath, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// published verifies the file as a host does (the root's revoke role).
func (f *fixture) published(t *testing.T) *manifest.VerifiedRevocations {
	t.Helper()
	b, err := os.ReadFile(f.file)
	if err != nil {
		t.Fatal(err)
	}
	v, err := f.trust.Verify(b, now.Add(time.Minute), &manifest.RevocationsStore{})
	if err != nil {
		t.Fatalf("a host refuses the published document: %v", err)
	}
	if v.ByRelease {
		t.Fatal("the document verified as the release role's: the guard must sign with the revoke key only")
	}
	return v
}

func decisions(logs *observer.ObservedLogs) []observer.LoggedEntry {
	var out []observer.LoggedEntry
	for _, e := range logs.All() {
		if e.ContextMap()["MESSAGE_ID"] == agent.MsgGuardDecision {
			out = append(out, e)
		}
	}
	return out
}

func TestWebhookDecisions(t *testing.T) {
	for _, tc := range []struct {
		name       string
		alert      Alert
		budget     string   // Prometheus's answer for klp_bad ("" = under budget: no series)
		levels     []string // levels hosts ran, for alerts without a level label
		promErr    bool
		wantCode   int
		wantAction string
		wantRev    []manifest.Revoked
		wantPause  []manifest.Pause
	}{
		{name: "firing and confirmed: revoked", alert: alert("patch", "klp_bad", "level", "3"), budget: "12.5",
			wantCode: 200, wantAction: ActionRevoked, wantRev: []manifest.Revoked{{Name: "klp_bad", Level: 3}}},
		{name: "kernel label: revoked on that kernel only", alert: alert("patch", "klp_bad", "level", "3", "kernel", "6.1.0-13-amd64"), budget: "2",
			wantCode: 200, wantAction: ActionRevoked, wantRev: []manifest.Revoked{{Name: "klp_bad", Level: 3, Kernel: "6.1.0-13-amd64"}}},
		{name: "forged: Prometheus sees no budget exceeded", alert: alert("patch", "klp_bad", "level", "3"), budget: "",
			wantCode: 200, wantAction: ActionUnconfirmed},
		{name: "canary tier: ramp paused, not revoked", alert: alert("patch", "klp_bad", "level", "3", "tier", "canary"), budget: "4",
			wantCode: 200, wantAction: ActionPaused, wantPause: []manifest.Pause{{Name: "klp_bad", Level: 3}}},
		{name: "shipped rule (no level label): the one level hosts ran", alert: alert("patch", "klp_bad"), budget: "3", levels: []string{"2"},
			wantCode: 200, wantAction: ActionRevoked, wantRev: []manifest.Revoked{{Name: "klp_bad", Level: 2}}},
		{name: "no level label and two levels ran: refused", alert: alert("patch", "klp_bad"), budget: "3", levels: []string{"2", "3"},
			wantCode: 200, wantAction: ActionRefused},
		{name: "controls in the fingerprint stay out of the signed reason", alert: func() Alert {
			a := alert("patch", "klp_bad", "level", "3")
			a.Fingerprint = "a1b2\x1b[2Jc3"
			return a
		}(), budget: "12.5", wantCode: 200, wantAction: ActionRevoked, wantRev: []manifest.Revoked{{Name: "klp_bad", Level: 3}}},
		{name: "PromQL in the patch label: refused, not queried", alert: alert("patch", `klp_bad"} or vector(1) or {x="`, "level", "3"), budget: "3",
			wantCode: 200, wantAction: ActionRefused},
		{name: "Prometheus down: 503 for Alertmanager to retry", alert: alert("patch", "klp_bad", "level", "3"), budget: "3", promErr: true,
			wantCode: 503, wantAction: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.budget["klp_bad"], f.levels["klp_bad"], f.promErr = tc.budget, tc.levels, tc.promErr
			r := f.start(t, f.config(t, ""), false)
			if code := r.post(t, "Bearer "+token, webhookBody(tc.alert)); code != tc.wantCode {
				t.Fatalf("webhook answered %d, want %d", code, tc.wantCode)
			}
			ds := decisions(r.logs)
			if len(ds) != 1 {
				t.Fatalf("%d decisions journalled, want 1: %v", len(ds), ds)
			}
			ctx := ds[0].ContextMap()
			if ctx["klp_guard_action"] != tc.wantAction || ctx["klp_alert_fingerprint"] != tc.alert.Fingerprint ||
				!strings.Contains(ctx["klp_alert_labels"].(string), `"alertname":"KLPPatchCrashBudgetExceeded"`) {
				t.Errorf("journalled %v, want action %q with the alert's labels and fingerprint", ctx, tc.wantAction)
			}
			if tc.wantAction == ActionRevoked && fmt.Sprint(ctx["klp_prometheus_value"]) != tc.budget {
				t.Errorf("journalled Prometheus value %v, want %s", ctx["klp_prometheus_value"], tc.budget)
			}
			if tc.wantRev == nil && tc.wantPause == nil {
				if _, err := os.Stat(f.file); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s written (%v): nothing may be signed", f.file, err)
				}
				if strings.Contains(tc.name, "refused, not queried") && len(f.queries) != 0 {
					t.Errorf("Prometheus was queried with %q", f.queries)
				}
				return
			}
			v := f.published(t)
			if v.Version != 1 || !v.Expires.Equal(now.Add(7*24*time.Hour)) {
				t.Errorf("version %d expires %s, want 1 and 7 days on", v.Version, v.Expires)
			}
			if len(v.Revoked) != len(tc.wantRev) || len(v.Paused) != len(tc.wantPause) {
				t.Fatalf("revoked %+v paused %+v, want %+v %+v", v.Revoked, v.Paused, tc.wantRev, tc.wantPause)
			}
			for i, w := range tc.wantRev {
				g := v.Revoked[i]
				fp := tc.alert.Fingerprint
				if !hexFingerprint.MatchString(fp) {
					fp = "(alert - "
				}
				if g.Name != w.Name || g.Level != w.Level || g.Kernel != w.Kernel || !strings.Contains(g.Reason, fp) {
					t.Errorf("revoked %+v, want %+v with the alert's fingerprint in the reason", g, w)
				}
			}
			for i, w := range tc.wantPause {
				g := v.Paused[i]
				if g.Name != w.Name || g.Level != w.Level || !strings.Contains(g.Reason, "tier canary") {
					t.Errorf("paused %+v, want %+v", g, w)
				}
			}
		})
	}
}

func TestWebhookAuth(t *testing.T) {
	f := newFixture(t)
	f.budget["klp_bad"] = "12"
	r := f.start(t, f.config(t, ""), false)
	for _, tc := range []struct{ name, auth string }{
		{"no credentials", ""},
		{"wrong token", "Bearer " + strings.Repeat("x", len(token))},
		{"token prefix", "Bearer " + token[:10]},
		{"basic, not bearer", "Basic " + token},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code := r.post(t, tc.auth, webhookBody(alert("patch", "klp_bad", "level", "3"))); code != http.StatusUnauthorized {
				t.Fatalf("answered %d, want 401", code)
			}
		})
	}
	n := 0
	for _, e := range r.logs.All() {
		if e.ContextMap()["MESSAGE_ID"] == agent.MsgGuardUnauthorized {
			n++
		}
	}
	if n != 4 {
		t.Errorf("%d refusals journalled, want 4", n)
	}
	if len(f.queries) != 0 || len(decisions(r.logs)) != 0 {
		t.Errorf("an unauthenticated alert reached a decision: queries %q", f.queries)
	}
	if _, err := os.Stat(f.file); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("signed without credentials")
	}
	if code := r.post(t, "Bearer "+token, []byte(`{"version":"4","alerts":[`+strings.Repeat(" ", DefaultMaxBody)+`]}`)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over max_body answered %d, want 413", code)
	}
}

// Alertmanager re-sends a firing alert every repeat_interval; a restart
// finds its state in the published document.
func TestResentAlertAndRestart(t *testing.T) {
	f := newFixture(t)
	f.budget["klp_bad"], f.budget["klp_worse"] = "12", "30"
	decisionsFile := filepath.Join(f.dir, "state", "decisions.json")
	if err := os.Mkdir(filepath.Dir(decisionsFile), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := f.config(t, "decisions_file: "+decisionsFile+"\n")
	r := f.start(t, cfg, false)
	body := webhookBody(alert("patch", "klp_bad", "level", "3"))
	if code := r.post(t, "Bearer "+token, body); code != 200 {
		t.Fatalf("answered %d", code)
	}
	first, err := os.ReadFile(f.file)
	if err != nil {
		t.Fatal(err)
	}
	if code := r.post(t, "Bearer "+token, body); code != 200 {
		t.Fatalf("resent: answered %d", code)
	}
	if again, _ := os.ReadFile(f.file); !bytes.Equal(first, again) {
		t.Fatal("a resent alert signed a new version")
	}
	if ds := decisions(r.logs); len(ds) != 2 || ds[1].ContextMap()["klp_guard_action"] != ActionAlready {
		t.Fatalf("decisions %v, want revoked then already", ds)
	}

	// A new process: its only state is the file.
	r2 := f.start(t, cfg, false)
	if code := r2.post(t, "Bearer "+token, body); code != 200 {
		t.Fatalf("after restart: answered %d", code)
	}
	if again, _ := os.ReadFile(f.file); !bytes.Equal(first, again) {
		t.Fatal("after a restart, the same alert signed a new version")
	}
	if code := r2.post(t, "Bearer "+token, webhookBody(alert("patch", "klp_worse", "level", "1"))); code != 200 {
		t.Fatalf("answered %d", code)
	}
	v := f.published(t)
	if v.Version != 2 || len(v.Revoked) != 2 || v.Revoked[0].Name != "klp_bad" || v.Revoked[1].Name != "klp_worse" {
		t.Fatalf("after restart: version %d revoked %+v, want 2 with both", v.Version, v.Revoked)
	}
	// The decisions log kept all four, across the restart, with the alert.
	rs, err := ReadDecisions(decisionsFile)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, fmt.Sprintf("%s %s@%d v%d %s", r.Action, r.Patch, r.Level, r.Version, r.Fingerprint))
	}
	want := []string{"revoked klp_bad@3 v1 a1b2c3d4e5f60718", "already klp_bad@3 v0 a1b2c3d4e5f60718",
		"already klp_bad@3 v0 a1b2c3d4e5f60718", "revoked klp_worse@1 v2 a1b2c3d4e5f60718"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("decisions_file:\n%q\nwant\n%q", got, want)
	}
	if fi, err := os.Stat(decisionsFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("decisions_file mode: %v %v", fi, err)
	}
}

func TestDryRun(t *testing.T) {
	f := newFixture(t)
	f.budget["klp_bad"] = "12"
	r := f.start(t, f.config(t, "publish_command: [aws, s3, cp, '{file}', 's3://bucket/revocations.json']\n"), true)
	if code := r.post(t, "Bearer "+token, webhookBody(alert("patch", "klp_bad", "level", "3"))); code != 200 {
		t.Fatalf("answered %d", code)
	}
	if _, err := os.Stat(f.file); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("dry run wrote the document")
	}
	if len(f.runs) != 0 {
		t.Fatalf("dry run ran %q", f.runs)
	}
	out := r.stdout.String()
	if !strings.Contains(out, "would sign and publish") || !strings.Contains(out, `"name": "klp_bad"`) || !strings.Contains(out, `"version": 1`) {
		t.Errorf("dry run printed %q", out)
	}
	if ds := decisions(r.logs); len(ds) != 1 || ds[0].ContextMap()["klp_guard_action"] != ActionDryRun {
		t.Errorf("decisions %v", ds)
	}
}

func TestPublishCommand(t *testing.T) {
	f := newFixture(t)
	f.budget["klp_bad"] = "12"
	r := f.start(t, f.config(t, "publish_command: [aws, s3, cp, '{file}', 's3://bucket/revocations.json']\n"), false)
	want := fmt.Sprint([]string{"aws", "s3", "cp", f.file, "s3://bucket/revocations.json"})
	f.runErr = errors.New("exit status 1: could not connect")
	body := webhookBody(alert("patch", "klp_bad", "level", "3"))
	if code := r.post(t, "Bearer "+token, body); code != http.StatusServiceUnavailable {
		t.Fatalf("a failed publish answered %d, want 503 (Alertmanager retries)", code)
	}
	f.runErr = nil
	// The retry finds the entry signed (already) and publishes again.
	if code := r.post(t, "Bearer "+token, body); code != 200 {
		t.Fatalf("retry answered %d", code)
	}
	if code := r.post(t, "Bearer "+token, body); code != 200 {
		t.Fatalf("third answered %d", code)
	}
	if len(f.runs) != 2 || fmt.Sprint(f.runs[0]) != want || fmt.Sprint(f.runs[1]) != want {
		t.Fatalf("ran %q, want %s twice (the failure, its retry) and no more", f.runs, want)
	}
	if v := f.published(t); v.Version != 1 {
		t.Fatalf("version %d", v.Version)
	}
	// After a restart the guard cannot know whether its last publish ran:
	// Start publishes the document once.
	r2 := f.start(t, r.g.cfg, false)
	if err := r2.g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(f.runs) != 3 || fmt.Sprint(f.runs[2]) != want {
		t.Fatalf("after a restart ran %q, want %s once more", f.runs, want)
	}
}

func TestKeyRefused(t *testing.T) {
	f := newFixture(t)
	other := newKey(t, f.dir, "other")
	for _, tc := range []struct {
		name string
		key  key
	}{{"release key", f.relK}, {"root key", f.rootK}, {"key outside the revoke role", other}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := f.config(t, "")
			cfg.Key = tc.key.path
			if _, err := New(cfg, false, Deps{}); !errors.Is(err, ErrKey) {
				t.Fatalf("got %v, want ErrKey", err)
			}
		})
	}
}

func TestRefresh(t *testing.T) {
	f := newFixture(t)
	f.budget["klp_bad"] = "12"
	r := f.start(t, f.config(t, "validity: 7d\nrefresh_before: 3d\n"), false)
	if d, err := r.g.Refresh(context.Background()); err != nil || d.Action != "" {
		t.Fatalf("no document: refresh %+v %v, want nothing", d, err)
	}
	if code := r.post(t, "Bearer "+token, webhookBody(alert("patch", "klp_bad", "level", "3"))); code != 200 {
		t.Fatalf("answered %d", code)
	}
	// Four days on, the document expires in three: not yet.
	r.g.deps.Now = func() time.Time { return now.Add(4*24*time.Hour - time.Minute) }
	if d, err := r.g.Refresh(context.Background()); err != nil || d.Action != "" {
		t.Fatalf("refresh %+v %v, want nothing", d, err)
	}
	later := now.Add(5 * 24 * time.Hour)
	r.g.deps.Now = func() time.Time { return later }
	d, err := r.g.Refresh(context.Background())
	if err != nil || d.Action != ActionRefreshed || d.Version != 2 {
		t.Fatalf("refresh %+v %v, want version 2", d, err)
	}
	b, _ := os.ReadFile(f.file)
	v, err := f.trust.Verify(b, later, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Expires.Equal(later.Add(7*24*time.Hour)) || len(v.Revoked) != 1 || v.Revoked[0].Name != "klp_bad" {
		t.Fatalf("refreshed: expires %s revoked %+v", v.Expires, v.Revoked)
	}
}

func TestConfig(t *testing.T) {
	f := newFixture(t)
	base := fmt.Sprintf("prometheus:\n  url: %s\nroot: %s\nkey: %s\nfile: %s\n", f.prom.URL, f.rootPath, f.revK.path, f.file)
	for _, tc := range []struct{ name, yaml, want string }{
		{"no authentication", base, "token_file or tls.client_ca"},
		{"unknown key", base + "token_file: x\ntokenfile: y\n", "not found"},
		{"publish command without {file}", base + "token_file: x\npublish_command: [rsync, /srv/x, host:/srv/]\n", "no {file}"},
		{"refresh after expiry", base + "token_file: x\nvalidity: 1d\nrefresh_before: 2d\n", "shorter than validity"},
		{"bad duration", base + "token_file: x\nvalidity: soon\n", "validity"},
		{"client CA without a certificate", base + "tls:\n  client_ca: /ca.pem\n", "tls.cert"},
		{"no file", "token_file: x\nprometheus:\n  url: http://p\nroot: r\nkey: k\n", "file is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrConfig with %q", err, tc.want)
			}
		})
	}
	t.Run("token readable by others", func(t *testing.T) {
		if err := os.Chmod(f.tokenF, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := New(f.config(t, ""), false, Deps{}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "0600") {
			t.Fatalf("got %v", err)
		}
	})
}

// mTLS: Serve with tls.client_ca requires a client certificate the CA
// signed (and, with token_file too, the token).
func TestServeMutualTLS(t *testing.T) {
	f := newFixture(t)
	f.budget["klp_bad"] = "12"
	pki := tlstest.New(t)
	cfg := f.config(t, fmt.Sprintf("tls:\n  cert: %s\n  key: %s\n  client_ca: %s\n", pki.ServerCert, pki.ServerKey, pki.CA))
	core, logs := observer.New(zap.DebugLevel)
	g, err := New(cfg, false, Deps{Now: func() time.Time { return now }, HTTP: f.prom.Client(), Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx, ln, time.Hour) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	caPEM, err := os.ReadFile(pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	clientCert, err := tls.LoadX509KeyPair(pki.ClientCert, pki.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	post := func(certs []tls.Certificate, auth string) int {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}}
		req, _ := http.NewRequest(http.MethodPost, "https://"+ln.Addr().String()+WebhookPath, bytes.NewReader(webhookBody(alert("patch", "klp_bad", "level", "3"))))
		req.Header.Set("Authorization", auth)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(nil, "Bearer "+token); code != http.StatusUnauthorized {
		t.Errorf("token without a client certificate: %d, want 401", code)
	}
	if code := post([]tls.Certificate{clientCert}, ""); code != http.StatusUnauthorized {
		t.Errorf("client certificate without the token: %d, want 401", code)
	}
	if _, err := os.Stat(f.file); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("signed without both credentials")
	}
	if code := post([]tls.Certificate{clientCert}, "Bearer "+token); code != 200 {
		t.Fatalf("both: %d, want 200", code)
	}
	if v := f.published(t); len(v.Revoked) != 1 {
		t.Fatalf("revoked %+v", v.Revoked)
	}
	if n := len(decisions(logs)); n != 1 {
		t.Errorf("%d decisions", n)
	}
}

// Run is what the unit starts: configuration file, logger, key check,
// listener, webhook; a cancelled context ends it with no error.
func TestRun(t *testing.T) {
	f := newFixture(t)
	f.budget["klp_bad"] = "12"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfgPath := filepath.Join(f.dir, "guard.yaml")
	y := fmt.Sprintf("listen: %s\ntoken_file: %s\nprometheus:\n  url: %s\nroot: %s\nkey: %s\nfile: %s\nlog:\n  format: json\n",
		addr, f.tokenF, f.prom.URL, f.rootPath, f.revK.path, f.file)
	if err := os.WriteFile(cfgPath, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Options{ConfigPath: cfgPath, Stdout: io.Discard, Stderr: &stderr}, nil) }()
	var code int
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+WebhookPath, bytes.NewReader(webhookBody(alert("patch", "klp_bad", "level", "3"))))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			continue // not listening yet
		}
		resp.Body.Close()
		code = resp.StatusCode
		break
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v\n%s", err, stderr.String())
	}
	if code != 200 {
		t.Fatalf("webhook answered %d\n%s", code, stderr.String())
	}
	if v := f.published(t); len(v.Revoked) != 1 || v.Revoked[0].Name != "klp_bad" {
		t.Fatalf("revoked %+v", v.Revoked)
	}
	if out := stderr.String(); !strings.Contains(out, `"MESSAGE_ID":"`+agent.MsgGuardDecision+`"`) || !strings.Contains(out, `"klp_guard_action":"revoked"`) {
		t.Errorf("the decision is not in the log:\n%s", out)
	}
}

// The publish command is exec'd with its argv: a path with shell syntax in
// it is one argument, never run.
func TestExecRunnerNoShell(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "revocations.json")
	if err := os.WriteFile(src, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir) // where a shell would create pwned
	dst := filepath.Join(dir, "out; touch pwned $(touch pwned2)")
	if err := ExecRunner(context.Background(), []string{"cp", src, dst}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dst); err != nil {
		t.Errorf("the literal destination was not written: %v", err)
	}
	for _, p := range []string{"pwned", "pwned2"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s exists: the argument went through a shell", p)
		}
	}
	err := ExecRunner(context.Background(), []string{"cp", filepath.Join(dir, "none"), dst})
	if err == nil || !strings.Contains(err.Error(), "none") {
		t.Errorf("a failed command: %v, want its output in the error", err)
	}
}

func TestDecisionsFileBounded(t *testing.T) {
	f := newFixture(t)
	path := filepath.Join(f.dir, "decisions.json")
	r := f.start(t, f.config(t, "decisions_file: "+path+"\n"), false)
	for i := range MaxDecisions + 5 {
		if err := r.g.record(Alert{Fingerprint: strconv.Itoa(i)}, Decision{Action: ActionUnconfirmed}, nil); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := ReadDecisions(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != MaxDecisions || rs[0].Fingerprint != "5" || rs[len(rs)-1].Fingerprint != strconv.Itoa(MaxDecisions+4) {
		t.Fatalf("%d records from %s to %s, want the last %d", len(rs), rs[0].Fingerprint, rs[len(rs)-1].Fingerprint, MaxDecisions)
	}
	// A damaged file is started afresh, not a reason to stop deciding.
	if err := os.WriteFile(path, []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.g.record(Alert{Fingerprint: "x"}, Decision{Action: ActionUnconfirmed}, nil); err != nil {
		t.Fatal(err)
	}
	if rs, err := ReadDecisions(path); err != nil || len(rs) != 1 {
		t.Fatalf("after damage: %d records, %v", len(rs), err)
	}
}

// What the guard publishes into the web server's directory is what a
// host's revocation channel polls and accepts: the revoke role's document,
// each new version once, a resent alert no change.
func TestHostsPollWhatTheGuardPublished(t *testing.T) {
	f := newFixture(t)
	f.budget["klp_bad"], f.budget["klp_worse"] = "12", "30"
	r := f.start(t, f.config(t, ""), false)
	www := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(f.file))))
	defer www.Close()
	client, err := manifest.NewClient(manifest.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	host := &manifest.RevocationChannel{URL: www.URL + "/revocations.json", Client: client, Trust: f.trust,
		Store: &manifest.RevocationsStore{}, Now: func() time.Time { return now.Add(time.Minute) }}
	poll := func(step string) manifest.RevocationsPoll {
		t.Helper()
		p, err := host.Poll(context.Background())
		if err != nil {
			t.Fatalf("%s: the host's poll: %v", step, err)
		}
		return p
	}
	if p := poll("before"); !p.NotPublished {
		t.Fatalf("before any alert: %+v, want not published", p)
	}
	for _, step := range []struct {
		name, patch string
		changed     bool
		version     uint64
	}{
		{"klp_bad over budget", "klp_bad", true, 1},
		{"klp_bad resent", "klp_bad", false, 1},
		{"klp_worse over budget", "klp_worse", true, 2},
	} {
		if code := r.post(t, "Bearer "+token, webhookBody(alert("patch", step.patch, "level", "3"))); code != 200 {
			t.Fatalf("%s: answered %d", step.name, code)
		}
		p := poll(step.name)
		if p.Changed != step.changed || p.InForce == nil || p.InForce.Version != step.version {
			t.Fatalf("%s: the host saw %+v, want changed=%v version %d", step.name, p, step.changed, step.version)
		}
		if p.InForce.Revokes(&manifest.Patch{Name: step.patch, Level: 3, Kernel: "6.1.0-13-amd64"}) == nil {
			t.Errorf("%s: the host's document does not revoke %s@3", step.name, step.patch)
		}
	}
}
