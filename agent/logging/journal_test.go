package logging

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

type sent struct {
	msg  string
	pri  journal.Priority
	vars map[string]string
}

// fakeSender records what the core would have sent to journald.
type fakeSender struct {
	mu    sync.Mutex
	calls []sent
	err   error
}

func (f *fakeSender) send(msg string, pri journal.Priority, vars map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, sent{msg, pri, vars})
	return f.err
}

func (f *fakeSender) all() []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sent(nil), f.calls...)
}

func (f *fakeSender) only(t *testing.T) sent {
	t.Helper()
	c := f.all()
	if len(c) != 1 {
		t.Fatalf("got %d sends, want 1: %+v", len(c), c)
	}
	return c[0]
}

// journaldAccepts mirrors journald's rule for client field names (and
// go-systemd's validVarName, which only complains on stderr).
func journaldAccepts(name string) bool {
	if name == "" || len(name) > 64 || name[0] == '_' || (name[0] >= '0' && name[0] <= '9') {
		return false
	}
	for _, c := range []byte(name) {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

func TestPriority(t *testing.T) {
	tests := []struct {
		level zapcore.Level
		want  journal.Priority
	}{
		{zapcore.DebugLevel - 1, 7},
		{zapcore.DebugLevel, 7},
		{zapcore.InfoLevel, 6},
		{zapcore.WarnLevel, 4},
		{zapcore.ErrorLevel, 3},
		{zapcore.DPanicLevel, 2},
		{zapcore.PanicLevel, 2},
		{zapcore.FatalLevel, 2},
		{zapcore.FatalLevel + 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.level.String(), func(t *testing.T) {
			if got := Priority(tt.level); got != tt.want {
				t.Errorf("Priority(%v) = %d, want %d", tt.level, got, tt.want)
			}
			// And through the core, which is where it matters; Write is
			// called directly so Panic and Fatal don't panic or exit.
			f := &fakeSender{}
			core := NewJournalCore(zapcore.DebugLevel-1, f.send)
			if err := core.Write(zapcore.Entry{Level: tt.level, Message: "m"}, nil); err != nil {
				t.Fatal(err)
			}
			if got := f.only(t).pri; got != tt.want {
				t.Errorf("core sent priority %d, want %d", got, tt.want)
			}
		})
	}
}

func TestFieldName(t *testing.T) {
	long := strings.Repeat("a", 70)
	tests := []struct{ in, want string }{
		// Our structured keys are already journald names.
		{"KLP_PATCH", "KLP_PATCH"},
		{"KLP_LEVEL", "KLP_LEVEL"},
		{"KERNEL_RELEASE", "KERNEL_RELEASE"},
		{"MANIFEST_VERSION", "MANIFEST_VERSION"},
		{"MESSAGE_ID", "MESSAGE_ID"},
		{"CODE_FILE", "CODE_FILE"},
		{"A1_B2", "A1_B2"},
		// Conversions.
		{"patch", "PATCH"},
		{"camelCase", "CAMELCASE"},
		{"kernel.release", "KERNEL_RELEASE"},
		{"http-status", "HTTP_STATUS"},
		{"a b", "A_B"},
		{"größe", "GR__E"}, // one '_' per rune, not per byte
		{"_SYSTEMD_UNIT", "SYSTEMD_UNIT"},
		{"__x", "X"},
		{".x", "X"},
		{"2fa", "F_2FA"},
		{"_9", "F_9"},
		{"", "FIELD"},
		{"___", "FIELD"},
		{long, strings.Repeat("A", 64)},
		{"9" + long, "F_9" + strings.Repeat("A", 61)},
		// journal.Send sets these itself.
		{"message", "F_MESSAGE"},
		{"MESSAGE", "F_MESSAGE"},
		{"PRIORITY", "F_PRIORITY"},
		{"MESSAGE_X", "MESSAGE_X"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := FieldName(tt.in)
			if got != tt.want {
				t.Errorf("FieldName(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if !journaldAccepts(got) {
				t.Errorf("FieldName(%q) = %q, which journald rejects", tt.in, got)
			}
		})
	}
}

type objFunc = zapcore.ObjectMarshalerFunc

type errNilPtr struct{}

func (*errNilPtr) Error() string { panic("nil receiver dereferenced") }

func TestJournalCoreValues(t *testing.T) {
	when := time.Date(2025, 3, 4, 5, 6, 7, 8000, time.UTC)
	var nilErr *errNilPtr
	tests := []struct {
		name  string
		field zap.Field
		key   string
		want  string
	}{
		{"string", zap.String("KLP_PATCH", "klp_0042"), "KLP_PATCH", "klp_0042"},
		{"multi-line string", zap.String("out", "a\nb"), "OUT", "a\nb"},
		{"lowercase key", zap.String("kernel_release", "6.1.0-31-amd64"), "KERNEL_RELEASE", "6.1.0-31-amd64"},
		{"int", zap.Int("KLP_LEVEL", 42), "KLP_LEVEL", "42"},
		{"negative int64", zap.Int64("delta", -7), "DELTA", "-7"},
		{"uint64", zap.Uint64("big", 18446744073709551615), "BIG", "18446744073709551615"},
		{"float", zap.Float64("ratio", 1.5), "RATIO", "1.5"},
		{"float32", zap.Float32("f", 0.1), "F", "0.1"},
		{"bool", zap.Bool("forced", false), "FORCED", "false"},
		{"duration", zap.Duration("took", 1500*time.Millisecond), "TOOK", "1.5s"},
		{"time", zap.Time("at", when), "AT", "2025-03-04T05:06:07.000008Z"},
		{"error", zap.Error(errors.New("boom")), "ERROR", "boom"},
		{"wrapped error", zap.Error(fmt.Errorf("load klp_1: %w", errors.New("EBUSY"))), "ERROR", "load klp_1: EBUSY"},
		{"named error", zap.NamedError("cause", errors.New("x")), "CAUSE", "x"},
		{"nil pointer error", zap.Error(nilErr), "ERROR", "<nil>"},
		{"stringer", zap.Stringer("lvl", zapcore.WarnLevel), "LVL", "warn"},
		{"byte string", zap.ByteString("raw", []byte("abc")), "RAW", "abc"},
		{"binary", zap.Binary("blob", []byte{0, 1, 2}), "BLOB", "AAEC"},
		{"strings", zap.Strings("mods", []string{"a", "b"}), "MODS", `["a","b"]`},
		{"durations", zap.Durations("waits", []time.Duration{time.Second}), "WAITS", `["1s"]`},
		{"object", zap.Object("patch", objFunc(func(e zapcore.ObjectEncoder) error {
			e.AddString("name", "klp_1")
			e.AddDuration("wait", 2*time.Second)
			return nil
		})), "PATCH", `{"name":"klp_1","wait":"2s"}`},
		{"reflected map", zap.Any("m", map[string]int{"b": 2, "a": 1}), "M", `{"a":1,"b":2}`},
		{"failed object", zap.Object("bad", objFunc(func(zapcore.ObjectEncoder) error {
			return errors.New("cannot marshal")
		})), "BADERROR", "cannot marshal"},
		{"unencodable reflected", zap.Reflect("ch", make(chan int)), "CHERROR", "json: unsupported type: chan int"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeSender{}
			l := zap.New(NewJournalCore(zapcore.DebugLevel, f.send))
			l.Info("msg", tt.field)
			got, ok := f.only(t).vars[tt.key]
			if !ok || got != tt.want {
				t.Errorf("%s = %q (present %v), want %q; all: %v", tt.key, got, ok, tt.want, f.only(t).vars)
			}
			for k := range f.only(t).vars {
				if !journaldAccepts(k) {
					t.Errorf("invalid journald field name %q", k)
				}
			}
		})
	}
}

func TestJournalCoreNamespaceAndInline(t *testing.T) {
	f := &fakeSender{}
	l := zap.New(NewJournalCore(zapcore.DebugLevel, f.send))
	l.With(zap.Namespace("http")).Info("m",
		zap.Int("status", 503),
		zap.Inline(objFunc(func(e zapcore.ObjectEncoder) error {
			e.AddString("host", "repo")
			return nil
		})),
	)
	vars := f.only(t).vars
	for k, want := range map[string]string{"HTTP_STATUS": "503", "HTTP_HOST": "repo"} {
		if vars[k] != want {
			t.Errorf("%s = %q, want %q; all: %v", k, vars[k], want, vars)
		}
	}
}

func TestJournalCoreMetadata(t *testing.T) {
	t.Run("caller identifier logger", func(t *testing.T) {
		f := &fakeSender{}
		l := zap.New(NewJournalCore(zapcore.DebugLevel, f.send), zap.AddCaller()).Named("fetch")
		_, file, line, _ := runtime.Caller(0)
		l.Info("hello", zap.String("SYSLOG_IDENTIFIER", "spoofed"))
		s := f.only(t)
		if s.msg != "hello" {
			t.Errorf("message = %q", s.msg)
		}
		want := map[string]string{
			"CODE_FILE":         file,
			"CODE_LINE":         strconv.Itoa(line + 1),
			"SYSLOG_IDENTIFIER": "klp-agent",
			"LOGGER":            "fetch",
		}
		for k, v := range want {
			if s.vars[k] != v {
				t.Errorf("%s = %q, want %q", k, s.vars[k], v)
			}
		}
		if !strings.HasSuffix(s.vars["CODE_FUNC"], ".TestJournalCoreMetadata.func1") {
			t.Errorf("CODE_FUNC = %q", s.vars["CODE_FUNC"])
		}
		if _, ok := s.vars["STACK"]; ok {
			t.Errorf("unexpected STACK without AddStacktrace")
		}
	})
	t.Run("no caller", func(t *testing.T) {
		f := &fakeSender{}
		zap.New(NewJournalCore(zapcore.DebugLevel, f.send)).Info("m")
		for _, k := range []string{"CODE_FILE", "CODE_LINE", "CODE_FUNC", "LOGGER"} {
			if v, ok := f.only(t).vars[k]; ok {
				t.Errorf("unexpected %s=%q", k, v)
			}
		}
	})
	t.Run("custom and empty identifier", func(t *testing.T) {
		f := &fakeSender{}
		zap.New(NewJournalCore(zapcore.DebugLevel, f.send, WithIdentifier("klp-test"))).Info("m")
		zap.New(NewJournalCore(zapcore.DebugLevel, f.send, WithIdentifier(""))).Info("m")
		c := f.all()
		if got := c[0].vars["SYSLOG_IDENTIFIER"]; got != "klp-test" {
			t.Errorf("SYSLOG_IDENTIFIER = %q", got)
		}
		if got, ok := c[1].vars["SYSLOG_IDENTIFIER"]; ok {
			t.Errorf("empty identifier still sent %q", got)
		}
	})
	t.Run("stack", func(t *testing.T) {
		f := &fakeSender{}
		zap.New(NewJournalCore(zapcore.DebugLevel, f.send), zap.AddStacktrace(zapcore.WarnLevel)).Warn("m")
		if st := f.only(t).vars["STACK"]; !strings.Contains(st, "TestJournalCoreMetadata") {
			t.Errorf("STACK = %q", st)
		}
	})
}

func TestJournalCoreWithIsolation(t *testing.T) {
	f := &fakeSender{}
	parent := NewJournalCore(zapcore.DebugLevel, f.send)
	child1 := parent.With([]zapcore.Field{zap.String("KLP_PATCH", "p1")})
	child2 := parent.With([]zapcore.Field{zap.String("KLP_PATCH", "p2"), zap.Int("KLP_LEVEL", 2)})
	grand := child1.With([]zapcore.Field{zap.Namespace("http"), zap.String("host", "h")})
	// Per-call fields must not stick to the core either.
	if err := child1.Write(zapcore.Entry{Message: "once"}, []zapcore.Field{zap.String("ONCE", "x")}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		core   zapcore.Core
		want   map[string]string
		absent []string
	}{
		{"parent", parent, map[string]string{}, []string{"KLP_PATCH", "KLP_LEVEL", "HTTP_HOST", "ONCE"}},
		{"child1", child1, map[string]string{"KLP_PATCH": "p1"}, []string{"KLP_LEVEL", "HTTP_HOST", "ONCE"}},
		{"child2", child2, map[string]string{"KLP_PATCH": "p2", "KLP_LEVEL": "2"}, []string{"HTTP_HOST"}},
		// The namespace opened in grand applies to later fields too.
		{"grand", grand, map[string]string{"KLP_PATCH": "p1", "HTTP_HOST": "h", "HTTP_LATE": "l"}, []string{"KLP_LEVEL", "LATE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.calls = nil
			if err := tt.core.Write(zapcore.Entry{Message: "m"}, []zapcore.Field{zap.String("late", "l")}); err != nil {
				t.Fatal(err)
			}
			vars := f.only(t).vars
			for k, v := range tt.want {
				if vars[k] != v {
					t.Errorf("%s = %q, want %q; all %v", k, vars[k], v, vars)
				}
			}
			for _, k := range tt.absent {
				if v, ok := vars[k]; ok {
					t.Errorf("leaked %s=%q", k, v)
				}
			}
		})
	}
}

func TestJournalCoreLevelFiltering(t *testing.T) {
	f := &fakeSender{}
	lvl := zap.NewAtomicLevelAt(zapcore.WarnLevel)
	core := NewJournalCore(lvl, f.send)
	l := zap.New(core)
	if got := zapcore.LevelOf(core); got != zapcore.WarnLevel {
		t.Errorf("LevelOf = %v, want warn", got)
	}
	l.Debug("d")
	l.Info("i")
	l.Warn("w")
	l.Error("e")
	lvl.SetLevel(zapcore.DebugLevel) // runtime changes take effect
	l.Debug("d2")

	var got []string
	for _, c := range f.all() {
		got = append(got, c.msg)
	}
	if want := []string{"w", "e", "d2"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("sent %v, want %v", got, want)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("stderr closed") }

func TestJournalCoreFallback(t *testing.T) {
	sendErr := errors.New("dial unixgram /run/systemd/journal/socket: no such file or directory")

	t.Run("one line per failed entry", func(t *testing.T) {
		f := &fakeSender{err: sendErr}
		var buf bytes.Buffer
		var errOut bytes.Buffer
		core := NewJournalCore(zapcore.DebugLevel, f.send, WithFallback(&buf))
		l := zap.New(core, zap.ErrorOutput(zapcore.AddSync(&errOut))).With(zap.String("KLP_PATCH", "p1"))
		l.Error("load failed", zap.String("out", "line1\nline2"), zap.Error(errors.New("EBUSY")))
		l.Warn("second")

		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		if len(lines) != 2 {
			t.Fatalf("fallback got %d lines, want 2:\n%s", len(lines), buf.String())
		}
		for _, want := range []string{"\tERROR\t", "\tload failed", "KLP_PATCH=p1", `OUT="line1\nline2"`, "ERROR=EBUSY", "SYSLOG_IDENTIFIER=klp-agent", "journal send failed: ", "no such file"} {
			if !strings.Contains(lines[0], want) {
				t.Errorf("line %q lacks %q", lines[0], want)
			}
		}
		if !strings.Contains(lines[1], "\tWARN\tsecond") {
			t.Errorf("second line %q", lines[1])
		}
		// The entry was not lost, so zap must not print a write error too.
		if errOut.Len() != 0 {
			t.Errorf("zap error output: %q", errOut.String())
		}
	})

	t.Run("fallback fails too", func(t *testing.T) {
		f := &fakeSender{err: sendErr}
		core := NewJournalCore(zapcore.DebugLevel, f.send, WithFallback(failWriter{}))
		err := core.Write(zapcore.Entry{Message: "m"}, nil)
		if err == nil || !errors.Is(err, sendErr) || !strings.Contains(err.Error(), "stderr closed") {
			t.Errorf("Write error = %v, want both causes", err)
		}
	})

	t.Run("success writes nothing", func(t *testing.T) {
		f := &fakeSender{}
		var buf bytes.Buffer
		zap.New(NewJournalCore(zapcore.DebugLevel, f.send, WithFallback(&buf))).Info("m")
		if buf.Len() != 0 {
			t.Errorf("fallback written on success: %q", buf.String())
		}
	})
}

func TestJournalCoreConcurrent(t *testing.T) {
	f := &fakeSender{err: errors.New("down")}
	var buf bytes.Buffer
	l := zap.New(NewJournalCore(zapcore.DebugLevel, f.send, WithFallback(&buf)))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			cl := l.With(zap.Int("worker", i))
			for j := range 50 {
				cl.Info("tick", zap.Int("j", j))
			}
		})
	}
	wg.Wait()
	if n := len(f.all()); n != 400 {
		t.Errorf("sent %d, want 400", n)
	}
	if n := strings.Count(buf.String(), "\n"); n != 400 {
		t.Errorf("fallback lines %d, want 400", n)
	}
}

func TestJournalCoreSync(t *testing.T) {
	if err := NewJournalCore(zapcore.InfoLevel, nil).Sync(); err != nil {
		t.Errorf("Sync = %v", err)
	}
}
