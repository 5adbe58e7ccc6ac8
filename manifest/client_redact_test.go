package manifest

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// Every error the client returns names the URL with its credentials
// masked, whether the message is ours (a status) or net/http's (a refused
// connection, which quotes the URL, query and all).
func TestClientErrorsRedactURL(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "gone", http.StatusNotFound)
	}))
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()
	c, err := NewClient(ClientConfig{Retries: 1, RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, hostport := range []string{strings.TrimPrefix(srv.URL, "http://"), refused} {
		u := "http://mirror:pa55-s3cret@" + hostport + "/m.json?token=T0KEN-s3cret"
		shown := "http://mirror:xxxxx@" + hostport + "/m.json?token=xxxxx"
		_, ferr := c.Fetch(context.Background(), u, Validators{}, 1<<20)
		_, derr := c.Download(context.Background(), u, &bytes.Buffer{}, 1<<20)
		for _, err := range []error{ferr, derr} {
			if err == nil {
				t.Fatalf("%s: no error", hostport)
			}
			if msg := err.Error(); strings.Contains(msg, "s3cret") || !strings.Contains(msg, shown) {
				t.Errorf("error %q: want the redacted URL %s and no secret", msg, shown)
			}
		}
	}
}
