package logging

import (
	"fmt"
	"strings"

	"github.com/hashicorp/go-retryablehttp"
	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/internal/redact"
)

// RetryableLogger adapts l for retryablehttp.Client.Logger, which otherwise
// prints to stderr (and *zap.SugaredLogger does not fit its interface).
//
// Levels map one to one, except that retryablehttp's Error becomes zap Warn:
// it logs every failed attempt at Error, including ones it goes on to retry
// successfully. The caller sees the final error and logs that at its own
// level. "performing request" is Debug; "retrying request" is raised to
// Info, so every failed attempt and every retry is in the journal.
//
// The message itself names the request and the reason ("request failed:
// GET https://mirror/m.json: dial tcp ...: connection refused", "retrying
// request: GET https://mirror/m.json (status: 503) in 1s, 3 left"): the
// journal's MESSAGE is what operators read. URLs are redacted
// (internal/redact) in the message and in every field.
func RetryableLogger(l *zap.Logger) retryablehttp.LeveledLogger {
	// Skip this adapter's frame so CODE_FILE points into retryablehttp.
	return retryableLogger{l: l.WithOptions(zap.AddCallerSkip(1))}
}

type retryableLogger struct{ l *zap.Logger }

func (r retryableLogger) Error(msg string, kv ...any) { r.l.Warn(summary(msg, kv), kvFields(kv)...) }
func (r retryableLogger) Warn(msg string, kv ...any)  { r.l.Warn(summary(msg, kv), kvFields(kv)...) }
func (r retryableLogger) Info(msg string, kv ...any)  { r.l.Info(summary(msg, kv), kvFields(kv)...) }
func (r retryableLogger) Debug(msg string, kv ...any) {
	if msg == "retrying request" {
		r.l.Info(summary(msg, kv), kvFields(kv)...)
		return
	}
	r.l.Debug(summary(msg, kv), kvFields(kv)...)
}

// summary appends to msg what retryablehttp passes as fields: the request
// ("request", or "method" and "url"), the "error", the wait ("timeout") and
// the retries left ("remaining").
func summary(msg string, kv []any) string {
	get := func(key string) (string, bool) {
		for i := 0; i+1 < len(kv); i += 2 {
			if k, ok := kv[i].(string); ok && k == key && kv[i+1] != nil {
				return fmt.Sprint(kv[i+1]), true
			}
		}
		return "", false
	}
	var b strings.Builder
	b.WriteString(msg)
	if d, ok := get("request"); ok {
		b.WriteString(": " + d)
	} else if u, ok := get("url"); ok {
		m, _ := get("method")
		b.WriteString(": " + strings.TrimSpace(m+" "+u))
	}
	if e, ok := get("error"); ok {
		b.WriteString(": " + e)
	}
	if w, ok := get("timeout"); ok {
		b.WriteString(" in " + w)
	}
	if n, ok := get("remaining"); ok {
		b.WriteString(", " + n + " left")
	}
	return redact.Text(b.String())
}

// kvFields turns hclog-style alternating keys and values into zap fields.
// It never drops data: a non-string key is formatted, and a trailing key
// without a value is kept with a marker value.
func kvFields(kv []any) []zap.Field {
	if len(kv) == 0 {
		return nil
	}
	fields := make([]zap.Field, 0, (len(kv)+1)/2)
	for i := 0; i < len(kv); i += 2 {
		key, ok := kv[i].(string)
		if !ok {
			key = fmt.Sprint(kv[i])
		}
		if i+1 == len(kv) {
			fields = append(fields, zap.String(key, "(MISSING)"))
			break
		}
		fields = append(fields, kvField(key, kv[i+1]))
	}
	return fields
}

func kvField(key string, v any) zap.Field {
	switch v := v.(type) {
	case error:
		return zap.NamedError(key, redact.Error(v))
	case fmt.Stringer:
		// e.g. *url.URL, which zap.Any would dump field by field.
		return zap.Stringer(key, redactedStringer{v})
	case string:
		return zap.String(key, redact.Text(v))
	default:
		return zap.Any(key, v)
	}
}

// redactedStringer redacts a Stringer's text when it is encoded.
type redactedStringer struct{ s fmt.Stringer }

func (r redactedStringer) String() string { return redact.Text(stringOf(r.s)) }
