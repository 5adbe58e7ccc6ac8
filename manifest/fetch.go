package manifest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-retryablehttp"
)

// FetcherConfig configures the manifest HTTP client.
type FetcherConfig struct {
	URL       string
	CABundle  string        // PEM file added to the system roots; empty = system roots only
	Timeout   time.Duration // deadline for one poll, retries included
	Retries   int           // retries after the first attempt (5xx, 429, connection errors)
	RetryWait time.Duration // first backoff; it doubles up to 30 s (Retry-After is honoured)
	MaxSize   int64         // body limit in bytes
	UserAgent string
	Logger    retryablehttp.LeveledLogger // nil: silent (its default writes to stderr)
}

// Validators are the conditional-GET validators of the last accepted body.
type Validators struct {
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
}

// FetchResult is one poll's outcome.
type FetchResult struct {
	NotModified bool
	Body        []byte
	Validators  Validators
	Status      int
}

// Fetcher downloads the envelope with retries, conditional GET and limits.
type Fetcher struct {
	cfg    FetcherConfig
	client *retryablehttp.Client
}

// ErrHTTPStatus marks an unexpected HTTP status.
var ErrHTTPStatus = errors.New("unexpected HTTP status")

// NewFetcher builds a fetcher; proxies come from the environment
// (HTTPS_PROXY, NO_PROXY), as operators expect of any fleet daemon.
func NewFetcher(cfg FetcherConfig) (*Fetcher, error) {
	if !strings.HasPrefix(cfg.URL, "https://") && !strings.HasPrefix(cfg.URL, "http://") {
		return nil, fmt.Errorf("manifest url %q: http or https required", cfg.URL)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Minute
	}
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	if cfg.RetryWait <= 0 {
		cfg.RetryWait = time.Second
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "klp-agent"
	}
	tr := cleanhttp.DefaultPooledTransport() // Proxy: http.ProxyFromEnvironment
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CABundle != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pemData, err := os.ReadFile(cfg.CABundle)
		if err != nil {
			return nil, fmt.Errorf("ca bundle: %w", err)
		}
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("ca bundle %s: no PEM certificates found", cfg.CABundle)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{Transport: tr}
	c.RetryMax = max(cfg.Retries, 0)
	c.RetryWaitMin = cfg.RetryWait
	c.RetryWaitMax = 30 * time.Second
	c.Logger = cfg.Logger
	// Keep the last response so the error names the real status.
	c.ErrorHandler = retryablehttp.PassthroughErrorHandler
	return &Fetcher{cfg: cfg, client: c}, nil
}

// URL is the manifest URL.
func (f *Fetcher) URL() string { return f.cfg.URL }

// Fetch does one conditional GET under the poll deadline.
func (f *Fetcher) Fetch(ctx context.Context, prev Validators) (*FetchResult, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, f.cfg.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", f.cfg.URL, err)
	}
	req.Header.Set("User-Agent", f.cfg.UserAgent)
	if prev.ETag != "" {
		req.Header.Set("If-None-Match", prev.ETag)
	}
	if prev.LastModified != "" {
		req.Header.Set("If-Modified-Since", prev.LastModified)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", f.cfg.URL, err)
	}
	defer resp.Body.Close()
	res := &FetchResult{Status: resp.StatusCode}
	switch resp.StatusCode {
	case http.StatusNotModified:
		res.NotModified, res.Validators = true, prev
		return res, nil
	case http.StatusOK:
	default:
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return nil, fmt.Errorf("fetch %s: %w: %s: %q", f.cfg.URL, ErrHTTPStatus, resp.Status, strings.TrimSpace(string(snippet)))
	}
	if resp.ContentLength > f.cfg.MaxSize {
		return nil, fmt.Errorf("fetch %s: %w: Content-Length %d (limit %d)", f.cfg.URL, ErrTooLarge, resp.ContentLength, f.cfg.MaxSize)
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, resp.Body, f.cfg.MaxSize))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, fmt.Errorf("fetch %s: %w: body over %d bytes", f.cfg.URL, ErrTooLarge, f.cfg.MaxSize)
		}
		return nil, fmt.Errorf("fetch %s: read body: %w", f.cfg.URL, err)
	}
	res.Body = body
	res.Validators = Validators{ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}
	return res, nil
}

// NextInterval spreads polls uniformly over interval ± jitter×interval so a
// fleet started at once does not poll in lockstep.
func NextInterval(interval time.Duration, jitter float64, r *rand.Rand) time.Duration {
	if jitter <= 0 || interval <= 0 {
		return interval
	}
	jitter = min(jitter, 1)
	span := float64(interval) * jitter
	return time.Duration(float64(interval) - span + 2*span*r.Float64())
}
