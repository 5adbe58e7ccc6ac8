package manifest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// FetcherConfig configures a Fetcher and, when Client is nil, the client
// it makes for itself (tools and tests); the daemon hands every Fetcher
// the one Client it downloads RPMs with too.
type FetcherConfig struct {
	URL     string
	Timeout time.Duration // deadline for one poll, retries included; 0 = 1 min
	MaxSize int64         // body limit in bytes; 0 = DefaultMaxSize
	Client  *Client

	// For a client of its own (Client nil): see ClientConfig.
	CABundle    string
	Retries     int
	RetryWait   time.Duration
	IdleTimeout time.Duration
	UserAgent   string
	Logger      retryablehttp.LeveledLogger
}

// Fetcher polls the manifest URL: a conditional GET under the poll deadline.
type Fetcher struct {
	raw     string // as configured
	url     string // Location(raw) when the fetcher was made
	timeout time.Duration
	maxSize int64
	client  *Client
}

// NewFetcher builds a fetcher for a manifest location: an http(s) URL, a
// file:// URL or an absolute path, a directory meaning its manifest.json
// (see Location).
func NewFetcher(cfg FetcherConfig) (*Fetcher, error) {
	loc, err := Location(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("manifest url: %w", err)
	}
	f := &Fetcher{raw: cfg.URL, url: loc, timeout: cfg.Timeout, maxSize: cfg.MaxSize, client: cfg.Client}
	if f.timeout <= 0 {
		f.timeout = time.Minute
	}
	if f.maxSize <= 0 {
		f.maxSize = DefaultMaxSize
	}
	if f.client == nil {
		f.client, err = NewClient(ClientConfig{CABundle: cfg.CABundle, Retries: cfg.Retries, RetryWait: cfg.RetryWait,
			IdleTimeout: cfg.IdleTimeout, UserAgent: cfg.UserAgent, Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
	}
	return f, nil
}

// URL is the manifest URL (a directory source's is its manifest.json).
// A path is looked at again each time: a directory mounted after the
// agent started (a DVD, NFS) is still read as one.
func (f *Fetcher) URL() string {
	if loc, err := Location(f.raw); err == nil {
		return loc
	}
	return f.url
}

// Client is the HTTP client the fetcher uses.
func (f *Fetcher) Client() *Client { return f.client }

// Fetch does one conditional GET under the poll deadline.
func (f *Fetcher) Fetch(ctx context.Context, prev Validators) (*FetchResult, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	return f.client.Fetch(ctx, f.URL(), prev, f.maxSize)
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

// parseURL parses an absolute URL, refusing control characters.
func parseURL(raw string) (*url.URL, error) {
	if strings.ContainsAny(raw, "\x00\r\n") {
		return nil, fmt.Errorf("url has control characters")
	}
	return url.Parse(raw)
}
