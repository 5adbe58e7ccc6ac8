package logging

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestRetryableLoggerRouting(t *testing.T) {
	tests := []struct {
		name string
		call func(retryablehttp.LeveledLogger)
		want zapcore.Level
	}{
		{"debug", func(l retryablehttp.LeveledLogger) { l.Debug("m") }, zapcore.DebugLevel},
		{"info", func(l retryablehttp.LeveledLogger) { l.Info("m") }, zapcore.InfoLevel},
		{"warn", func(l retryablehttp.LeveledLogger) { l.Warn("m") }, zapcore.WarnLevel},
		// Per-attempt failures that may still be retried successfully.
		{"error", func(l retryablehttp.LeveledLogger) { l.Error("m") }, zapcore.WarnLevel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			tt.call(RetryableLogger(zap.New(core)))
			all := logs.All()
			if len(all) != 1 || all[0].Level != tt.want || all[0].Message != "m" {
				t.Fatalf("logged %+v, want one %v entry", all, tt.want)
			}
		})
	}
}

func TestRetryableLoggerFields(t *testing.T) {
	u, _ := url.Parse("https://repo.example/klp/manifest.json")
	var nilURL *url.URL
	tests := []struct {
		name string
		kv   []any
		want map[string]string // journald field → value
	}{
		{"none", nil, map[string]string{}},
		{"error and url", []any{"error", errors.New("connection reset"), "method", "GET", "url", u},
			map[string]string{"ERROR": "connection reset", "METHOD": "GET", "URL": "https://repo.example/klp/manifest.json"}},
		{"duration and int", []any{"timeout", 250 * time.Millisecond, "remaining", 3},
			map[string]string{"TIMEOUT": "250ms", "REMAINING": "3"}},
		{"nil stringer", []any{"url", nilURL}, map[string]string{"URL": "<nil>"}},
		{"odd count", []any{"a", 1, "dangling"}, map[string]string{"A": "1", "DANGLING": "(MISSING)"}},
		{"non-string key", []any{42, "x"}, map[string]string{"42": "", "F_42": "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeSender{}
			RetryableLogger(zap.New(NewJournalCore(zapcore.DebugLevel, f.send))).Info("m", tt.kv...)
			vars := f.only(t).vars
			for k, v := range tt.want {
				if v == "" {
					if _, ok := vars[k]; ok {
						t.Errorf("unexpected %s", k)
					}
					continue
				}
				if vars[k] != v {
					t.Errorf("%s = %q, want %q; all %v", k, vars[k], v, vars)
				}
			}
		})
	}
}

// A real client: the first attempt's connection is dropped, the second
// gets a 503, the third succeeds ("performing request" is logged once per
// Do, not per attempt). The dropped attempt is a Warn and each retry an
// Info, each message naming the request (its URL redacted) and why; the
// caller points into retryablehttp rather than this adapter.
func TestRetryableLoggerWithClient(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch hits.Add(1) {
		case 1:
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		case 2:
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.WriteHeader(http.StatusOK)
		}
	}))
	defer srv.Close()

	core, logs := observer.New(zapcore.DebugLevel)
	c := retryablehttp.NewClient()
	c.Logger = RetryableLogger(zap.New(core, zap.AddCaller()))
	c.RetryMax = 2
	c.Backoff = func(_, _ time.Duration, _ int, _ *http.Response) time.Duration { return 0 }
	c.HTTPClient = srv.Client()

	secretURL := strings.Replace(srv.URL, "http://", "http://user:s3cret@", 1) + "/m.json?token=T0KEN"
	shown := strings.Replace(srv.URL, "http://", "http://user:xxxxx@", 1) + "/m.json?token=xxxxx"
	resp, err := c.Get(secretURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	want := []struct {
		level zapcore.Level
		msg   string
	}{
		{zapcore.DebugLevel, "performing request: GET " + shown},
		{zapcore.WarnLevel, "request failed: GET " + shown + `: Get "` + shown + `": EOF`},
		{zapcore.InfoLevel, "retrying request: GET " + shown + " in 0s, 2 left"},
		{zapcore.InfoLevel, "retrying request: GET " + shown + " (status: 503) in 0s, 1 left"},
	}
	got := logs.All()
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Level != w.level || got[i].Message != w.msg {
			t.Errorf("entry %d = %v %q, want %v %q", i, got[i].Level, got[i].Message, w.level, w.msg)
		}
		if !strings.Contains(got[i].Caller.File, "go-retryablehttp") {
			t.Errorf("entry %d caller = %s, want retryablehttp's code", i, got[i].Caller.File)
		}
		for k, v := range got[i].ContextMap() {
			if s := fmt.Sprint(v); strings.Contains(s, "s3cret") || strings.Contains(s, "T0KEN") {
				t.Errorf("entry %d field %s = %q: secret shown", i, k, s)
			}
		}
	}
	if _, ok := got[1].ContextMap()["error"]; !ok {
		t.Errorf("request failed entry lacks error: %v", got[1].ContextMap())
	}
}
