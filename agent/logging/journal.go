package logging

import (
	"fmt"
	"io"
	"maps"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap/zapcore"
)

// SendFunc delivers one entry to journald. journal.Send is the real one; tests
// inject fakes.
type SendFunc func(message string, priority journal.Priority, vars map[string]string) error

// DefaultIdentifier is the SYSLOG_IDENTIFIER used when none is configured.
const DefaultIdentifier = "klp-agent"

// maxFieldName is journald's limit on field name length (JOURNAL_FIELD_NAME_MAX_LENGTH).
const maxFieldName = 64

// Journal field names the core sets itself.
const (
	fieldIdentifier = "SYSLOG_IDENTIFIER"
	fieldLogger     = "LOGGER"
	fieldCodeFile   = "CODE_FILE"
	fieldCodeLine   = "CODE_LINE"
	fieldCodeFunc   = "CODE_FUNC"
	fieldStack      = "STACK"
)

// JournalOption configures NewJournalCore.
type JournalOption func(*journalConfig)

type journalConfig struct {
	identifier string
	fallback   io.Writer
}

// WithIdentifier sets SYSLOG_IDENTIFIER (default DefaultIdentifier). An empty
// string omits the field, letting journald derive it from the process.
func WithIdentifier(id string) JournalOption {
	return func(c *journalConfig) { c.identifier = id }
}

// WithFallback sets where entries go when the journal cannot take them
// (default os.Stderr).
func WithFallback(w io.Writer) JournalOption {
	return func(c *journalConfig) { c.fallback = w }
}

// NewJournalCore returns a zapcore.Core that sends each entry to journald as
// one structured record. send defaults to journal.Send.
//
// Field keys become journald field names (see FieldName); values are
// flattened to strings. When send fails the entry is written as one line to
// the fallback writer instead, so a vanished journal socket loses nothing.
func NewJournalCore(enab zapcore.LevelEnabler, send SendFunc, opts ...JournalOption) zapcore.Core {
	cfg := journalConfig{identifier: DefaultIdentifier, fallback: os.Stderr}
	for _, o := range opts {
		o(&cfg)
	}
	if enab == nil {
		enab = zapcore.InfoLevel
	}
	if send == nil {
		send = journal.Send
	}
	if cfg.fallback == nil {
		cfg.fallback = io.Discard
	}
	return &journalCore{
		enab:       enab,
		send:       send,
		identifier: cfg.identifier,
		fallback:   &lockedWriter{w: cfg.fallback},
		fields:     map[string]string{},
	}
}

type journalCore struct {
	enab       zapcore.LevelEnabler
	send       SendFunc
	identifier string
	// fallback is shared by all cores derived through With.
	fallback *lockedWriter
	// fields holds the encoded With fields. It is filled only while With
	// builds a new core and is read-only afterwards, so Write needs no lock.
	fields map[string]string
	// prefix is the open zap.Namespace path, carried into later fields.
	prefix string
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (c *journalCore) Enabled(lvl zapcore.Level) bool { return c.enab.Enabled(lvl) }

// Level lets zapcore.LevelOf and zap.Logger.Level report the minimum level.
func (c *journalCore) Level() zapcore.Level { return zapcore.LevelOf(c.enab) }

func (c *journalCore) With(fields []zapcore.Field) zapcore.Core {
	clone := *c
	clone.fields = maps.Clone(c.fields)
	enc := &fieldEncoder{vars: clone.fields, prefix: c.prefix}
	enc.addFields(fields)
	clone.prefix = enc.prefix
	return &clone
}

func (c *journalCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *journalCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	vars := make(map[string]string, len(c.fields)+len(fields)+6)
	maps.Copy(vars, c.fields)
	enc := &fieldEncoder{vars: vars, prefix: c.prefix}
	enc.addFields(fields)

	// Entry metadata is set last so a stray field cannot fake it.
	if c.identifier != "" {
		vars[fieldIdentifier] = c.identifier
	}
	if ent.LoggerName != "" {
		vars[fieldLogger] = ent.LoggerName
	}
	if ent.Caller.Defined {
		vars[fieldCodeFile] = ent.Caller.File
		vars[fieldCodeLine] = strconv.Itoa(ent.Caller.Line)
		if ent.Caller.Function != "" {
			vars[fieldCodeFunc] = ent.Caller.Function
		}
	}
	if ent.Stack != "" {
		vars[fieldStack] = ent.Stack
	}

	sendErr := c.send(ent.Message, Priority(ent.Level), vars)
	if sendErr == nil {
		return nil
	}
	if _, err := c.fallback.Write(fallbackLine(ent, vars, sendErr)); err != nil {
		return fmt.Errorf("journal send failed: %w; fallback write failed: %w", sendErr, err)
	}
	// The entry reached the fallback; reporting an error too would make zap
	// print a second line to its ErrorOutput.
	return nil
}

// Sync is a no-op: journal.Send writes each datagram synchronously.
func (c *journalCore) Sync() error { return nil }

// Priority maps a zap level to a syslog priority. Levels below Debug are
// debug, levels above Fatal are crit.
func Priority(l zapcore.Level) journal.Priority {
	switch {
	case l <= zapcore.DebugLevel:
		return journal.PriDebug
	case l == zapcore.InfoLevel:
		return journal.PriInfo
	case l == zapcore.WarnLevel:
		return journal.PriWarning
	case l == zapcore.ErrorLevel:
		return journal.PriErr
	default: // DPanic, Panic, Fatal and beyond
		return journal.PriCrit
	}
}

// fallbackLine renders one entry as a single line, with the send error, for
// when the journal is unreachable. Values are quoted when needed so
// multi-line stacks stay on one line.
func fallbackLine(ent zapcore.Entry, vars map[string]string, sendErr error) []byte {
	var b strings.Builder
	t := ent.Time
	if t.IsZero() {
		t = time.Now()
	}
	b.WriteString(t.Format("2006-01-02T15:04:05.000Z0700"))
	b.WriteByte('\t')
	b.WriteString(ent.Level.CapitalString())
	b.WriteByte('\t')
	b.WriteString(oneLine(ent.Message))
	for i, k := range slices.Sorted(maps.Keys(vars)) {
		if i == 0 {
			b.WriteByte('\t')
		} else {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(quoteIfNeeded(vars[k]))
	}
	b.WriteString("\t(journal send failed: ")
	b.WriteString(oneLine(sendErr.Error()))
	b.WriteString(")\n")
	return []byte(b.String())
}

// oneLine quotes s only if it holds control characters, keeping readable
// messages readable.
func oneLine(s string) string {
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// quoteIfNeeded quotes values that would break KEY=value parsing.
func quoteIfNeeded(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if r == ' ' || r == '"' || r == '=' || r == '\\' || !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// FieldName turns a zap key into a valid journald field name: ASCII letters
// are uppercased, every other character outside [A-Z0-9_] becomes '_',
// leading underscores are dropped (those are journald's trusted fields), a
// leading digit gets an "F_" prefix, and the result is cut to 64 bytes.
// Names already in journald form, like KLP_PATCH or MESSAGE_ID, are
// unchanged. MESSAGE and PRIORITY also get the "F_" prefix: journal.Send sets
// them itself and a second copy would make them multi-valued.
func FieldName(key string) string {
	if validFieldName(key) && key != "MESSAGE" && key != "PRIORITY" {
		return key // fast path for the common case
	}
	b := make([]byte, 0, len(key)+2)
	for _, r := range key {
		switch {
		case r >= 'a' && r <= 'z':
			b = append(b, byte(r-'a'+'A'))
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			b = append(b, byte(r))
		default:
			b = append(b, '_')
		}
	}
	for len(b) > 0 && b[0] == '_' {
		b = b[1:]
	}
	s := string(b)
	switch {
	case s == "":
		s = "FIELD"
	case s[0] >= '0' && s[0] <= '9', s == "MESSAGE", s == "PRIORITY":
		s = "F_" + s
	}
	if len(s) > maxFieldName {
		s = s[:maxFieldName]
	}
	return s
}

func validFieldName(s string) bool {
	if s == "" || len(s) > maxFieldName || s[0] == '_' || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// fieldEncoder flattens zap fields into journald variables. Scalars become
// plain strings; objects, arrays and reflected values become JSON; a
// zap.Namespace prefixes later keys with its name.
type fieldEncoder struct {
	vars   map[string]string
	prefix string
}

var _ zapcore.ObjectEncoder = (*fieldEncoder)(nil)

func (e *fieldEncoder) addFields(fields []zapcore.Field) {
	for _, f := range fields {
		if f.Type == zapcore.ErrorType {
			// zap would add errorVerbose/errorCauses too; the message is
			// what belongs in a journal field.
			if err, ok := f.Interface.(error); ok {
				e.AddString(f.Key, errorString(err))
				continue
			}
		}
		f.AddTo(e)
	}
}

// errorString guards against nil pointers hiding in an error interface, as
// zap's own encoder does.
func errorString(err error) (s string) {
	defer func() {
		if r := recover(); r != nil {
			if v := reflect.ValueOf(err); v.Kind() == reflect.Pointer && v.IsNil() {
				s = "<nil>"
				return
			}
			panic(r)
		}
	}()
	return err.Error()
}

func (e *fieldEncoder) set(key, value string) { e.vars[FieldName(e.prefix+key)] = value }

func (e *fieldEncoder) OpenNamespace(key string) { e.prefix += key + "_" }

func (e *fieldEncoder) AddString(k, v string)            { e.set(k, v) }
func (e *fieldEncoder) AddByteString(k string, v []byte) { e.set(k, string(v)) }
func (e *fieldEncoder) AddBool(k string, v bool)         { e.set(k, strconv.FormatBool(v)) }
func (e *fieldEncoder) AddDuration(k string, v time.Duration) {
	e.set(k, v.String())
}
func (e *fieldEncoder) AddTime(k string, v time.Time) { e.set(k, v.Format(time.RFC3339Nano)) }
func (e *fieldEncoder) AddInt(k string, v int)        { e.AddInt64(k, int64(v)) }
func (e *fieldEncoder) AddInt64(k string, v int64)    { e.set(k, strconv.FormatInt(v, 10)) }
func (e *fieldEncoder) AddInt32(k string, v int32)    { e.AddInt64(k, int64(v)) }
func (e *fieldEncoder) AddInt16(k string, v int16)    { e.AddInt64(k, int64(v)) }
func (e *fieldEncoder) AddInt8(k string, v int8)      { e.AddInt64(k, int64(v)) }
func (e *fieldEncoder) AddUint(k string, v uint)      { e.AddUint64(k, uint64(v)) }
func (e *fieldEncoder) AddUint64(k string, v uint64)  { e.set(k, strconv.FormatUint(v, 10)) }
func (e *fieldEncoder) AddUint32(k string, v uint32)  { e.AddUint64(k, uint64(v)) }
func (e *fieldEncoder) AddUint16(k string, v uint16)  { e.AddUint64(k, uint64(v)) }
func (e *fieldEncoder) AddUint8(k string, v uint8)    { e.AddUint64(k, uint64(v)) }
func (e *fieldEncoder) AddUintptr(k string, v uintptr) {
	e.set(k, "0x"+strconv.FormatUint(uint64(v), 16))
}
func (e *fieldEncoder) AddFloat64(k string, v float64) { e.set(k, strconv.FormatFloat(v, 'g', -1, 64)) }
func (e *fieldEncoder) AddFloat32(k string, v float32) {
	e.set(k, strconv.FormatFloat(float64(v), 'g', -1, 32))
}
func (e *fieldEncoder) AddComplex128(k string, v complex128) {
	e.set(k, strconv.FormatComplex(v, 'g', -1, 128))
}
func (e *fieldEncoder) AddComplex64(k string, v complex64) {
	e.set(k, strconv.FormatComplex(complex128(v), 'g', -1, 64))
}

// AddBinary uses base64, matching zap's JSON encoder, since journal readers
// expect text.
func (e *fieldEncoder) AddBinary(k string, v []byte) {
	e.jsonValue(k, func(enc zapcore.ObjectEncoder) error { enc.AddBinary(jsonKey, v); return nil }, true)
}

func (e *fieldEncoder) AddObject(k string, v zapcore.ObjectMarshaler) error {
	return e.jsonValue(k, func(enc zapcore.ObjectEncoder) error { return enc.AddObject(jsonKey, v) }, false)
}

func (e *fieldEncoder) AddArray(k string, v zapcore.ArrayMarshaler) error {
	return e.jsonValue(k, func(enc zapcore.ObjectEncoder) error { return enc.AddArray(jsonKey, v) }, false)
}

func (e *fieldEncoder) AddReflected(k string, v any) error {
	return e.jsonValue(k, func(enc zapcore.ObjectEncoder) error { return enc.AddReflected(jsonKey, v) }, false)
}

// jsonKey is the single key of the throwaway JSON object jsonValue unwraps.
const jsonKey = "v"

// jsonEncoderConfig has every entry key empty so EncodeEntry emits only the
// fields; nested durations and times match the top-level rendering.
var jsonEncoderConfig = zapcore.EncoderConfig{
	EncodeDuration: zapcore.StringDurationEncoder,
	EncodeTime:     zapcore.RFC3339NanoTimeEncoder,
	SkipLineEnding: true,
}

// jsonValue renders one value with zap's JSON encoder, so nested objects follow
// zap's encoding rules, and stores it under k. unquote strips the quotes of a
// JSON string result.
func (e *fieldEncoder) jsonValue(k string, add func(zapcore.ObjectEncoder) error, unquote bool) error {
	enc := zapcore.NewJSONEncoder(jsonEncoderConfig)
	if err := add(enc); err != nil {
		// zap's Field.AddTo records the failure as a KEYError field.
		return err
	}
	buf, err := enc.EncodeEntry(zapcore.Entry{}, nil)
	if err != nil {
		return fmt.Errorf("encode %s as JSON: %w", k, err)
	}
	defer buf.Free()
	s := buf.String()
	// s is exactly {"v":VALUE}.
	s = strings.TrimSuffix(strings.TrimPrefix(s, `{"`+jsonKey+`":`), "}")
	if unquote {
		if u, err := strconv.Unquote(s); err == nil {
			s = u
		}
	}
	e.set(k, s)
	return nil
}
