package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/testutil/tlstest"
	"github.com/klp-agent/klp-agent/manifest"
)

// The trust root, the keys dir and its *.pub keys, and the client key are
// refused, with the setting, the path and the fix named, when another user
// could change them (owned by nobody, group/world-writable) or, for the
// client key, read it. Root's files with the usual modes load. The old code
// checked none of them.
func TestTrustAndCredentialFilesChecked(t *testing.T) {
	const nobody = 65534
	type hostile func(t *testing.T, path string)
	chmod := func(m os.FileMode) hostile { return func(t *testing.T, p string) { os.Chmod(p, m) } }
	chown := func(t *testing.T, p string) { os.Chown(p, nobody, nobody) }
	rk, m1 := newRootKey(t), newRootKey(t)
	for _, tt := range []struct {
		name    string
		setting string // which file the hostile change hits
		harm    hostile
		ok      bool
	}{
		{"trust.root 0644 root's", "root", chmod(0o644), true},
		{"trust.root world-writable", "root", chmod(0o646), false},
		{"trust.root group-writable", "root", chmod(0o664), false},
		{"trust.root owned by nobody", "root", chown, false},
		{"keys_dir 0755 root's", "keys_dir", chmod(0o755), true},
		{"keys_dir world-writable", "keys_dir", chmod(0o777), false},
		{"keys_dir owned by nobody", "keys_dir", chown, false},
		{"a .pub 0644 root's", "pub", chmod(0o644), true},
		{"a .pub group-writable", "pub", chmod(0o664), false},
		{"a .pub owned by nobody", "pub", chown, false},
		{"client_key 0600 root's", "client_key", chmod(0o600), true},
		{"client_key 0640 root's", "client_key", chmod(0o640), true},
		{"client_key readable by others", "client_key", chmod(0o644), false},
		{"client_key group-writable", "client_key", chmod(0o660), false},
		{"client_key owned by nobody", "client_key", chown, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			keys := filepath.Join(dir, "keys")
			os.Mkdir(keys, 0o755)
			_, pub, _, err := manifest.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			pubPath := filepath.Join(keys, "release.pub")
			os.WriteFile(pubPath, pub, 0o644)
			rootPath := filepath.Join(dir, "root.json")
			os.WriteFile(rootPath, signedRoot(t, 1, time.Now().Add(time.Hour), rk, m1, rk), 0o644)
			pki := tlstest.New(t)
			trust := "trust:\n  keys_dir: " + keys + "\n"
			if tt.setting == "root" {
				trust = "trust:\n  root: " + rootPath + "\n"
			}
			cfg := filepath.Join(dir, "config.yaml")
			writeConfig(t, cfg, "manifest:\n  url: https://patches.example/m.json\n  client_cert: "+pki.ClientCert+"\n  client_key: "+pki.ClientKey+"\n"+
				trust+"paths:\n  root: "+hostRoot(t)+"\n  state_dir: "+filepath.Join(dir, "state")+"\n")
			tt.harm(t, map[string]string{"root": rootPath, "keys_dir": keys, "pub": pubPath, "client_key": pki.ClientKey}[tt.setting])
			err = CheckStartAt(cfg)
			if tt.ok != (err == nil) || (err != nil && (!errors.Is(err, ErrUntrustedFile) || !errors.Is(err, ErrConfig))) {
				t.Fatalf("CheckStartAt: %v", err)
			}
			if err != nil {
				t.Log(err)
			}
		})
	}
}
