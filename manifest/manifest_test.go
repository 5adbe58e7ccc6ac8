package manifest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type testKey struct {
	signer *Signer
	pub    ed25519.PublicKey
	id     string
}

func newTestKey(t testing.TB) testKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return testKey{NewSigner(priv), pub, KeyID(pub)}
}

func sha(i int) string { return fmt.Sprintf("%064x", i) }

func validPayload() string {
	return `schema: 1
version: 7
expires: 2026-12-31T00:00:00Z
patches:
  - kernel: 6.1.0-28-amd64
    name: klp_cmdline_1
    level: 1
    url: rpms/klp-cmdline-1-1.x86_64.rpm
    sha256: ` + sha(1) + `
    size: 7678
  - kernel: 6.1.0-28-amd64
    name: klp_cmdline_2
    level: 2
    url: https://mirror.example/rpms/klp-cmdline-2-1.x86_64.rpm
    sha256: ` + sha(2) + `
    size: 7700
    rollout: {tiers: [canary], start: 2026-11-24T00:00:00Z, start_percent: 1, duration: 24h}
revoked:
  - {name: klp_cmdline_0, level: 1, reason: oops in cmdline_proc_show}
`
}

func sign(t testing.TB, payload string, keys ...testKey) []byte {
	t.Helper()
	signers := make([]*Signer, len(keys))
	for i, k := range keys {
		signers[i] = k.signer
	}
	b, err := SignPayload(context.Background(), []byte(payload), signers...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func keyring(keys ...testKey) Keyring {
	kr := Keyring{}
	for _, k := range keys {
		kr[k.id] = k.pub
	}
	return kr
}

// mutateEnvelope edits a signed envelope's JSON.
func mutateEnvelope(t testing.TB, env []byte, f func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(env, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerifyAccepts(t *testing.T) {
	k1, k2, k3 := newTestKey(t), newTestKey(t), newTestKey(t)
	tests := []struct {
		name      string
		env       []byte
		trust     Trust
		wantSigns int
	}{
		{"one key", sign(t, validPayload(), k1), Trust{Keys: keyring(k1), Threshold: 1}, 1},
		{"2 of 3", sign(t, validPayload(), k1, k3), Trust{Keys: keyring(k1, k2, k3), Threshold: 2}, 2},
		{"extra unknown signature ignored", sign(t, validPayload(), k1, k2), Trust{Keys: keyring(k1), Threshold: 1}, 1},
		{"json payload", sign(t, `{"schema":1,"version":3,"expires":"2027-01-01T00:00:00Z","patches":[]}`, k1), Trust{Keys: keyring(k1), Threshold: 1}, 1},
		{"anonymous signature", mutateEnvelope(t, sign(t, validPayload(), k1), func(m map[string]any) {
			m["signatures"].([]any)[0].(map[string]any)["keyid"] = ""
		}), Trust{Keys: keyring(k1), Threshold: 1}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := tt.trust.Verify(tt.env, now, &MemVersionStore{})
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if len(v.KeyIDs) != tt.wantSigns {
				t.Errorf("accepted %d signatures, want %d", len(v.KeyIDs), tt.wantSigns)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	k1, k2, k3 := newTestKey(t), newTestKey(t), newTestKey(t)
	one := Trust{Keys: keyring(k1), Threshold: 1}
	good := sign(t, validPayload(), k1)
	replacePayload := func(p string) func(map[string]any) {
		return func(m map[string]any) { m["payload"] = base64.StdEncoding.EncodeToString([]byte(p)) }
	}
	patchLine := func(old, new string) string { return strings.Replace(validPayload(), old, new, 1) }
	tests := []struct {
		name  string
		env   []byte
		trust Trust
		store VersionStore
		want  error
	}{
		{"tampered payload", mutateEnvelope(t, good, replacePayload(patchLine("level: 2", "level: 3"))), one, nil, ErrBadSignature},
		{"tampered signature", mutateEnvelope(t, good, func(m map[string]any) {
			s := m["signatures"].([]any)[0].(map[string]any)
			sig, _ := base64.StdEncoding.DecodeString(s["sig"].(string))
			sig[0] ^= 1
			s["sig"] = base64.StdEncoding.EncodeToString(sig)
		}), one, nil, ErrBadSignature},
		{"signature not base64", mutateEnvelope(t, good, func(m map[string]any) {
			m["signatures"].([]any)[0].(map[string]any)["sig"] = "!!!"
		}), one, nil, ErrBadSignature},
		{"missing signature", mutateEnvelope(t, good, func(m map[string]any) { m["signatures"] = []any{} }), one, nil, ErrNoSignature},
		{"unknown key", sign(t, validPayload(), k2), one, nil, ErrUnknownKey},
		{"anonymous by untrusted key", mutateEnvelope(t, sign(t, validPayload(), k2), func(m map[string]any) {
			m["signatures"].([]any)[0].(map[string]any)["keyid"] = ""
		}), one, nil, ErrBadSignature},
		{"below threshold", sign(t, validPayload(), k1), Trust{Keys: keyring(k1, k2, k3), Threshold: 2}, nil, ErrThreshold},
		{"same key twice counts once", func() []byte {
			b, err := AddSignature(sign(t, validPayload(), k1), k2.signer)
			if err != nil {
				t.Fatal(err)
			}
			return mutateEnvelope(t, b, func(m map[string]any) {
				sigs := m["signatures"].([]any)
				m["signatures"] = []any{sigs[0], sigs[0]}
			})
		}(), Trust{Keys: keyring(k1, k2), Threshold: 2}, nil, ErrThreshold},
		{"wrong payload type", mutateEnvelope(t, good, func(m map[string]any) { m["payloadType"] = "application/vnd.in-toto+json" }), one, nil, ErrPayloadType},
		{"unknown envelope field", mutateEnvelope(t, good, func(m map[string]any) { m["extra"] = 1 }), one, nil, ErrInvalid},
		{"trailing data", append(append([]byte{}, good...), []byte(`{"x":1}`)...), one, nil, ErrInvalid},
		{"not json", []byte("patches: []"), one, nil, ErrInvalid},
		{"oversized envelope", make([]byte, DefaultMaxSize+1), one, nil, ErrTooLarge},
		{"expired", sign(t, patchLine("expires: 2026-12-31T00:00:00Z", "expires: 2026-11-25T11:59:59Z"), k1), one, nil, ErrExpired},
		{"expires missing", sign(t, patchLine("expires: 2026-12-31T00:00:00Z\n", ""), k1), one, nil, ErrInvalid},
		{"rollback", good, one, func() VersionStore { s := &MemVersionStore{}; _ = s.Record(8, "x"); return s }(), ErrRollback},
		{"version reused", good, one, func() VersionStore { s := &MemVersionStore{}; _ = s.Record(7, "other"); return s }(), ErrVersionConflict},
		{"schema 2", sign(t, patchLine("schema: 1", "schema: 2"), k1), one, nil, ErrSchema},
		{"schema missing", sign(t, patchLine("schema: 1\n", ""), k1), one, nil, ErrSchema},
		{"version 0", sign(t, patchLine("version: 7", "version: 0"), k1), one, nil, ErrInvalid},
		{"name with slash", sign(t, patchLine("name: klp_cmdline_1", "name: ../../etc/x"), k1), one, nil, ErrInvalidName},
		{"name with dash", sign(t, patchLine("name: klp_cmdline_1", "name: klp-cmdline"), k1), one, nil, ErrInvalidName},
		{"name too long", sign(t, patchLine("name: klp_cmdline_1", "name: "+strings.Repeat("a", 56)), k1), one, nil, ErrInvalidName},
		{"kernel dotdot", sign(t, patchLine("kernel: 6.1.0-28-amd64", "kernel: .."), k1), one, nil, ErrInvalidName},
		{"kernel with slash", sign(t, patchLine("kernel: 6.1.0-28-amd64", "kernel: 6.1/x"), k1), one, nil, ErrInvalidName},
		{"tier invalid", sign(t, patchLine("tiers: [canary]", "tiers: [\"can ary\"]"), k1), one, nil, ErrInvalidName},
		{"revoked name invalid", sign(t, patchLine("name: klp_cmdline_0", "name: a/b"), k1), one, nil, ErrInvalidName},
		{"duplicate kernel+level", sign(t, patchLine("level: 2", "level: 1"), k1), one, nil, ErrDuplicate},
		{"duplicate yaml key", sign(t, patchLine("version: 7", "version: 7\nversion: 8"), k1), one, nil, ErrInvalid},
		{"unknown field", sign(t, validPayload()+"mirror: x\n", k1), one, nil, ErrInvalid},
		{"second document", sign(t, validPayload()+"---\nversion: 9\n", k1), one, nil, ErrInvalid},
		{"empty payload", sign(t, "", k1), one, nil, ErrInvalid},
		{"bad sha256", sign(t, patchLine(sha(1), "ABC"), k1), one, nil, ErrInvalid},
		{"level 0", sign(t, patchLine("level: 1", "level: 0"), k1), one, nil, ErrInvalid},
		{"size 0", sign(t, patchLine("size: 7678", "size: 0"), k1), one, nil, ErrInvalid},
		{"ftp url", sign(t, patchLine("url: rpms/klp-cmdline-1-1.x86_64.rpm", "url: ftp://x/y.rpm"), k1), one, nil, ErrInvalid},
		{"url with credentials", sign(t, patchLine("url: rpms/klp-cmdline-1-1.x86_64.rpm", "url: https://u:p@x/y.rpm"), k1), one, nil, ErrInvalid},
		{"percent over 100", sign(t, patchLine("start_percent: 1", "start_percent: 101"), k1), one, nil, ErrInvalid},
		{"bad duration", sign(t, patchLine("duration: 24h", "duration: soon"), k1), one, nil, ErrInvalid},
		{"threshold above keys", good, Trust{Keys: keyring(k1), Threshold: 2}, nil, ErrKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := tt.store
			if store == nil {
				store = &MemVersionStore{}
			}
			before, _ := store.Highest()
			v, err := tt.trust.Verify(tt.env, now, store)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify error = %v, want %v", err, tt.want)
			}
			if v != nil {
				t.Fatal("rejected manifest returned")
			}
			if after, _ := store.Highest(); after != before {
				t.Errorf("rejected manifest moved the version record from %d to %d", before, after)
			}
		})
	}
}

func TestFileVersionStorePersists(t *testing.T) {
	k := newTestKey(t)
	tr := Trust{Keys: keyring(k), Threshold: 1}
	path := filepath.Join(t.TempDir(), "manifest-version.json")
	v7 := sign(t, validPayload(), k)
	v8 := sign(t, strings.Replace(validPayload(), "version: 7", "version: 8", 1), k)
	if _, err := tr.Verify(v8, now, &FileVersionStore{Path: path}); err != nil {
		t.Fatal(err)
	}
	// A new store (a restarted agent) must still refuse the older version.
	if _, err := tr.Verify(v7, now, &FileVersionStore{Path: path}); !errors.Is(err, ErrRollback) {
		t.Fatalf("after restart, version 7 gave %v, want ErrRollback", err)
	}
	// The same version and content again is fine (a restart re-fetching).
	if _, err := tr.Verify(v8, now, &FileVersionStore{Path: path}); err != nil {
		t.Fatalf("re-verifying the same manifest: %v", err)
	}
}

func TestFileVersionStoreDamagedRecordRefuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.json")
	if err := writeFile(path, "{not json"); err != nil {
		t.Fatal(err)
	}
	s := &FileVersionStore{Path: path}
	if err := s.Check(1, "x"); err == nil {
		t.Fatal("damaged version record accepted as 'nothing seen'")
	}
}

func TestCoSign(t *testing.T) {
	k1, k2 := newTestKey(t), newTestKey(t)
	env := sign(t, validPayload(), k1)
	tr := Trust{Keys: keyring(k1, k2), Threshold: 2}
	if _, _, err := tr.VerifyEnvelope(env); !errors.Is(err, ErrThreshold) {
		t.Fatalf("one signature of two: %v", err)
	}
	env2, err := AddSignature(env, k2.signer)
	if err != nil {
		t.Fatal(err)
	}
	if _, ids, err := tr.VerifyEnvelope(env2); err != nil || len(ids) != 2 {
		t.Fatalf("co-signed: ids=%v err=%v", ids, err)
	}
	if _, err := AddSignature(env2, k2.signer); err == nil {
		t.Fatal("signing twice with one key should be refused")
	}
}

func TestKeyRoundTrip(t *testing.T) {
	priv, pub, id, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParsePublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if KeyID(p) != id {
		t.Fatal("key id differs after round trip")
	}
	k, err := ParsePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := NewSigner(k).KeyID(); got != id {
		t.Fatal("signer key id differs")
	}
	for _, bad := range []string{"", "garbage", string(priv), string(pub) + "trailing"} {
		if _, err := ParsePublicKey([]byte(bad)); !errors.Is(err, ErrKey) {
			t.Errorf("ParsePublicKey(%.20q) = %v, want ErrKey", bad, err)
		}
	}
}

// The JSON payload is as strict as the YAML one and means the same.
func TestParseJSONPayload(t *testing.T) {
	m, err := Parse([]byte(validPayload()))
	if err != nil {
		t.Fatal(err)
	}
	js, err := MarshalJSON(m)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Parse(js)
	if err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	y1, _ := Marshal(m)
	y2, _ := Marshal(m2)
	if string(y1) != string(y2) {
		t.Fatalf("JSON payload differs:\n%s\n%s", y1, y2)
	}
	if !strings.Contains(string(js), "},\n{\"kernel\":") {
		t.Errorf("one patch per line expected:\n%s", js)
	}
	for name, bad := range map[string]string{
		"unknown member": `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","patchez":[]}`,
		"duplicate key":  `{"schema":1,"version":1,"version":2,"expires":"2027-01-01T00:00:00Z"}`,
		"trailing value": `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z"} {}`,
		"invalid entry":  `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","patches":[{"kernel":"../x","name":"a","level":1,"url":"u","sha256":"` + sha(1) + `","size":1}]}`,
		"bad duration":   `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","patches":[{"kernel":"k","name":"a","level":1,"url":"u","sha256":"` + sha(1) + `","size":1,"rollout":{"duration":"soon"}}]}`,
	} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrInvalidName) {
			t.Errorf("%s: %v, want a rejection", name, err)
		}
	}
}

// ParseFor gives a host exactly its kernel's entries, as a full parse
// filtered would, in canonical and hand-written JSON and in YAML.
func TestParseForKernel(t *testing.T) {
	m := benchManifest(50)
	canon, err := MarshalJSON(m)
	if err != nil {
		t.Fatal(err)
	}
	yml, _ := Marshal(m)
	// Hand-written: members in another order, spaces, an escaped release.
	hand := []byte(strings.Replace(string(canon), `{"kernel":"6.1.0-3-amd64","name":"klp_cmdline_1",`,
		`{ "name" : "klp_cmdline_1", "kernel" : "6.1.0\u002d3-amd64",`, 1))
	if bytes.Equal(hand, canon) {
		t.Fatal("hand-written variant not made")
	}
	for name, payload := range map[string][]byte{"canonical": canon, "yaml": yml, "hand-written": hand} {
		for _, krel := range []string{"6.1.0-3-amd64", "6.1.0-7-amd64", "6.1.0-99-amd64"} {
			full, err := Parse(payload)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var want []Patch
			for _, p := range full.Patches {
				if p.Kernel == krel {
					want = append(want, p)
				}
			}
			got, err := ParseFor(payload, DefaultMaxSize, krel)
			if err != nil {
				t.Fatalf("%s %s: %v", name, krel, err)
			}
			if (len(want) > 0 || len(got.Patches) > 0) && !reflect.DeepEqual(got.Patches, want) || got.Skipped != len(full.Patches)-len(want) {
				t.Fatalf("%s %s: %d patches (%d skipped), want %d", name, krel, len(got.Patches), got.Skipped, len(want))
			}
			if d := Select(got, Host{ID: "h", Kernel: krel}, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), nil); d.OtherKernels != 50-len(want) {
				t.Fatalf("%s %s: other kernels %d", name, krel, d.OtherKernels)
			}
		}
	}
	bad := map[string]string{
		"unknown member":           `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","patchez":[]}`,
		"duplicate member":         `{"schema":1,"version":1,"version":2,"expires":"2027-01-01T00:00:00Z"}`,
		"trailing data":            `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z"} {}`,
		"broken entry":             `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","patches":[{"kernel":"k2",}]}`,
		"own entry invalid":        `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","patches":[{"kernel":"k1","name":"a/b","level":1,"url":"u","sha256":"` + sha(1) + `","size":1}]}`,
		"own entry unknown member": `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","patches":[{"kernel":"k1","nam":"a","level":1,"url":"u","sha256":"` + sha(1) + `","size":1}]}`,
	}
	for name, p := range bad {
		if _, err := ParseFor([]byte(p), DefaultMaxSize, "k1"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Another kernel's entry is the publisher's to get right (sign and
	// lint parse everything); a host does not decode it.
	other := `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","patches":[{"kernel":"k2","nam":"a"}]}`
	if m, err := ParseFor([]byte(other), DefaultMaxSize, "k1"); err != nil || m.Skipped != 1 {
		t.Errorf("other kernel's entry: %v %+v", err, m)
	}
	if _, err := Parse([]byte(other)); err == nil {
		t.Error("a full parse accepted an invalid entry")
	}
}
