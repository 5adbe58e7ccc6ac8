// Package kmsg holds what every reader of /dev/kmsg records needs: the
// kernel escapes non-printable bytes in a record's text as \xNN.
package kmsg

import (
	"strconv"
	"strings"
)

// Unescape undoes /dev/kmsg's \xNN escapes.
func Unescape(s string) string {
	if !strings.Contains(s, `\x`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			if v, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
