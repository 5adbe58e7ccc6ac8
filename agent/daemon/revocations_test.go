package daemon

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
)

// TestRevocationsConfig: the channel's URL is revocations.json beside the
// manifest unless manifest.revocations_url says otherwise; interval 0 and
// no manifest.url turn it off; the loop gets the interval.
func TestRevocationsConfig(t *testing.T) {
	www, keys := mirror(t)
	srv := httptest.NewServer(http.FileServer(http.Dir(www)))
	defer srv.Close()
	root := hostRoot(t)
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	for _, tt := range []struct {
		name, manifest string
		wantURL        string // "": no channel
		wantInterval   string
	}{
		{"default", "  url: " + srv.URL + "/m/manifest.json\n", srv.URL + "/m/revocations.json", "30s"},
		{"directory", "  url: " + www + "\n", "file://" + www + "/revocations.json", "30s"},
		{"configured", "  url: " + srv.URL + "/m/manifest.json\n  revocations_url: https://fast.example/r.json\n  revocations_interval: 10s\n",
			"https://fast.example/r.json", "10s"},
		{"off", "  url: " + srv.URL + "/m/manifest.json\n  revocations_interval: 0s\n", "", "0s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			writeConfig(t, cfg, "manifest:\n"+tt.manifest+"trust:\n  keys_dir: "+keys+"\npaths:\n  root: "+root+"\n  state_dir: "+t.TempDir()+"\n")
			h, s := hostSettings(t, cfg)
			got := ""
			if s.Revocations != nil {
				got = s.Revocations.URL
			}
			if got != tt.wantURL {
				t.Fatalf("revocations URL %q, want %q", got, tt.wantURL)
			}
			if iv := h.LoopConfig().RevocationsInterval.String(); iv != tt.wantInterval {
				t.Fatalf("loop interval %s, want %s", iv, tt.wantInterval)
			}
		})
	}
}
