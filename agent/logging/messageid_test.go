package logging

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestMessageID(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		valid   bool
		wantKey string
	}{
		{"sd-id128 form", "8d45620c1a4348dbb17410da57c60c66", true, "MESSAGE_ID"},
		{"all digits", "01234567890123456789012345678901", true, "MESSAGE_ID"},
		{"uppercase", "8D45620C1A4348DBB17410DA57C60C66", false, "INVALID_MESSAGE_ID"},
		{"uuid with dashes", "8d45620c-1a43-48db-b174-10da57c60c66", false, "INVALID_MESSAGE_ID"},
		{"too short", "8d45620c1a4348dbb17410da57c60c6", false, "INVALID_MESSAGE_ID"},
		{"too long", "8d45620c1a4348dbb17410da57c60c660", false, "INVALID_MESSAGE_ID"},
		{"non-hex", "8d45620c1a4348dbb17410da57c60c6g", false, "INVALID_MESSAGE_ID"},
		{"empty", "", false, "INVALID_MESSAGE_ID"},
		{"multibyte", strings.Repeat("é", 16), false, "INVALID_MESSAGE_ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidMessageID(tt.id); got != tt.valid {
				t.Errorf("ValidMessageID(%q) = %v, want %v", tt.id, got, tt.valid)
			}
			f := MessageID(tt.id)
			if f.Key != tt.wantKey || f.Type != zapcore.StringType || f.String != tt.id {
				t.Errorf("MessageID(%q) = %+v, want %s=%q", tt.id, f, tt.wantKey, tt.id)
			}
			// The key reaches journald unchanged.
			fs := &fakeSender{}
			zap.New(NewJournalCore(zapcore.InfoLevel, fs.send)).Info("m", f)
			if got := fs.only(t).vars[tt.wantKey]; got != tt.id {
				t.Errorf("journal %s = %q, want %q", tt.wantKey, got, tt.id)
			}
		})
	}
}
