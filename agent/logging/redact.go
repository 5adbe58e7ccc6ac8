package logging

import (
	"fmt"

	"go.uber.org/zap/zapcore"

	"github.com/klp-agent/klp-agent/internal/redact"
)

// redactCore passes every message and every string, error and Stringer
// field through redact.Text before the inner core sees it: whatever a
// caller or a library (retryablehttp's "url" field, net/http's errors)
// puts in a log line, a URL's credentials never reach the journal.
type redactCore struct{ zapcore.Core }

// Redacting wraps core so that credentials in URLs are hidden in every
// entry (New does this for every format).
func Redacting(core zapcore.Core) zapcore.Core { return redactCore{core} }

func (c redactCore) With(fields []zapcore.Field) zapcore.Core {
	return redactCore{c.Core.With(redactFields(fields))}
}

func (c redactCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c redactCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	e.Message = redact.Text(e.Message)
	e.Stack = redact.Text(e.Stack)
	return c.Core.Write(e, redactFields(fields))
}

func redactFields(fields []zapcore.Field) []zapcore.Field {
	out := make([]zapcore.Field, len(fields))
	for i, f := range fields {
		out[i] = redactField(f)
	}
	return out
}

func redactField(f zapcore.Field) zapcore.Field {
	switch f.Type {
	case zapcore.StringType:
		f.String = redact.Text(f.String)
	case zapcore.ByteStringType:
		if b, ok := f.Interface.([]byte); ok {
			f.Interface = []byte(redact.Text(string(b)))
		}
	case zapcore.ErrorType:
		if err, ok := f.Interface.(error); ok && err != nil {
			return zapcore.Field{Key: f.Key, Type: zapcore.StringType, String: redact.Text(err.Error())}
		}
	case zapcore.StringerType:
		if s, ok := f.Interface.(fmt.Stringer); ok && s != nil {
			return zapcore.Field{Key: f.Key, Type: zapcore.StringType, String: redact.Text(stringOf(s))}
		}
	}
	return f
}

// stringOf is s.String(), or a marker when a nil pointer inside s panics
// (zap's own Stringer encoding guards the same way).
func stringOf(s fmt.Stringer) (str string) {
	defer func() {
		if recover() != nil {
			str = "<nil>"
		}
	}()
	return s.String()
}
