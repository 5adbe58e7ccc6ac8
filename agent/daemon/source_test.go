package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
	"github.com/klp-agent/klp-agent/internal/testutil/tlstest"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/klp/klptest"
	"github.com/klp-agent/klp-agent/manifest"
)

// pollAndApply builds the agent for cfg over a simulated kernel (rpm is
// real, in the test root), polls once and converges: the patch applied,
// or the poll's error.
func pollAndApply(t *testing.T, cfg, root string) (manifest.PollResult, error) {
	t.Helper()
	h, s := hostSettings(t, cfg)
	kern := klptest.New()
	kern.AddFile(filepath.Join(root, "usr/lib/klp-agent/livepatches", krel, "klp_cmdline_1.ko"),
		klptest.Module{Name: "klp_cmdline_1", Livepatch: true, Replace: true, Funcs: map[string][]string{"vmlinux": {"cmdline_proc_show"}}})
	s.Installer.Controller = &klp.Controller{Sysfs: &klp.Sysfs{FS: kern, Poll: time.Millisecond}, Modules: kern}
	a := agent.New(agent.Deps{Store: h.Store(), Source: s.Source, Downloader: s.Downloader, Host: s.Host,
		Installer: s.Installer, Soak: time.Hour})
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	res, err := s.Source.Poll(context.Background())
	if err != nil {
		return res, err
	}
	if err := a.Converge(context.Background(), res.Manifest); err != nil {
		t.Fatal(err)
	}
	if got := kern.Patched("cmdline_proc_show"); got != "klp_cmdline_1" || a.Kernel().Phase != state.PhaseSoaking {
		t.Fatalf("kernel serves %q, phase %s", got, a.Kernel().Phase)
	}
	// A second poll of the unchanged source is "not modified".
	res2, err := s.Source.Poll(context.Background())
	if err != nil || res2.Changed {
		t.Fatalf("second poll: %+v %v", res2, err)
	}
	return res, nil
}

// Air-gapped sites: the signed manifest and its RPMs in a directory, named
// by a plain path, the path with a trailing slash, or a file:// URL to the
// manifest; RPM URLs relative to it resolve to files beside it. The
// signature is still required: the same directory with a key the host
// does not trust applies nothing.
func TestFileAndDirectorySources(t *testing.T) {
	www, keys := mirror(t)
	otherKeys := t.TempDir()
	_, pub, _, _ := manifest.GenerateKey()
	os.WriteFile(filepath.Join(otherKeys, "other.pub"), pub, 0o644)
	for _, tt := range []struct {
		name, url, keys string
		err             string
	}{
		{"directory", www, keys, ""},
		{"directory with slash", www + "/", keys, ""},
		{"file URL", "file://" + www + "/manifest.json", keys, ""},
		{"file path", www + "/manifest.json", keys, ""},
		{"untrusted signer", www, otherKeys, "unknown key"},
		{"missing file", www + "/nope.json", keys, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root, stateDir := hostRoot(t), t.TempDir()
			cfg := filepath.Join(t.TempDir(), "config.yaml")
			writeConfig(t, cfg, "manifest:\n  url: "+tt.url+"\ntrust:\n  keys_dir: "+tt.keys+
				"\npaths:\n  root: "+root+"\n  state_dir: "+stateDir+"\n")
			res, err := pollAndApply(t, cfg, root)
			if tt.err != "" {
				// The signature check is the manifest package's: any
				// trust error will do, the point is that nothing applies.
				trustErr := errors.Is(err, manifest.ErrUnknownKey) || errors.Is(err, manifest.ErrThreshold) || errors.Is(err, manifest.ErrBadSignature)
				if err == nil || (!strings.Contains(err.Error(), tt.err) && !trustErr) {
					t.Fatalf("poll: %v, want an error with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := "file://" + www + "/manifest.json"; res.Manifest.URL != want {
				t.Errorf("manifest URL %s, want %s", res.Manifest.URL, want)
			}
		})
	}
}

// A private mirror that requires a client certificate (real nginx with
// ssl_verify_client): with manifest.client_cert/client_key the agent
// fetches the manifest and downloads the RPM through the same client;
// without them nginx refuses the poll.
func TestMutualTLSMirror(t *testing.T) {
	www, keys := mirror(t)
	pki := tlstest.New(t)
	srv := nginxtest.StartTLS(t, www, nginxtest.TLSFiles{Cert: pki.ServerCert, Key: pki.ServerKey, ClientCA: pki.CA})
	for _, tt := range []struct {
		name, extra string
		err         string
	}{
		{"no client certificate", "", "400"},
		{"client certificate", "  client_cert: " + pki.ClientCert + "\n  client_key: " + pki.ClientKey + "\n", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root, stateDir := hostRoot(t), t.TempDir()
			cfg := filepath.Join(t.TempDir(), "config.yaml")
			writeConfig(t, cfg, "manifest:\n  url: "+srv.URL+"/manifest.json\n  retries: 0\n  ca_bundle: "+pki.CA+"\n"+tt.extra+
				"trust:\n  keys_dir: "+keys+"\npaths:\n  root: "+root+"\n  state_dir: "+stateDir+"\n")
			_, err := pollAndApply(t, cfg, root)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("poll: %v, want an error with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
