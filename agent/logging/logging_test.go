package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in      string
		want    zapcore.Level
		wantErr bool
	}{
		{"debug", zapcore.DebugLevel, false},
		{"info", zapcore.InfoLevel, false},
		{"warn", zapcore.WarnLevel, false},
		{"error", zapcore.ErrorLevel, false},
		{"", zapcore.InfoLevel, false},
		{" DEBUG ", zapcore.DebugLevel, false},
		{"warning", 0, true},
		{"trace", 0, true},
		{"fatal", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseLevel(tt.in)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "debug, info, warn, error") || !strings.Contains(err.Error(), tt.in) {
					t.Errorf("ParseLevel(%q) error = %v, want one naming the value and the allowed values", tt.in, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseLevel(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want []string
	}{
		{"bad level", Options{Level: "verbose"}, []string{`"verbose"`, "debug, info, warn, error"}},
		{"bad format", Options{Format: "syslog"}, []string{`"syslog"`, "auto, journal, console, json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := New(tt.opts)
			if err == nil {
				t.Fatalf("New succeeded: %v", l)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestNewFormatDecision(t *testing.T) {
	tests := []struct {
		name      string
		format    string
		isJournal bool
		// wantAsked: whether IsJournal should be consulted at all.
		wantAsked bool
		want      string // journal, console or json
	}{
		{"auto under journald", "auto", true, true, "journal"},
		{"auto on a terminal", "auto", false, true, "console"},
		{"empty means auto", "", true, true, "journal"},
		{"explicit journal", "journal", false, false, "journal"},
		{"explicit console under journald", "console", true, false, "console"},
		{"json", "JSON", true, false, "json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeSender{}
			var stderr bytes.Buffer
			asked := false
			l, err := New(Options{
				Format:    tt.format,
				Stderr:    &stderr,
				Send:      f.send,
				IsJournal: func() bool { asked = true; return tt.isJournal },
			})
			if err != nil {
				t.Fatal(err)
			}
			l.Info("hello", zap.String("KLP_PATCH", "p1"))
			if asked != tt.wantAsked {
				t.Errorf("IsJournal consulted = %v, want %v", asked, tt.wantAsked)
			}

			var got string
			switch out := stderr.String(); {
			case len(f.all()) == 1 && out == "":
				got = "journal"
			case len(f.all()) == 0 && strings.HasPrefix(out, "{"):
				got = "json"
			case len(f.all()) == 0 && strings.Contains(out, "\tINFO\t"):
				got = "console"
			default:
				t.Fatalf("unclear output: sends %v, stderr %q", f.all(), out)
			}
			if got != tt.want {
				t.Errorf("format = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestStderrIsJournal(t *testing.T) {
	var st syscall.Stat_t
	if err := syscall.Fstat(syscall.Stderr, &st); err != nil {
		t.Skipf("fstat stderr: %v", err)
	}
	tests := []struct {
		name, env string
		want      bool
	}{
		{"unset", "", false},
		{"matches stderr", fmt.Sprintf("%d:%d", st.Dev, st.Ino), true},
		{"other inode", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1), false},
		{"malformed", "journal", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", tt.env)
			if got := StderrIsJournal(); got != tt.want {
				t.Errorf("StderrIsJournal() with JOURNAL_STREAM=%q = %v, want %v", tt.env, got, tt.want)
			}
		})
	}
}

func TestNewConsoleFormat(t *testing.T) {
	var stderr bytes.Buffer
	l, err := New(Options{Format: "console", Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	l.Named("fetch").Warn("slow mirror", zap.String("KLP_PATCH", "p1"), zap.Duration("took", 2500000000))
	line := strings.TrimSuffix(stderr.String(), "\n")
	re := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[-+Z][0-9]*\tWARN\tfetch\tslow mirror\t\{"KLP_PATCH": "p1", "took": "2.5s"\}$`)
	if !re.MatchString(line) {
		t.Errorf("console line %q does not match %s", line, re)
	}
}

func TestNewJSONFormat(t *testing.T) {
	var stderr bytes.Buffer
	l, err := New(Options{Format: "json", Level: "debug", Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("d", MessageID("0123456789abcdef0123456789abcdef"))
	var rec map[string]any
	if err := json.Unmarshal(stderr.Bytes(), &rec); err != nil {
		t.Fatalf("not JSON: %q: %v", stderr.String(), err)
	}
	for k, v := range map[string]any{"level": "debug", "msg": "d", "MESSAGE_ID": "0123456789abcdef0123456789abcdef"} {
		if rec[k] != v {
			t.Errorf("%s = %v, want %v", k, rec[k], v)
		}
	}
	if c, _ := rec["caller"].(string); !strings.HasPrefix(c, "logging/logging_test.go:") {
		t.Errorf("caller = %q", c)
	}
}

func TestNewJournal(t *testing.T) {
	tests := []struct {
		name   string
		opts   Options
		wantID string
		sent   []string
	}{
		{"defaults", Options{}, "klp-agent", []string{"i", "w", "e"}},
		{"identifier and level", Options{Identifier: "klp-test", Level: "warn"}, "klp-test", []string{"w", "e"}},
		{"debug", Options{Level: "debug"}, "klp-agent", []string{"d", "i", "w", "e"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeSender{}
			opts := tt.opts
			opts.Format = "journal"
			opts.Send = f.send
			l, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			l.Debug("d")
			l.Info("i")
			l.Warn("w")
			l.Error("e")
			var msgs []string
			for _, c := range f.all() {
				msgs = append(msgs, c.msg)
				if c.vars["SYSLOG_IDENTIFIER"] != tt.wantID {
					t.Errorf("SYSLOG_IDENTIFIER = %q, want %q", c.vars["SYSLOG_IDENTIFIER"], tt.wantID)
				}
				// New adds the caller: journal entries point at this file.
				if !strings.HasSuffix(c.vars["CODE_FILE"], "/logging_test.go") {
					t.Errorf("CODE_FILE = %q", c.vars["CODE_FILE"])
				}
				// Operational errors carry no Go stack.
				if _, ok := c.vars["STACK"]; ok {
					t.Errorf("unexpected STACK on %q", c.msg)
				}
			}
			if strings.Join(msgs, ",") != strings.Join(tt.sent, ",") {
				t.Errorf("sent %v, want %v", msgs, tt.sent)
			}
		})
	}
}

func TestNewJournalFallsBackToStderr(t *testing.T) {
	f := &fakeSender{err: errors.New("journal gone")}
	var stderr bytes.Buffer
	l, err := New(Options{Format: "journal", Stderr: &stderr, Send: f.send})
	if err != nil {
		t.Fatal(err)
	}
	l.Info("still here")
	out := stderr.String()
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "still here") || !strings.Contains(out, "journal gone") {
		t.Errorf("stderr = %q, want one fallback line", out)
	}
}
