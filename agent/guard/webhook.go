package guard

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/internal/limitfile"
)

// WebhookPath is where Alertmanager posts.
const WebhookPath = "/alerts"

// message is Alertmanager's webhook body (version 4); only what the guard
// reads.
type message struct {
	Version string  `json:"version"`
	Status  string  `json:"status"`
	Alerts  []Alert `json:"alerts"`
}

// authorized checks the bearer token (constant time) and, under mTLS, a
// verified client certificate; with both configured both are required.
func (g *Guard) authorized(r *http.Request) bool {
	if g.cfg.TLS.ClientCA != "" && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return false
	}
	if g.token != nil {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(tok), g.token) != 1 {
			return false
		}
	}
	return true
}

// Handler is the webhook: POST WebhookPath with Alertmanager's JSON.
// 200: every alert decided (acted on or not); 503: a decision could not
// be made (Prometheus or the publish failed), so Alertmanager retries.
func (g *Guard) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+WebhookPath, func(w http.ResponseWriter, r *http.Request) {
		if !g.authorized(r) {
			g.deps.Log.Warn("guard: webhook request refused: no valid credentials",
				logging.MessageID(agent.MsgGuardUnauthorized), zap.String("klp_remote_addr", r.RemoteAddr))
			w.Header().Set("WWW-Authenticate", `Bearer realm="klp-agent guard"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		var m message
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, g.cfg.MaxBody))
		if err := dec.Decode(&m); err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "bad webhook body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if m.Version != "4" {
			http.Error(w, fmt.Sprintf("webhook version %q, want 4", m.Version), http.StatusBadRequest)
			return
		}
		failed := 0
		for _, a := range m.Alerts {
			if a.Status != "firing" || a.Labels["alertname"] != g.cfg.AlertName {
				continue // a resolved alert undoes nothing: un-revoking is the release role's
			}
			if _, err := g.Handle(r.Context(), a); err != nil {
				failed++
			}
		}
		if failed > 0 {
			http.Error(w, fmt.Sprintf("%d alerts not decided (see the guard's journal); send again", failed), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// tlsConfig is the webhook's TLS, nil without tls.cert.
func (c *Config) tlsConfig() (*tls.Config, error) {
	if c.TLS.Cert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLS.Cert, c.TLS.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.TLS.ClientCA != "" {
		b, err := limitfile.Read(c.TLS.ClientCA, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("tls.client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%w: tls.client_ca %s holds no PEM certificate", ErrConfig, c.TLS.ClientCA)
		}
		// Verified when given, required by authorized: a request without
		// one is answered (and journalled) 401, not dropped at handshake.
		tc.ClientCAs, tc.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// Serve runs the webhook on ln and the refresh timer until ctx ends.
func (g *Guard) Serve(ctx context.Context, ln net.Listener, refreshEvery time.Duration) error {
	tc, err := g.cfg.tlsConfig()
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: g.Handler(), TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: 30 * time.Second, WriteTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(refreshEvery)
		defer t.Stop()
		for {
			// Errors are journalled by Refresh; the next tick retries.
			_, _ = g.Refresh(ctx)
			select {
			case <-ctx.Done():
				_ = srv.Close()
				return
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	if tc != nil {
		err = srv.ServeTLS(ln, "", "")
	} else {
		err = srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) && ctx.Err() != nil {
		return nil
	}
	return err
}

// Options are `klp-agent guard`'s.
type Options struct {
	ConfigPath string
	DryRun     bool
	Stdout     io.Writer
	Stderr     io.Writer
}

// Check is `klp-agent guard --check-config`: the configuration as the
// guard would run it (defaults filled in), after the same checks as a
// start (the key against the root, the token file's mode, TLS files).
func Check(path string) ([]byte, error) {
	cfg, err := LoadConfig(path)
	if err != nil {
		return nil, err
	}
	if _, err := New(cfg, true, Deps{}); err != nil {
		return nil, err
	}
	if _, err := cfg.tlsConfig(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return yaml.Marshal(cfg)
}

// RefreshCheckEvery is how often the refresh timer looks at the expiry.
const RefreshCheckEvery = time.Hour

// Run is `klp-agent guard`: load the configuration, check the key, publish
// once after a restart, and serve until ctx ends.
func Run(ctx context.Context, o Options, run Runner) error {
	// systemctl stop ends the guard cleanly (exit 0); a document is
	// written atomically, so a stop never leaves half of one.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg, err := LoadConfig(o.ConfigPath)
	if err != nil {
		return err
	}
	log, err := logging.New(logging.Options{Level: cfg.Log.Level, Format: cfg.Log.Format, Identifier: "klp-agent-guard", Stderr: o.Stderr})
	if err != nil {
		return fmt.Errorf("%w: log: %v", ErrConfig, err)
	}
	defer func() { _ = log.Sync() }()
	if run == nil {
		run = ExecRunner
	}
	g, err := New(cfg, o.DryRun, Deps{Log: log, Run: run, Stdout: o.Stdout, HTTP: &http.Client{}})
	if err != nil {
		return err
	}
	if err := g.Start(ctx); err != nil {
		log.Error("guard: publishing the document after a start failed: "+err.Error(), zap.Error(err))
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	log.Info("guard: listening", zap.String("klp_listen", ln.Addr().String()), zap.Bool("klp_dry_run", o.DryRun))
	return g.Serve(ctx, ln, RefreshCheckEvery)
}

// ExecRunner runs argv directly (no shell), its output kept for the error.
func ExecRunner(ctx context.Context, argv []string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
