package manifest

import (
	"bytes"
	"encoding/base64"
	"errors"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// FuzzParse: no input may panic the payload parser, and whatever it
// accepts must satisfy the invariants selection relies on and survive a
// marshal/parse round trip unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validPayload()))
	f.Add([]byte(`{"schema":1,"version":3,"expires":"2027-01-01T00:00:00Z","patches":[]}`))
	f.Add([]byte("schema: 1\nversion: 1\nexpires: 2027-01-01T00:00:00Z\nrevoked: [{name: a, level: 1}]\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte(`{"schema":1,"version":3,"version":4,"expires":"2027-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"schema":1,"version":3,"expires":"2027-01-01T00:00:00Z","patches":[{"kernel":"6.1.0-28-amd64","name":"a","level":1,"url":"r.rpm","sha256":"` + sha(1) + `","size":1,"rollout":{"start_percent":5,"duration":"7d"}}]}`))
	f.Add([]byte(`{"schema":1,"version":3,"expires":"2027-01-01T00:00:00Z","patches":[{"kernel":"6.1.0-28-amd64","name":"a","level":1,"url":"r.rpm","sha256":"` + sha(1) + `","size":1}],"revoked":[{"name":"a","level":2}],"shard":"6.1.0-28-amd64"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			if m != nil {
				t.Fatal("manifest returned with an error")
			}
			return
		}
		for i := range m.Patches {
			p := &m.Patches[i]
			if !ValidName(p.Name) || !ValidKernelRelease(p.Kernel) || p.Level < 1 || p.Size <= 0 {
				t.Fatalf("invalid patch accepted: %+v", p)
			}
		}
		out, err := Marshal(m)
		if err != nil {
			t.Fatalf("marshal accepted manifest: %v", err)
		}
		m2, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse of marshalled manifest: %v\n%s", err, out)
		}
		out2, _ := Marshal(m2)
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the manifest:\n%s\n%s", out, out2)
		}
		// A host's filtered parse agrees with the full one.
		if len(m.Patches) > 0 {
			krel := m.Patches[0].Kernel
			mine, err := ParseFor(b, DefaultMaxSize, krel)
			if err != nil {
				t.Fatalf("ParseFor(%s) refused what Parse accepted: %v", krel, err)
			}
			n := 0
			for _, p := range m.Patches {
				if p.Kernel == krel {
					n++
				}
			}
			if len(mine.Patches) != n || mine.Skipped != len(m.Patches)-n {
				t.Fatalf("ParseFor(%s): %d patches, %d skipped; full parse has %d of %d", krel, len(mine.Patches), mine.Skipped, n, len(m.Patches))
			}
		}
		// The JSON payload says the same as the YAML one.
		js, err := MarshalJSON(m)
		if err != nil {
			t.Fatalf("marshal JSON: %v", err)
		}
		m3, err := Parse(js)
		if err != nil {
			t.Fatalf("re-parse of JSON payload: %v\n%s", err, js)
		}
		if out3, _ := Marshal(m3); !bytes.Equal(out, out3) {
			t.Fatalf("JSON round trip changed the manifest:\n%s\n%s", out, out3)
		}
	})
}

// FuzzVerifyEnvelope: arbitrary envelopes never panic and never verify
// without a real signature.
func FuzzVerifyEnvelope(f *testing.F) {
	k := newTestKey(f)
	tr := Trust{Keys: keyring(k), Threshold: 1}
	good := sign(f, validPayload(), k)
	f.Add(good)
	f.Add([]byte(`{"payloadType":"application/vnd.klp-agent.manifest.v1+yaml","payload":"","signatures":[{"keyid":"","sig":""}]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"payloadType":"x","payload":"QUJD","payload":"QUJD","signatures":[]}`))
	f.Add([]byte(`{"signatures":[{"payload":"QUJD","sig":""}],"payloadType":"x","payload" : "QU\u004aD"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		// The fast envelope path (decodeRawEnvelope, decodePAE) reads the
		// same payload as the strict decoder and base64, or fails as they do.
		var fastP, slowP []byte
		fast, ferr := decodeRawEnvelope(b)
		if ferr == nil {
			_, fastP, ferr = decodePAE(fast.PayloadType, fast.Payload)
		}
		var slow rawEnvelope
		serr := jsonv2.Unmarshal(b, &slow, jsonv2.RejectUnknownMembers(true))
		if serr == nil {
			var s []byte
			if s, serr = jsontext.AppendUnquote(nil, slow.Payload); serr == nil {
				slowP, serr = base64.StdEncoding.DecodeString(string(s))
			}
		}
		if (ferr == nil) != (serr == nil) || (ferr == nil && !bytes.Equal(fastP, slowP)) {
			t.Fatalf("fast path: %v %q; strict: %v %q; envelope %q", ferr, fastP, serr, slowP, b)
		}
		payload, _, err := tr.VerifyEnvelope(b)
		if err != nil {
			return
		}
		// Only envelopes carrying the genuine signed payload may pass.
		want, _ := EnvelopePayload(good)
		if !bytes.Equal(payload, want) {
			t.Fatalf("forged envelope verified: %q", b)
		}
		if _, err := Parse(payload); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatal(err)
		}
	})
}
