package logging

import (
	"fmt"

	"github.com/hashicorp/go-retryablehttp"
	"go.uber.org/zap"
)

// RetryableLogger adapts l for retryablehttp.Client.Logger, which otherwise
// prints to stderr (and *zap.SugaredLogger does not fit its interface).
//
// Levels map one to one, except that retryablehttp's Error becomes zap Warn:
// it logs every failed attempt at Error, including ones it goes on to retry
// successfully. The caller sees the final error and logs that at its own
// level. Per-request chatter ("performing request", "retrying request") is
// Debug.
func RetryableLogger(l *zap.Logger) retryablehttp.LeveledLogger {
	// Skip this adapter's frame so CODE_FILE points into retryablehttp.
	return retryableLogger{l: l.WithOptions(zap.AddCallerSkip(1))}
}

type retryableLogger struct{ l *zap.Logger }

func (r retryableLogger) Error(msg string, kv ...any) { r.l.Warn(msg, kvFields(kv)...) }
func (r retryableLogger) Warn(msg string, kv ...any)  { r.l.Warn(msg, kvFields(kv)...) }
func (r retryableLogger) Info(msg string, kv ...any)  { r.l.Info(msg, kvFields(kv)...) }
func (r retryableLogger) Debug(msg string, kv ...any) { r.l.Debug(msg, kvFields(kv)...) }

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
		return zap.NamedError(key, v)
	case fmt.Stringer:
		// e.g. *url.URL, which zap.Any would dump field by field.
		return zap.Stringer(key, v)
	default:
		return zap.Any(key, v)
	}
}
