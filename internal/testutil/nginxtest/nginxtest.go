// Package nginxtest starts a real nginx on loopback serving a directory,
// for tests that must see what a static web server really sends (ETag,
// Last-Modified, 304s). It fails the test, never skips, when nginx is
// missing: `make deps` installs it.
package nginxtest

import (
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Server is a running nginx.
type Server struct {
	URL  string // http://127.0.0.1:PORT
	Root string // directory served at /
}

// Start serves root on a free loopback port until the test ends.
func Start(t testing.TB, root string) *Server { return start(t, root, nil) }

// StartTLS serves root over https with the certificate and key files
// (PEM), as a private mirror does.
func StartTLS(t testing.TB, root string, cert TLSFiles) *Server { return start(t, root, &cert) }

// TLSFiles are a server certificate chain and its key, PEM files, and,
// for a mirror that requires mutual TLS, the CA its clients' certificates
// must chain to (nginx then answers 400 to a client without one).
type TLSFiles struct{ Cert, Key, ClientCA string }

func start(t testing.TB, root string, tlsFiles *TLSFiles) *Server {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		for _, p := range []string{"/usr/sbin/nginx", "/sbin/nginx"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		t.Fatalf("nginx not found: install nginx-light (make deps): %v", err)
	}
	prefix := t.TempDir()
	port := FreePort(t, "tcp")
	listen, scheme := fmt.Sprintf("127.0.0.1:%d", port), "http"
	if tlsFiles != nil {
		listen += fmt.Sprintf(" ssl;\n    ssl_certificate %s;\n    ssl_certificate_key %s", tlsFiles.Cert, tlsFiles.Key)
		if tlsFiles.ClientCA != "" {
			listen += fmt.Sprintf(";\n    ssl_client_certificate %s;\n    ssl_verify_client on", tlsFiles.ClientCA)
		}
		scheme = "https"
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // workers must read the test's private temp dirs
	}
	conf := fmt.Sprintf(`%s
daemon off;
worker_processes 1;
pid %[2]s/nginx.pid;
error_log stderr warn;
events { worker_connections 512; } # the fleet test's 50 hosts keep connections open
http {
  access_log off;
  log_not_found off; # a 404 is an answer the tests check, not an error to print
  default_type application/octet-stream;
  client_body_temp_path %[2]s/body;
  proxy_temp_path %[2]s/proxy;
  fastcgi_temp_path %[2]s/fastcgi;
  uwsgi_temp_path %[2]s/uwsgi;
  scgi_temp_path %[2]s/scgi;
  server {
    listen %[3]s;
    root %[4]s;
  }
}
`, user, prefix, listen, root)
	cfg := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", prefix, "-c", cfg, "-e", "stderr")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nginx: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	s := &Server{URL: scheme + "://127.0.0.1:" + strconv.Itoa(port), Root: root}
	probe := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // only: is it up?
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			t.Fatalf("nginx exited at start (config %s)", cfg)
		default:
		}
		if resp, err := probe.Get(s.URL + "/"); err == nil {
			resp.Body.Close()
			return s
		}
		if time.Now().After(deadline) {
			t.Fatal("nginx did not start listening within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreePort is a loopback port (network "tcp" or "udp") nothing listens
// on, below the ephemeral range: a port the kernel hands out for ":0"
// binds and other tests' client sockets could be taken between this
// check and the server's bind, and the test would fail for nothing.
func FreePort(t testing.TB, network string) int {
	t.Helper()
	low := 32768 // Linux's default ip_local_port_range starts here
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	for range 100 {
		port := 10000 + rand.IntN(max(low-10000, 1))
		addr := "127.0.0.1:" + strconv.Itoa(port)
		var err error
		if network == "udp" {
			var c net.PacketConn
			if c, err = net.ListenPacket("udp", addr); err == nil {
				c.Close()
			}
		} else {
			var l net.Listener
			if l, err = net.Listen("tcp", addr); err == nil {
				l.Close()
			}
		}
		if err == nil {
			return port
		}
	}
	t.Fatalf("no free %s port below %d", network, low)
	return 0
}
