package logging

import (
	"bytes"
	"errors"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// Whatever a caller logs, in the message or in a string, error or Stringer
// field, or bound with With, a URL's credentials never come out; in every
// format New builds.
func TestLoggerRedactsURLs(t *testing.T) {
	const secretURL = "https://user:s3cret@mirror.example/m.json?token=T0KEN"
	u, _ := url.Parse(secretURL)
	for _, format := range []string{FormatConsole, FormatJSON, FormatJournal} {
		t.Run(format, func(t *testing.T) {
			var out bytes.Buffer
			f := &fakeSender{}
			log, err := New(Options{Level: "debug", Format: format, Stderr: &out, Send: f.send})
			if err != nil {
				t.Fatal(err)
			}
			log.With(zap.String("BOUND", secretURL)).Error("poll failed: fetch "+secretURL+": 503",
				zap.String("MANIFEST_URL", secretURL), zap.Error(errors.New(`Get "`+secretURL+`": EOF`)),
				zap.Stringer("URL", u), zap.ByteString("RAW", []byte(secretURL)))
			all := out.String()
			for _, e := range f.all() {
				all += e.msg
				for k, v := range e.vars {
					all += k + "=" + v + "\n"
				}
			}
			if strings.Contains(all, "s3cret") || strings.Contains(all, "T0KEN") {
				t.Fatalf("secret logged:\n%s", all)
			}
			if n := strings.Count(all, "https://user:xxxxx@mirror.example/m.json?token=xxxxx"); n < 6 {
				t.Fatalf("redacted URL shown %d times, want 6 (message and each field):\n%s", n, all)
			}
		})
	}
}

// Text from outside (a netconsole sender's header, a mirror's reason
// phrase, kernel text) reaches no output raw: ESC, CR, a newline that
// would forge a line, the one-byte CSI 0x9b (raw and as U+009B) and bidi
// overrides come out as visible escapes, in the message and in every
// kind of field, in every format New builds.
func TestLoggerEscapesControls(t *testing.T) {
	const hostile = "6.1.0 x\x1b[2J\r\nFAKE: ok\x9b31m\u009b1m\u202e"
	for _, format := range []string{FormatConsole, FormatJSON, FormatJournal} {
		t.Run(format, func(t *testing.T) {
			var out bytes.Buffer
			f := &fakeSender{}
			log, err := New(Options{Level: "debug", Format: format, Stderr: &out, Send: f.send})
			if err != nil {
				t.Fatal(err)
			}
			log.With(zap.String("BOUND", hostile)).Warn("netconsole report from "+hostile,
				zap.String("KLP_SENDER", hostile), zap.Error(errors.New("header "+hostile)),
				zap.Stringer("S", stringer(hostile)), zap.ByteString("RAW", []byte(hostile)),
				zap.Strings("EVIDENCE", []string{hostile}))
			all := out.String()
			for _, e := range f.all() {
				all += e.msg + "\n"
				for k, v := range e.vars {
					all += k + "=" + v + "\n"
				}
			}
			for _, bad := range []string{"\x1b", "\r", "\nFAKE", "\x9b", "\u009b", "\u202e"} {
				if strings.Contains(all, bad) {
					t.Errorf("%q reached the output:\n%q", bad, all)
				}
			}
			if !strings.Contains(all, `x\x1b[2J\r\nFAKE`) && !strings.Contains(all, `x\\x1b[2J\\r\\nFAKE`) {
				t.Errorf("message not shown escaped:\n%s", all)
			}
		})
	}
}

type stringer string

func (s stringer) String() string { return string(s) }
