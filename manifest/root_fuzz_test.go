package manifest

import (
	"testing"
)

// FuzzRoot: no root file may panic the chain check, and whatever it
// accepts as root 1's successor is version 2, valid, and signed by a
// threshold of both generations' root keys.
func FuzzRoot(f *testing.F) {
	a, b, m := newTestKey(f), newTestKey(f), newTestKey(f)
	root1 := newRoot(1, []testKey{a}, 1, []testKey{m}, 1)
	root2 := newRoot(2, []testKey{a, b}, 2, []testKey{m}, 1)
	f.Add(signRoot(f, root2, a, b))
	f.Add(signRoot(f, root2, a))
	f.Add(signRoot(f, root1, a))
	f.Add(sign(f, validPayload(), a))
	f.Add([]byte(`{"payloadType":"application/vnd.klp-agent.root.v1+json","payload":"e30=","signatures":[{"keyid":"","sig":"AA=="}]}`))
	f.Fuzz(func(t *testing.T, envelope []byte) {
		next, err := root1.VerifyNext(envelope)
		if err != nil {
			if next != nil {
				t.Fatal("root returned with an error")
			}
		} else {
			if next.Version != 2 {
				t.Fatalf("accepted version %d after 1", next.Version)
			}
			if err := next.Validate(); err != nil {
				t.Fatalf("accepted an invalid root: %v", err)
			}
			if _, _, err := verifyEnvelope(envelope, RootPayloadType, root1.keyring(root1.Roles.Root), 1, RootMaxSize); err != nil {
				t.Fatalf("accepted without root 1's keys: %v", err)
			}
		}
		if r, err := VerifySelfSigned(envelope); err == nil {
			if err := r.Validate(); err != nil {
				t.Fatalf("self-signed root invalid: %v", err)
			}
		}
	})
}
