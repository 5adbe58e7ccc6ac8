package manifest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-retryablehttp"

	"github.com/klp-agent/klp-agent/internal/limitfile"
	redacting "github.com/klp-agent/klp-agent/internal/redact"
)

// ClientConfig configures the agent's one HTTP client, for manifests and
// RPMs alike: the same trust roots, proxies, retries and limits.
type ClientConfig struct {
	CABundle string // PEM file added to the system roots; empty = system roots only
	// ClientCert and ClientKey are PEM files (both or neither): the
	// certificate this host presents to a mirror that requires mutual
	// TLS. Read when the client is made (a reload picks up renewed ones).
	ClientCert, ClientKey string
	Retries               int           // retries after the first attempt (5xx, 429, connection errors)
	RetryWait             time.Duration // first backoff; it doubles up to 30 s (Retry-After is honoured)
	// IdleTimeout abandons a response that sends no byte for this long:
	// its headers, or a body that stalls half-way (a slow mirror must not
	// hold a download for its whole deadline). 0 = 30 s.
	IdleTimeout time.Duration
	UserAgent   string
	Logger      retryablehttp.LeveledLogger // nil: silent (its default writes to stderr)
}

// Sentinel errors for what a server sends.
var (
	ErrHTTPStatus       = errors.New("unexpected HTTP status")
	ErrInsecureRedirect = errors.New("redirect from https to a non-https URL refused")
	ErrIdle             = errors.New("server sent nothing")
	ErrClientCertPair   = errors.New("a client certificate needs both its certificate and key file")
)

// maxRedirects is as many as Go's default client follows.
const maxRedirects = 10

// Client does GETs with retries, conditional requests, size limits and
// an idle timeout. Proxies come from the environment (HTTPS_PROXY,
// NO_PROXY), as operators expect of any fleet daemon. Safe for concurrent
// use.
type Client struct {
	cfg ClientConfig
	rc  *retryablehttp.Client
}

// NewClient builds the client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.RetryWait <= 0 {
		cfg.RetryWait = time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "klp-agent"
	}
	tr := cleanhttp.DefaultPooledTransport() // Proxy: http.ProxyFromEnvironment
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	tr.ResponseHeaderTimeout = cfg.IdleTimeout
	if cfg.CABundle != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pemData, err := limitfile.Read(cfg.CABundle, maxPEMFile)
		if err != nil {
			return nil, fmt.Errorf("ca bundle: %w", err)
		}
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("ca bundle %s: no PEM certificates found", cfg.CABundle)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	if cfg.ClientCert != "" || cfg.ClientKey != "" {
		if cfg.ClientCert == "" || cfg.ClientKey == "" {
			return nil, ErrClientCertPair
		}
		cert, err := loadKeyPair(cfg.ClientCert, cfg.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("client certificate %s, key %s: %w", cfg.ClientCert, cfg.ClientKey, err)
		}
		tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
	}
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{Transport: tr, CheckRedirect: checkRedirect}
	c.RetryMax = max(cfg.Retries, 0)
	c.RetryWaitMin = cfg.RetryWait
	c.RetryWaitMax = 30 * time.Second
	c.Logger = cfg.Logger
	// Keep the last response so the error names the real status.
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler
	return &Client{cfg: cfg, rc: c}, nil
}

// maxPEMFile bounds a CA bundle or client certificate file (a system
// bundle of every public CA is some 200 KiB).
const maxPEMFile = 4 << 20

// loadKeyPair is tls.LoadX509KeyPair through limitfile: a FIFO at either
// path is refused, not waited on.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	c, err := limitfile.Read(certFile, maxPEMFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	k, err := limitfile.Read(keyFile, maxPEMFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(c, k)
}

// checkRedirect refuses a step down from https: the TLS a publisher set up
// must not be given away by one redirect.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	for _, v := range via {
		if v.URL.Scheme == "https" && req.URL.Scheme != "https" {
			return fmt.Errorf("%w: %s to %s", ErrInsecureRedirect, redact(v.URL.String()), redact(req.URL.String()))
		}
	}
	return nil
}

// get sends a GET under ctx; the response body, if any, is watched by the
// idle timeout, which cancels the whole request.
func (c *Client) get(ctx context.Context, url string, header http.Header) (*http.Response, func(), error) {
	ctx, cancel := context.WithCancelCause(ctx)
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel(nil)
		return nil, nil, redacting.Error(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	resp, err := c.rc.Do(req)
	if err != nil {
		cancel(nil)
		// net/http and retryablehttp quote the URL, query and all.
		return nil, nil, redacting.Error(err)
	}
	w := &idleWatch{d: c.cfg.IdleTimeout}
	w.t = time.AfterFunc(w.d, func() { cancel(fmt.Errorf("%w for %s", ErrIdle, w.d)) })
	resp.Body = &idleBody{ReadCloser: resp.Body, w: w, ctx: ctx}
	return resp, func() { w.stop(); resp.Body.Close(); cancel(nil) }, nil
}

// idleWatch cancels a request when its body makes no progress.
type idleWatch struct {
	mu sync.Mutex
	t  *time.Timer
	d  time.Duration
}

func (w *idleWatch) touch() {
	w.mu.Lock()
	w.t.Reset(w.d)
	w.mu.Unlock()
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	w.t.Stop()
	w.mu.Unlock()
}

type idleBody struct {
	io.ReadCloser
	w   *idleWatch
	ctx context.Context
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.w.touch()
	}
	if err != nil && err != io.EOF {
		// Name the idle timeout rather than "context canceled".
		if cause := context.Cause(b.ctx); cause != nil && errors.Is(cause, ErrIdle) {
			err = cause
		}
	}
	return n, err
}

// Validators are the conditional-GET validators of the last accepted body.
type Validators struct {
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
}

// FetchResult is one conditional GET's outcome.
type FetchResult struct {
	NotModified bool
	Body        []byte
	Validators  Validators
	Status      int
}

// Fetch does one conditional GET of a body of at most maxSize bytes.
// A file:// URL is read from the local file system (see Location).
func (c *Client) Fetch(ctx context.Context, url string, prev Validators, maxSize int64) (*FetchResult, error) {
	if path, ok, err := filePath(url); ok {
		if err != nil {
			return nil, err
		}
		return fetchFile(ctx, url, path, prev, maxSize)
	}
	h := http.Header{}
	if prev.ETag != "" {
		h.Set("If-None-Match", prev.ETag)
	}
	if prev.LastModified != "" {
		h.Set("If-Modified-Since", prev.LastModified)
	}
	resp, done, err := c.get(ctx, url, h)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", redact(url), err)
	}
	defer done()
	res := &FetchResult{Status: resp.StatusCode}
	switch resp.StatusCode {
	case http.StatusNotModified:
		res.NotModified, res.Validators = true, prev
		return res, nil
	case http.StatusOK:
	default:
		return nil, fmt.Errorf("fetch %s: %w", redact(url), statusError(resp))
	}
	if resp.ContentLength > maxSize {
		return nil, fmt.Errorf("fetch %s: %w: Content-Length %d (limit %d)", redact(url), ErrTooLarge, resp.ContentLength, maxSize)
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, resp.Body, maxSize))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, fmt.Errorf("fetch %s: %w: body over %d bytes", redact(url), ErrTooLarge, maxSize)
		}
		return nil, fmt.Errorf("fetch %s: read body: %w", redact(url), err)
	}
	res.Body = body
	res.Validators = Validators{ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}
	return res, nil
}

// Download streams the body at url into w, refusing more than limit bytes,
// and returns how many it wrote. Connection errors and 5xx before the body
// are retried; a body that stalls for the idle timeout, or ctx ending,
// stops it.
// A file:// URL is copied from the local file system.
func (c *Client) Download(ctx context.Context, url string, w io.Writer, limit int64) (int64, error) {
	if path, ok, err := filePath(url); ok {
		if err != nil {
			return 0, err
		}
		return downloadFile(ctx, url, path, w, limit)
	}
	resp, done, err := c.get(ctx, url, nil)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", redact(url), err)
	}
	defer done()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %w", redact(url), statusError(resp))
	}
	if resp.ContentLength > limit {
		return 0, fmt.Errorf("GET %s: %w: Content-Length %d (limit %d)", redact(url), ErrTooLarge, resp.ContentLength, limit)
	}
	n, err := io.Copy(w, io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return n, fmt.Errorf("GET %s: after %d bytes: %w", redact(url), n, err)
	}
	if n > limit {
		return n, fmt.Errorf("GET %s: %w: body over %d bytes", redact(url), ErrTooLarge, limit)
	}
	return n, nil
}

func statusError(resp *http.Response) error {
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	return &statusErr{code: resp.StatusCode, msg: fmt.Sprintf("%s: %s: %q", ErrHTTPStatus, resp.Status, strings.TrimSpace(string(snippet)))}
}

// statusErr is ErrHTTPStatus with the code, for callers that tell a 404
// (the end of the root chain) from a failure.
type statusErr struct {
	code int
	msg  string
}

func (e *statusErr) Error() string { return e.msg }
func (e *statusErr) Unwrap() error { return ErrHTTPStatus }

// redact hides a URL's credentials (password, token user, query values)
// for messages.
func redact(raw string) string { return redacting.URL(raw) }

// redactErr hides URL credentials in err's message (see internal/redact).
func redactErr(err error) error { return redacting.Error(err) }
