package manifest

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestSignedAtBoundsExpiry: with signed_at, manifest.max_expiry is measured
// from the signing time, so a manifest signed with too long an expiry stays
// refused however late a mirror replays it (measured from the host's
// clock, it became acceptable once its expiry came within the limit), and
// a signing time in the future cannot stretch the bound.
func TestSignedAtBoundsExpiry(t *testing.T) {
	k := newTestKey(t)
	trust := Trust{Keys: keyring(k), Threshold: 1, MaxExpiry: 30 * 24 * time.Hour}
	payload := func(signedAt, expires time.Time, json bool) string {
		if json {
			return `{"schema":1,"version":3,"expires":"` + expires.Format(time.RFC3339) + `","signed_at":"` + signedAt.Format(time.RFC3339) + `"}`
		}
		return "schema: 1\nversion: 3\nexpires: " + expires.Format(time.RFC3339) + "\nsigned_at: " + signedAt.Format(time.RFC3339) + "\n"
	}
	day := 24 * time.Hour
	for _, json := range []bool{true, false} {
		for _, tc := range []struct {
			name              string
			signedAt, expires time.Time
			at                time.Time
			want              error
		}{
			{"within the limit, fetched at once", now, now.Add(14 * day), now, nil},
			{"within the limit, fetched later", now, now.Add(14 * day), now.Add(10 * day), nil},
			{"at the limit", now, now.Add(30 * day), now, nil},
			{"beyond the limit, fetched at once", now, now.Add(40 * day), now, ErrExpiryTooFar},
			// Old behaviour (host clock) accepted this one: 40-15 < 30 days.
			{"beyond the limit, replayed later", now, now.Add(40 * day), now.Add(15 * day), ErrExpiryTooFar},
			{"signed in the future", now.Add(50 * 365 * day), now.Add(50*365*day + day), now, ErrInvalid},
			{"signed within the clock skew", now.Add(30 * time.Minute), now.Add(30 * day), now, nil},
			{"signed after it expires", now.Add(2 * day), now.Add(day), now, ErrInvalid},
		} {
			name := tc.name + map[bool]string{true: " (json)", false: " (yaml)"}[json]
			t.Run(name, func(t *testing.T) {
				v, err := trust.Verify(sign(t, payload(tc.signedAt, tc.expires, json), k), tc.at, nil)
				if !errors.Is(err, tc.want) || (tc.want == nil && !v.SignedAt.Equal(tc.signedAt)) {
					t.Fatalf("err %v, want %v", err, tc.want)
				}
			})
		}
	}
}

func TestSignedAtRoundTripAndLint(t *testing.T) {
	m, err := Parse([]byte("schema: 1\nversion: 3\nexpires: 2026-12-31T00:00:00Z\nsigned_at: 2026-11-25T12:00:00Z\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := MarshalJSON(m)
	if err != nil || !strings.Contains(string(b), `"signed_at":"2026-11-25T12:00:00Z"`) {
		t.Fatalf("canonical JSON %s (%v)", b, err)
	}
	again, err := Parse(b)
	if err != nil || !again.SignedAt.Equal(m.SignedAt) {
		t.Fatalf("round trip: %v", err)
	}
	// Without signed_at the canonical form is unchanged (older agents read it).
	m.SignedAt = time.Time{}
	if b, _ := MarshalJSON(m); strings.Contains(string(b), "signed_at") {
		t.Fatalf("zero signed_at rendered: %s", b)
	}
	if y, _ := Marshal(m); strings.Contains(string(y), "signed_at") {
		t.Fatalf("zero signed_at rendered: %s", y)
	}
	// Lint measures from signed_at: 36 days after it is too far even
	// when linted 10 days later.
	m.SignedAt = now
	m.Expires = now.Add(36 * 24 * time.Hour)
	if w := Lint(m, now.Add(10*24*time.Hour)); len(w) == 0 || !strings.Contains(w[0], "after signed_at") {
		t.Fatalf("lint: %q", w)
	}
}
