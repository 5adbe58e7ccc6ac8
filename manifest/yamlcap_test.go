package manifest

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// padYAML pads a YAML payload to exactly n bytes with a trailing comment.
func padYAML(t *testing.T, payload []byte, n int) []byte {
	t.Helper()
	if len(payload)+3 > n {
		t.Fatalf("payload of %d bytes cannot be padded to %d", len(payload), n)
	}
	out := append([]byte{}, payload...)
	out = append(out, "# "...)
	out = append(out, strings.Repeat("x", n-len(out)-1)...)
	return append(out, '\n')
}

func marshalBench(t *testing.T, n int, json bool) []byte {
	t.Helper()
	marshal := Marshal
	if json {
		marshal = MarshalJSON
	}
	b, err := marshal(benchManifest(n))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A host parses a signed YAML payload only up to MaxYAMLPayload: over it
// the envelope is refused before the YAML parser runs, with ErrYAMLTooLarge
// (an ErrTooLarge) naming the fix. YAML-signed manifests under the cap
// verify as before, and JSON has no such bound. The over-cap rows verified
// on the old code (in 300-400 ms at 10,000 entries).
func TestYAMLPayloadCap(t *testing.T) {
	k := newTestKey(t)
	trust := Trust{Keys: keyring(k), Threshold: 1, MaxSize: MaxSize}
	now := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	small := []byte(validPayload())
	json10k := marshalBench(t, 10_000, true)
	for _, tc := range []struct {
		name    string
		payload []byte
		refused bool
	}{
		{"yaml, hand-signed size", small, false},
		{"yaml, exactly at the cap", padYAML(t, small, MaxYAMLPayload), false},
		{"yaml, one byte over the cap", padYAML(t, small, MaxYAMLPayload+1), true},
		{"yaml, 1,000 entries", marshalBench(t, 1000, false), true},
		{"yaml, 10,000 entries", marshalBench(t, 10_000, false), true},
		{"json, 10,000 entries", json10k, false},
		{"json after blank lines", append([]byte("\n \t\r\n"), json10k...), false},
		{"json behind a YAML comment is YAML", append([]byte("# c\n"), json10k...), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := sign(t, string(tc.payload), k)
			for _, kernel := range []string{"", "6.1.0-28-amd64"} {
				v, err := trust.VerifyFor(env, now, nil, kernel)
				if !tc.refused {
					if err != nil {
						t.Fatalf("kernel %q: %d-byte payload: %v", kernel, len(tc.payload), err)
					}
					if v.Version == 0 {
						t.Fatalf("kernel %q: no version parsed", kernel)
					}
					continue
				}
				if !errors.Is(err, ErrYAMLTooLarge) || !errors.Is(err, ErrTooLarge) {
					t.Fatalf("kernel %q: %d-byte YAML payload: %v, want ErrYAMLTooLarge", kernel, len(tc.payload), err)
				}
				for _, want := range []string{"YAML payload over 256 KiB", "hosts parse at most 262144 as YAML", "'manifest sign' without --format yaml"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q lacks %q", err, want)
					}
				}
			}
		})
	}
}

// CheckYAMLPayload warns the publisher over half the cap; the publisher's
// own parse of a YAML source has no cap (it is the hand-editing format).
func TestCheckYAMLPayload(t *testing.T) {
	small := []byte(validPayload())
	for _, tc := range []struct {
		name    string
		payload []byte
		warn    bool
		err     error
	}{
		{"small yaml", small, false, nil},
		{"yaml at half the cap", padYAML(t, small, MaxYAMLPayload/2), false, nil},
		{"yaml just over half the cap", padYAML(t, small, MaxYAMLPayload/2+1), true, nil},
		{"yaml at the cap", padYAML(t, small, MaxYAMLPayload), true, nil},
		{"yaml over the cap", padYAML(t, small, MaxYAMLPayload+1), false, ErrYAMLTooLarge},
		{"json over the cap", marshalBench(t, 2000, true), false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := CheckYAMLPayload(tc.payload)
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if (w != "") != tc.warn {
				t.Fatalf("warning %q, want one: %v", w, tc.warn)
			}
			if tc.warn && !strings.Contains(w, "hosts refuse one over 262144 (256 KiB)") {
				t.Errorf("warning %q does not say the limit", w)
			}
		})
	}
	if len(marshalBench(t, 2000, true)) <= MaxYAMLPayload {
		t.Fatal("the JSON row is not over the cap")
	}
	src := marshalBench(t, 10_000, false)
	if m, err := Parse(src); err != nil || len(m.Patches) != 10_000 {
		t.Fatalf("Parse of a %d-byte YAML source: %v", len(src), err)
	}
}

// A host restarted onto this bound with a cached over-cap YAML manifest
// (accepted by an older agent) refuses the cached copy too, as README
// says; one under the cap still loads.
func TestCachedYAMLPayloadCap(t *testing.T) {
	k := newTestKey(t)
	now := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		payload []byte
		refused bool
	}{
		{"under the cap", padYAML(t, []byte(validPayload()), MaxYAMLPayload), false},
		{"over the cap", padYAML(t, []byte(validPayload()), MaxYAMLPayload+1), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cache := testCache(dir)
			if err := os.WriteFile(cache.Envelope, sign(t, string(tc.payload), k), 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := NewFetcher(FetcherConfig{URL: "https://manifests.invalid/m.json"})
			if err != nil {
				t.Fatal(err)
			}
			s := &Source{Fetcher: f, Trust: Trust{Keys: keyring(k), Threshold: 1}, Cache: cache, Now: func() time.Time { return now }}
			err = s.LoadCache()
			if tc.refused {
				if !errors.Is(err, ErrYAMLTooLarge) || !strings.Contains(err.Error(), "cached manifest no longer accepted") || s.Current() != nil {
					t.Fatalf("LoadCache: %v (current %v), want ErrYAMLTooLarge", err, s.Current())
				}
				return
			}
			if err != nil || s.Current() == nil {
				t.Fatalf("LoadCache: %v", err)
			}
		})
	}
}
