package manifest

import (
	"encoding/pem"
	"net/http/httptest"
	"os"
)

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o644) }

func writeCert(t interface {
	Helper()
	TempDir() string
	Fatal(...any)
}, srv *httptest.Server) string {
	t.Helper()
	p := t.TempDir() + "/ca.pem"
	der := srv.Certificate().Raw
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
