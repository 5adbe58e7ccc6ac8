// Package logging builds the agent's zap logger: structured records straight
// into journald when running as a systemd service, a readable console format
// otherwise, plus adapters for libraries that bring their own logger
// interface.
//
// Structured keys are written as journald field names (KLP_PATCH,
// KERNEL_RELEASE, MESSAGE_ID, ...) so `journalctl KLP_PATCH=...` works and the
// same keys read naturally in console and JSON output.
package logging

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Accepted Options.Level and Options.Format values.
const (
	FormatAuto    = "auto"
	FormatJournal = "journal"
	FormatConsole = "console"
	FormatJSON    = "json"
)

var (
	levelNames  = []string{"debug", "info", "warn", "error"}
	formatNames = []string{FormatAuto, FormatJournal, FormatConsole, FormatJSON}
)

// Options configures New. The zero value logs at info, picks the format
// automatically and writes to os.Stderr.
type Options struct {
	// Level is one of debug, info, warn, error (case-insensitive); empty
	// means info.
	Level string
	// Format is one of auto, journal, console, json; empty means auto.
	// auto uses the journal when stderr is journald's stream (IsJournal),
	// console otherwise.
	Format string
	// Identifier is SYSLOG_IDENTIFIER for journal output; empty means
	// DefaultIdentifier.
	Identifier string
	// Stderr receives console and JSON output, journal fallback lines and
	// zap's internal errors; nil means os.Stderr.
	Stderr io.Writer
	// Send delivers journal entries; nil means journal.Send.
	Send SendFunc
	// IsJournal decides the auto format; nil means StderrIsJournal.
	IsJournal func() bool
}

// StderrIsJournal reports whether stderr is connected to journald's stream
// transport (systemd sets JOURNAL_STREAM for services). A malformed
// JOURNAL_STREAM counts as no: console output on stderr still reaches the
// journal in that case, just without structure.
func StderrIsJournal() bool {
	ok, err := journal.StderrIsJournalStream()
	return err == nil && ok
}

// New builds the agent's logger from opts.
func New(opts Options) (*zap.Logger, error) {
	level, err := ParseLevel(opts.Level)
	if err != nil {
		return nil, err
	}
	format := strings.ToLower(strings.TrimSpace(opts.Format))
	if format == "" {
		format = FormatAuto
	}
	stderr := opts.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	out := zapcore.Lock(zapcore.AddSync(stderr))

	if format == FormatAuto {
		isJournal := opts.IsJournal
		if isJournal == nil {
			isJournal = StderrIsJournal
		}
		format = FormatConsole
		if isJournal() {
			format = FormatJournal
		}
	}

	var core zapcore.Core
	switch format {
	case FormatJournal:
		id := opts.Identifier
		if id == "" {
			id = DefaultIdentifier
		}
		core = NewJournalCore(level, opts.Send, WithIdentifier(id), WithFallback(out))
	case FormatConsole:
		core = zapcore.NewCore(zapcore.NewConsoleEncoder(consoleEncoderConfig()), out, level)
	case FormatJSON:
		core = zapcore.NewCore(zapcore.NewJSONEncoder(jsonLogEncoderConfig()), out, level)
	default:
		return nil, fmt.Errorf("logging: unknown format %q (allowed: %s)", opts.Format, strings.Join(formatNames, ", "))
	}

	return zap.New(Redacting(core),
		// Caller feeds CODE_FILE/CODE_LINE/CODE_FUNC in the journal.
		zap.AddCaller(),
		// Stacks only for programming errors: an Error here is usually an
		// operational failure (network, kernel refusal) where a Go stack
		// is noise.
		zap.AddStacktrace(zapcore.DPanicLevel),
		zap.ErrorOutput(out),
	), nil
}

// ParseLevel accepts debug, info, warn or error (case-insensitive); empty
// means info.
func ParseLevel(s string) (zapcore.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return zapcore.DebugLevel, nil
	case "info", "":
		return zapcore.InfoLevel, nil
	case "warn":
		return zapcore.WarnLevel, nil
	case "error":
		return zapcore.ErrorLevel, nil
	}
	return zapcore.InfoLevel, fmt.Errorf("logging: unknown level %q (allowed: %s)", s, strings.Join(levelNames, ", "))
}

// consoleEncoderConfig is for people reading a terminal: time, level,
// logger name, message, then fields as JSON.
func consoleEncoderConfig() zapcore.EncoderConfig {
	return zapcore.EncoderConfig{
		TimeKey:          "ts",
		LevelKey:         "level",
		NameKey:          "logger",
		MessageKey:       "msg",
		StacktraceKey:    "stacktrace",
		LineEnding:       zapcore.DefaultLineEnding,
		EncodeLevel:      zapcore.CapitalLevelEncoder,
		EncodeTime:       zapcore.ISO8601TimeEncoder,
		EncodeDuration:   zapcore.StringDurationEncoder,
		EncodeName:       zapcore.FullNameEncoder,
		ConsoleSeparator: "\t",
	}
}

// jsonLogEncoderConfig is for log shippers: one JSON object per line.
func jsonLogEncoderConfig() zapcore.EncoderConfig {
	return zapcore.EncoderConfig{
		TimeKey:        "ts",
		LevelKey:       "level",
		NameKey:        "logger",
		CallerKey:      "caller",
		FunctionKey:    zapcore.OmitKey,
		MessageKey:     "msg",
		StacktraceKey:  "stacktrace",
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeTime:     zapcore.ISO8601TimeEncoder,
		EncodeDuration: zapcore.StringDurationEncoder,
		EncodeCaller:   zapcore.ShortCallerEncoder,
		EncodeName:     zapcore.FullNameEncoder,
	}
}
