package logging

import "go.uber.org/zap"

// MessageIDField is the journald field that identifies a kind of event,
// stable across releases and wording changes (see systemd.journal-fields(7));
// `journalctl MESSAGE_ID=...` finds every occurrence.
const MessageIDField = "MESSAGE_ID"

// InvalidMessageIDField carries an id MessageID rejected, so the mistake is
// visible without putting a malformed value into MESSAGE_ID.
const InvalidMessageIDField = "INVALID_MESSAGE_ID"

// MessageID returns the MESSAGE_ID field for id. Callers define their ids as
// constants, generated once with `systemd-id128 new` (or
// `journalctl --new-id128`): 32 lowercase hex characters, no dashes.
//
// A malformed id does not panic, because a logging call must never take the
// agent down; it is logged under INVALID_MESSAGE_ID instead. Check id
// constants in unit tests with ValidMessageID.
func MessageID(id string) zap.Field {
	if !ValidMessageID(id) {
		return zap.String(InvalidMessageIDField, id)
	}
	return zap.String(MessageIDField, id)
}

// ValidMessageID reports whether id is in sd-id128 string form: exactly 32
// characters of [0-9a-f].
func ValidMessageID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
