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
