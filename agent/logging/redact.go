package logging

import (
	"encoding/json"
	"fmt"
	"strings"

	"go.uber.org/zap/zapcore"

	"github.com/klp-agent/klp-agent/internal/redact"
	"github.com/klp-agent/klp-agent/internal/sanitize"
)

// redactCore passes every message and every string, error and Stringer
// field through redact.Text and then sanitize.Text before the inner core
// sees it: whatever a caller or a library (retryablehttp's "url" field,
// net/http's errors, a mirror's reason phrase, a netconsole sender) puts
// in a log line, a URL's credentials never reach the journal, and neither
// does a terminal escape or a forged line break.
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
	e.Message = clean(e.Message)
	e.Stack = redact.Text(e.Stack) // the agent's own frames: newlines kept
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
		f.String = clean(f.String)
	case zapcore.ByteStringType:
		if b, ok := f.Interface.([]byte); ok {
			f.Interface = []byte(clean(string(b)))
		}
	case zapcore.ErrorType:
		if err, ok := f.Interface.(error); ok && err != nil {
			return zapcore.Field{Key: f.Key, Type: zapcore.StringType, String: clean(err.Error())}
		}
	case zapcore.StringerType:
		if s, ok := f.Interface.(fmt.Stringer); ok && s != nil {
			return zapcore.Field{Key: f.Key, Type: zapcore.StringType, String: clean(stringOf(s))}
		}
	case zapcore.ArrayMarshalerType, zapcore.ObjectMarshalerType, zapcore.ReflectType:
		// Structured values are encoded by the inner core as JSON, which
		// escapes C0 but not DEL, C1 or bidi controls: one that holds any
		// is flattened to its JSON text here, escaped.
		if js := encodeValue(f); !sanitize.Safe(js) {
			return zapcore.Field{Key: f.Key, Type: zapcore.StringType, String: clean(js)}
		}
	}
	return f
}

// clean is the journal's output boundary: credentials masked, then
// controls escaped.
func clean(s string) string { return sanitize.Text(redact.Text(s)) }

// encodeValue is a structured field's value as JSON text.
func encodeValue(f zapcore.Field) string {
	enc := zapcore.NewMapObjectEncoder()
	f.AddTo(enc)
	var b strings.Builder
	je := json.NewEncoder(&b)
	je.SetEscapeHTML(false)
	if err := je.Encode(enc.Fields[f.Key]); err != nil {
		return fmt.Sprint(enc.Fields[f.Key])
	}
	return strings.TrimSuffix(b.String(), "\n")
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
