package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// manifest.url takes http(s), file:// and absolute paths (air-gapped
// sites); client_cert and client_key come as an absolute pair.
func TestManifestSourceSettings(t *testing.T) {
	for _, tt := range []struct {
		name, body, err string
	}{
		{"https", "manifest:\n  url: https://mirror.example/m.json\n", ""},
		{"directory", "manifest:\n  url: /srv/klp\n", ""},
		{"file URL", "manifest:\n  url: file:///srv/klp/manifest.json\n", ""},
		{"relative path", "manifest:\n  url: srv/klp\n", "manifest.url"},
		{"ftp", "manifest:\n  url: ftp://mirror/m.json\n", "manifest.url"},
		{"remote file URL", "manifest:\n  url: file://nfs/srv/m.json\n", "manifest.url"},
		{"client pair", "manifest:\n  client_cert: /etc/pki/c.pem\n  client_key: /etc/pki/c.key\n", ""},
		{"cert alone", "manifest:\n  client_cert: /etc/pki/c.pem\n", "client_cert and client_key go together"},
		{"key alone", "manifest:\n  client_key: /etc/pki/c.key\n", "client_cert and client_key go together"},
		{"relative cert", "manifest:\n  client_cert: c.pem\n  client_key: /etc/pki/c.key\n", "manifest.client_cert"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeTree(t, map[string]string{"config.yaml": tt.body})
			_, err := Load(filepath.Join(dir, "config.yaml"))
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Load: %v, want ErrInvalid with %q", err, tt.err)
			}
		})
	}
}
