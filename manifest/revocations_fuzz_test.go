package manifest

import (
	"encoding/json"
	"slices"
	"testing"
)

// FuzzRevocations: no payload may panic the parser, and whatever it
// accepts is valid and has no member beyond revoking and pausing (the
// revoke role's whole scope), at the top level or in an entry.
func FuzzRevocations(f *testing.F) {
	f.Add([]byte(`{"type":"klp-agent-revocations","version":1,"expires":"2027-01-01T00:00:00Z","revoked":[{"name":"a","level":1}],"paused":[{"name":"b","level":2,"kernel":"6.1"}]}`))
	f.Add([]byte(`{"type":"klp-agent-revocations","version":1,"expires":"2027-01-01T00:00:00Z","patches":[]}`))
	f.Add([]byte(`{"type":"klp-agent-revocations","version":1,"expires":"2027-01-01T00:00:00Z","revoked":[{"name":"a","level":1,"url":"x"}]}`))
	f.Add([]byte(`{"version":1,"version":2}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		r, err := ParseRevocations(payload)
		if err != nil {
			if r != nil {
				t.Fatal("document returned with an error")
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted an invalid document: %v", err)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(payload, &raw); err != nil {
			t.Fatalf("accepted what encoding/json cannot read: %v", err)
		}
		for k := range raw {
			if !slices.Contains(revocationsMembers, k) {
				t.Fatalf("accepted member %q", k)
			}
		}
		for _, list := range []struct {
			key     string
			allowed []string
		}{{"revoked", revokedMembers}, {"paused", pauseMembers}} {
			var entries []map[string]json.RawMessage
			if b, ok := raw[list.key]; ok && string(b) != "null" {
				if err := json.Unmarshal(b, &entries); err != nil {
					t.Fatalf("%s: %v", list.key, err)
				}
			}
			for _, e := range entries {
				for k := range e {
					if !slices.Contains(list.allowed, k) {
						t.Fatalf("accepted %s member %q", list.key, k)
					}
				}
			}
		}
	})
}
