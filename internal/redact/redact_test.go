package redact

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"https://mirror.example/klp/manifest.json", "https://mirror.example/klp/manifest.json"},
		{"https://user:s3cret@mirror.example/m.json", "https://user:xxxxx@mirror.example/m.json"},
		{"https://ghp_T0KEN@mirror.example/m.json", "https://xxxxx@mirror.example/m.json"},
		{"https://mirror.example/m.json?token=T0KEN&v=2", "https://mirror.example/m.json?token=xxxxx&v=xxxxx"},
		{"https://b.s3.example/m.json?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc", "https://b.s3.example/m.json?X-Amz-Credential=xxxxx&X-Amz-Signature=xxxxx"},
		{"https://u:p%40ss@h/m.json?T0KEN", "https://u:xxxxx@h/m.json?xxxxx"},
		{"file:///srv/klp/manifest.json", "file:///srv/klp/manifest.json"},
		{"/srv/klp", "/srv/klp"},
		{"https://u:p@h/%zz", "(unparsable URL)"},
	} {
		if got := URL(tt.in); got != tt.want {
			t.Errorf("URL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// Messages the libraries write quote the URL in several ways; none lets
// the secret through.
func TestText(t *testing.T) {
	const u = "https://user:s3cret@mirror.example/m.json?token=T0KEN"
	for _, msg := range []string{
		"fetch " + u + ": 503",
		`Get "` + u + `": dial tcp 10.0.0.1:443: connect: connection refused`,
		"GET " + u + " giving up after 5 attempt(s)",
		"retrying (" + u + "), again.",
		"url=" + u + "\tnext",
		"two: " + u + " and " + strings.Replace(u, "s3cret", "other-s3cret", 1),
	} {
		got := Text(msg)
		if strings.Contains(got, "s3cret") || strings.Contains(got, "T0KEN") {
			t.Errorf("Text(%q) = %q: secret left", msg, got)
		}
		if !strings.Contains(got, "https://user:xxxxx@mirror.example/m.json?token=xxxxx") {
			t.Errorf("Text(%q) = %q: the redacted URL is missing", msg, got)
		}
	}
	if got := Text("no url here: 5 attempts"); got != "no url here: 5 attempts" {
		t.Errorf("Text changed plain text: %q", got)
	}
}

func TestError(t *testing.T) {
	base := fmt.Errorf("open https://u:s3cret@h/x: %w", fs.ErrNotExist)
	err := Error(base)
	if strings.Contains(err.Error(), "s3cret") || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Error: %q, Is ErrNotExist %v", err, errors.Is(err, fs.ErrNotExist))
	}
	if Error(nil) != nil {
		t.Error("Error(nil) is not nil")
	}
}

func TestArg(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"--password=hunter2", "--password=xxxxx"},
		{"API_TOKEN=abc", "API_TOKEN=xxxxx"},
		{"--api-key=abc", "--api-key=xxxxx"},
		{"--url=https://u:p@h/", "--url=https://u:xxxxx@h/"},
		{"/usr/local/bin/check", "/usr/local/bin/check"},
		{"--timeout=5", "--timeout=5"},
	} {
		if got := Arg(tt.in); got != tt.want {
			t.Errorf("Arg(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
