package kmsg

import "testing"

func TestUnescape(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`plain`, "plain"},
		{`tab\x09here`, "tab\there"},
		{`nl\x0a`, "nl\n"},
		{`bad\xZZ`, `bad\xZZ`},
		{`short\x4`, `short\x4`},
		{`\x5c\x78`, `\x`},
	} {
		if got := Unescape(tt.in); got != tt.want {
			t.Errorf("Unescape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
