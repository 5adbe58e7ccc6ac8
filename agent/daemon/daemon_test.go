package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/internal/testutil/runtest"
	"github.com/klp-agent/klp-agent/internal/testutil/syncbuf"
	"github.com/klp-agent/klp-agent/internal/testutil/tlstest"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/manifest"
)

const krel = "6.1.0-56-amd64"

// hostRoot makes a paths.root with what the agent reads there.
func hostRoot(t *testing.T) string {
	root := t.TempDir()
	for p, v := range map[string]string{"proc/sys/kernel/osrelease": krel, "etc/machine-id": "0123456789abcdef0123456789abcdef",
		"proc/sys/kernel/random/boot_id": "b0071d00-0000-4000-8000-000000000001", "proc/sys/kernel/tainted": "0", "proc/cmdline": "root=/dev/vda ro"} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// mirror publishes level 1 of a livepatch, signed, in a directory.
func mirror(t *testing.T) (www, keysDir string) {
	www, keysDir = t.TempDir(), t.TempDir()
	ko := rpmtest.Module(t, "livepatch=Y", "vermagic="+krel+" SMP preempt mod_unload modversions ", "name=klp_cmdline_1")
	f := rpmtest.Build(t, www, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_1", Level: 1, KernelRelease: krel, KO: ko})
	sum, size, err := klp.FileSHA256(f)
	if err != nil {
		t.Fatal(err)
	}
	priv, pub, _, err := manifest.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(keysDir, "release.pub"), pub, 0o644)
	key, err := manifest.ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Schema: 1, Version: 1, Expires: time.Now().Add(24 * time.Hour),
		Patches: []manifest.Patch{{Kernel: krel, Name: "klp_cmdline_1", Level: 1, URL: filepath.Base(f), SHA256: sum, Size: size}}}
	payload, err := manifest.MarshalJSON(m)
	if err != nil {
		t.Fatal(err)
	}
	env, err := manifest.SignPayload(context.Background(), payload, manifest.NewSigner(key))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(www, "manifest.json"), env, 0o644)
	return www, keysDir
}

func writeConfig(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A private mirror behind a private CA: with manifest.ca_bundle the agent
// verifies the manifest and downloads the RPM through the same client, and
// applies the patch end to end (real nginx with TLS, real rpm, a simulated
// kernel). Without it, nothing is fetched.
func TestPrivateCAMirror(t *testing.T) {
	www, keys := mirror(t)
	pki := tlstest.New(t)
	srv := nginxtest.StartTLS(t, www, nginxtest.TLSFiles{Cert: pki.ServerCert, Key: pki.ServerKey})
	root, stateDir := hostRoot(t), t.TempDir()
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	base := "manifest:\n  url: " + srv.URL + "/manifest.json\n  retries: 0\ntrust:\n  keys_dir: " + keys +
		"\npaths:\n  root: " + root + "\n  state_dir: " + stateDir + "\n"

	for _, tt := range []struct {
		name, extra string
		applied     bool
	}{
		{"no ca_bundle", "", false},
		{"ca_bundle", "  ca_bundle: " + pki.CA + "\n", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			writeConfig(t, cfg, strings.Replace(base, "  retries: 0\n", "  retries: 0\n"+tt.extra, 1))
			// The kernel is simulated; rpm is real, in the test root.
			_, err := pollAndApply(t, cfg, root)
			if !tt.applied {
				if err == nil || !strings.Contains(err.Error(), "certificate") {
					t.Fatalf("poll without the CA: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// runDaemon starts Run on cfg and returns its log and a stop function.
func runDaemon(t *testing.T, cfg string) (logs *syncbuf.Buffer, stop func() error) {
	logs = &syncbuf.Buffer{}
	return logs, runtest.Start(t, func(ctx context.Context) error { return Run(ctx, Options{ConfigPath: cfg, Stderr: logs}) })
}

// SIGHUP: an invalid configuration is refused and the running one kept; a
// valid one is taken without running the boot path again; SIGTERM stops
// cleanly.
func TestReloadSupervision(t *testing.T) {
	root, stateDir, keys := hostRoot(t), t.TempDir(), t.TempDir()
	_, pub, _, _ := manifest.GenerateKey()
	os.WriteFile(filepath.Join(keys, "k.pub"), pub, 0o644)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	body := func(level string) string {
		return fmt.Sprintf("trust:\n  keys_dir: %s\nhealth:\n  kmsg: false\n  taint: false\n  kdump_dir: \"\"\npaths:\n  root: %s\n  state_dir: %s\n  status_file: %s\nlog:\n  level: %s\n  format: console\n",
			keys, root, stateDir, filepath.Join(stateDir, "status.json"), level)
	}
	writeConfig(t, cfg, body("debug"))
	logs, stop := runDaemon(t, cfg)
	waitLog(t, logs, "starting")
	hup := func() {
		t.Helper()
		if err := syscallKill(os.Getpid(), sighup); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig(t, cfg, body("loud")) // invalid
	hup()
	waitLog(t, logs, "reload refused, keeping the running configuration")
	writeConfig(t, cfg, body("info"))
	hup()
	waitLog(t, logs, "configuration reloaded")
	if n := strings.Count(logs.String(), "starting"); n != 1 {
		t.Fatalf("the boot path ran %d times:\n%s", n, logs)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st, err := (&state.Store{Dir: stateDir}).Load()
	if err != nil || !st.CleanStop {
		t.Fatalf("after stop: clean=%v %v", st != nil && st.CleanStop, err)
	}
}

func waitLog(t *testing.T, logs *syncbuf.Buffer, s string) {
	t.Helper()
	logs.WaitFor(t, s)
}

var (
	syscallKill = syscall.Kill
	sighup      = syscall.SIGHUP
)

// manifest.max_expiry reaches the trust chain: the mirror's manifest
// expires in 24h, which a 12h limit refuses (a failed poll naming the
// limit) and the default 30 days accepts.
func TestMaxExpiryConfig(t *testing.T) {
	www, keys := mirror(t)
	srv := httptest.NewServer(http.FileServer(http.Dir(www)))
	defer srv.Close()
	root := hostRoot(t)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	for _, tt := range []struct {
		name, extra string
		refused     bool
	}{
		{"default", "", false},
		{"12h", "  max_expiry: 12h\n", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			writeConfig(t, cfg, "manifest:\n  url: "+srv.URL+"/manifest.json\n  retries: 0\n"+tt.extra+"trust:\n  keys_dir: "+keys+
				"\npaths:\n  root: "+root+"\n  state_dir: "+t.TempDir()+"\n")
			_, s := hostSettings(t, cfg)
			_, err := s.Source.Poll(context.Background())
			if refused := errors.Is(err, manifest.ErrExpiryTooFar); refused != tt.refused || (!refused && err != nil) {
				t.Fatalf("poll: %v, want refused %v", err, tt.refused)
			}
			if tt.refused && !strings.Contains(err.Error(), "manifest.max_expiry) is 12h0m0s") {
				t.Fatalf("refusal does not name the limit: %v", err)
			}
		})
	}
}

// hostSettings loads cfg's host and builds its agent settings.
func hostSettings(t *testing.T, cfg string) (*Host, agent.Settings) {
	t.Helper()
	h, err := LoadHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, err := h.Client(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s, err := h.Settings(zap.NewNop(), client)
	if err != nil {
		t.Fatal(err)
	}
	return h, s
}
