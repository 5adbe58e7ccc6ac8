package manifest

import (
	"context"
	"errors"
	"math"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// revokeRoot is a root with a revoke role of one key.
func revokeRoot(t *testing.T, rootK, relK, revK testKey) *RootTrust {
	t.Helper()
	r := newRoot(1, []testKey{rootK}, 1, []testKey{relK}, 1)
	id, rk := NewRootKey(revK.pub)
	r.Keys[id] = rk
	r.Roles.Revoke = &Role{KeyIDs: []string{id}, Threshold: 1}
	rt, err := LoadRootTrust(signRoot(t, r, rootK), "")
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func revDoc(version uint64, revoked ...Revoked) *Revocations {
	return &Revocations{Type: RevocationsType, Version: version, SignedAt: now.Add(-time.Minute), Expires: now.Add(time.Hour), Revoked: revoked}
}

func signRev(t *testing.T, r *Revocations, k testKey) []byte {
	t.Helper()
	b, err := SignRevocations(context.Background(), r, k.signer)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rawRev(t *testing.T, payload string, k testKey) []byte {
	t.Helper()
	b, err := signPayloadType(context.Background(), RevocationsPayloadType, []byte(payload), k.signer)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var bad1 = Revoked{Name: "klp_bad", Level: 3, Reason: "crash budget"}

// TestRevokeRoleScope: whatever a revoke key signs beyond revoking and
// pausing is refused with ErrRevokeScope: a patch, a URL, a rollout, an
// un-revoke member; and a manifest signed by it is not a manifest.
func TestRevokeRoleScope(t *testing.T) {
	rootK, relK, revK := newTestKey(t), newTestKey(t), newTestKey(t)
	trust := RevocationsTrust{Root: revokeRoot(t, rootK, relK, revK)}
	exp := now.Add(time.Hour).Format(time.RFC3339)
	head := `{"type":"klp-agent-revocations","version":2,"expires":"` + exp + `"`
	for _, tc := range []struct {
		name, payload string
		want          error
	}{
		{"adds a patch", head + `,"patches":[{"kernel":"6.1.0","name":"klp_evil","level":9,"url":"http://evil/x.rpm","sha256":"` + sha(1) + `","size":1}]}`, ErrRevokeScope},
		{"changes a URL", head + `,"revoked":[{"name":"klp_bad","level":3,"url":"http://evil/x.rpm"}]}`, ErrRevokeScope},
		{"sets a rollout", head + `,"paused":[{"name":"klp_bad","level":3,"rollout":{"start_percent":100}}]}`, ErrRevokeScope},
		{"un-revokes", head + `,"unrevoke":[{"name":"klp_bad","level":3}]}`, ErrRevokeScope},
		{"duplicate member", head + `,"version":3}`, ErrRevocationsInvalid},
		{"valid", head + `,"revoked":[{"name":"klp_bad","level":3,"reason":"crash budget"}],"paused":[{"name":"klp_new","level":4}]}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := trust.Verify(rawRev(t, tc.payload, revK), now, &RevocationsStore{})
			if !errors.Is(err, tc.want) || (tc.want != nil && !errors.Is(err, ErrRevocations)) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("manifest signed by the revoke key", func(t *testing.T) {
		env, err := SignPayload(context.Background(), []byte(validPayload()), revK.signer)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (Trust{Root: trust.Root}).Verify(env, now, nil); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("a revoke-key manifest: got %v, want ErrUnknownKey", err)
		}
	})
	t.Run("root signed by the revoke key", func(t *testing.T) {
		r := newRoot(2, []testKey{revK}, 1, []testKey{revK}, 1)
		if _, err := trust.Root.Current().VerifyNext(signRoot(t, r, revK)); err == nil {
			t.Fatal("a revoke key signed the next root")
		}
	})
}

// TestRevocationsUnrevoke: a revoke-role document may only add to what a
// host has seen; the release role may drop entries.
func TestRevocationsUnrevoke(t *testing.T) {
	rootK, relK, revK := newTestKey(t), newTestKey(t), newTestKey(t)
	trust := RevocationsTrust{Root: revokeRoot(t, rootK, relK, revK)}
	pause := Pause{Name: "klp_new", Level: 4}
	for _, tc := range []struct {
		name   string
		next   *Revocations
		signer testKey
		want   error
	}{
		{"revoke key drops a revocation", revDoc(2), revK, ErrRevokeScope},
		{"revoke key drops a pause", revDoc(2, bad1), revK, ErrRevokeScope},
		{"revoke key adds", func() *Revocations {
			d := revDoc(2, bad1, Revoked{Name: "klp_other", Level: 1})
			d.Paused = []Pause{pause}
			return d
		}(), revK, nil},
		{"release key drops", revDoc(2), relK, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &RevocationsStore{Path: filepath.Join(t.TempDir(), "revocations.json")}
			first := revDoc(1, bad1)
			first.Paused = []Pause{pause}
			if _, err := trust.Verify(signRev(t, first, revK), now, store); err != nil {
				t.Fatal(err)
			}
			_, err := trust.Verify(signRev(t, tc.next, tc.signer), now, store)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			last, _ := (&RevocationsStore{Path: store.Path}).Last()
			if want := map[bool]uint64{true: 1, false: 2}[tc.want != nil]; last.Version != want {
				t.Errorf("persisted version %d, want %d", last.Version, want)
			}
		})
	}
}

// TestRevocationsChecks: rollback, same version with other content, expiry
// and its bound, and who may sign under a root with and without the role.
func TestRevocationsChecks(t *testing.T) {
	rootK, relK, revK, other := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	withRole := RevocationsTrust{Root: revokeRoot(t, rootK, relK, revK), MaxExpiry: 24 * time.Hour}
	oldRoot, err := LoadRootTrust(signRoot(t, newRoot(1, []testKey{rootK}, 1, []testKey{relK}, 1), rootK), "")
	if err != nil {
		t.Fatal(err)
	}
	noRole := RevocationsTrust{Root: oldRoot}
	keysOnly := RevocationsTrust{Keys: Keyring{relK.id: relK.pub}, Threshold: 1}
	expired := revDoc(5, bad1)
	expired.Expires, expired.SignedAt = now.Add(-time.Second), now.Add(-time.Hour)
	far := revDoc(5, bad1)
	far.Expires = now.Add(48 * time.Hour)
	for _, tc := range []struct {
		name   string
		trust  RevocationsTrust
		doc    *Revocations
		signer testKey
		want   error
	}{
		{"rollback", withRole, revDoc(2, bad1), revK, ErrRevocationsRollback},
		{"rollback is ErrRollback too", withRole, revDoc(2, bad1), relK, ErrRollback},
		{"same version, other content", withRole, revDoc(3), relK, ErrRevocationsConflict},
		{"same version, same content", withRole, revDoc(3, bad1), revK, nil},
		{"expired", withRole, expired, revK, ErrRevocationsExpired},
		{"expiry too far", withRole, far, revK, ErrRevocationsExpiryFar},
		{"unknown key", withRole, revDoc(5, bad1), other, ErrUnknownKey},
		{"old root: revoke key refused", noRole, revDoc(5, bad1), revK, ErrUnknownKey},
		{"old root: release key", noRole, revDoc(5, bad1), relK, nil},
		{"keyring: release key", keysOnly, revDoc(5, bad1), relK, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &RevocationsStore{Path: filepath.Join(t.TempDir(), "r.json")}
			if _, err := withRole.Verify(signRev(t, revDoc(3, bad1), revK), now, store); err != nil {
				t.Fatal(err)
			}
			// A fresh store on the same file: the floor survives a restart.
			_, err := tc.trust.Verify(signRev(t, tc.doc, tc.signer), now, &RevocationsStore{Path: store.Path})
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestRootRevokeRole: the role is optional (an old root marshals to the
// same bytes), and validated like the others when present.
func TestRootRevokeRole(t *testing.T) {
	a, b := newTestKey(t), newTestKey(t)
	old := newRoot(1, []testKey{a}, 1, []testKey{a}, 1)
	bs, err := MarshalRoot(old)
	if err != nil || strings.Contains(string(bs), "revoke") {
		t.Fatalf("a root without the role: %s, %v", bs, err)
	}
	if _, _, ok := old.RevokeTrust(); ok {
		t.Error("RevokeTrust ok without the role")
	}
	for _, tc := range []struct {
		name string
		role Role
		ok   bool
	}{
		{"valid", Role{KeyIDs: []string{b.id}, Threshold: 1}, true},
		{"key not in keys", Role{KeyIDs: []string{newTestKey(t).id}, Threshold: 1}, false},
		{"threshold 0", Role{KeyIDs: []string{b.id}, Threshold: 0}, false},
		{"threshold above keys", Role{KeyIDs: []string{b.id}, Threshold: 2}, false},
		{"a manifest and root key too", Role{KeyIDs: []string{a.id}, Threshold: 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRoot(1, []testKey{a}, 1, []testKey{a}, 1)
			id, rk := NewRootKey(b.pub)
			r.Keys[id] = rk
			r.Roles.Revoke = &tc.role
			err := r.Validate()
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrRootInvalid)) {
				t.Fatalf("Validate: %v", err)
			}
			if !tc.ok {
				return
			}
			got, err := VerifySelfSigned(signRoot(t, r, a))
			if err != nil {
				t.Fatal(err)
			}
			if keys, th, ok := got.RevokeTrust(); !ok || th != 1 || keys[b.id] == nil {
				t.Errorf("RevokeTrust after a round trip: %v %d %v", keys, th, ok)
			}
		})
	}
}

// TestRevocationChannel: an unchanged document is a 304 and no parse; a
// 404 is not an error; the entries stay in force across a restart.
func TestRevocationChannel(t *testing.T) {
	relK := newTestKey(t)
	rs, srv := newRootServer(t)
	dir := t.TempDir()
	u, err := RevocationsURL(srv.URL + "/m/manifest.json")
	if err != nil || u != srv.URL+"/m/revocations.json" {
		t.Fatalf("RevocationsURL: %q %v", u, err)
	}
	client, err := NewClient(ClientConfig{RetryWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	newChan := func() *RevocationChannel {
		return &RevocationChannel{URL: u, Client: client, Trust: RevocationsTrust{Keys: Keyring{relK.id: relK.pub}, Threshold: 1},
			Store: &RevocationsStore{Path: filepath.Join(dir, "revocations.json")}, Now: func() time.Time { return now }}
	}
	c := newChan()
	ctx := context.Background()
	res, err := c.Poll(ctx)
	if err != nil || !res.NotPublished || res.InForce != nil {
		t.Fatalf("404: %+v %v", res, err)
	}
	rs.put("/m/revocations.json", signRev(t, revDoc(1, bad1), relK))
	steps := []struct {
		changed, notModified bool
		parses               int
	}{{true, false, 1}, {false, true, 1}, {false, true, 1}}
	for i, s := range steps {
		res, err := c.Poll(ctx)
		if err != nil || res.Changed != s.changed || res.NotModified != s.notModified || c.parses != s.parses {
			t.Fatalf("poll %d: %+v parses %d, %v; want %+v", i, res, c.parses, err, s)
		}
		if res.InForce.Revokes(&Patch{Name: "klp_bad", Level: 3, Kernel: "k"}) == nil {
			t.Fatalf("poll %d: klp_bad@3 not revoked", i)
		}
	}
	if got := rs.hits["/m/revocations.json"]; got != 4 {
		t.Errorf("%d requests, want 4", got)
	}
	// A refused document leaves the one in force.
	rs.put("/m/revocations.json", signRev(t, revDoc(2), newTestKey(t)))
	if res, err := c.Poll(ctx); err == nil || res.InForce == nil {
		t.Fatalf("foreign key: %+v %v", res, err)
	}
	// Restart with the server unreachable: the store still has it.
	rs.setCode("/m/revocations.json", http.StatusServiceUnavailable)
	c2 := newChan()
	c2.Client, _ = NewClient(ClientConfig{Retries: 0, RetryWait: time.Millisecond})
	res, err = c2.Poll(ctx)
	if err == nil || res.InForce == nil || res.InForce.Version != 1 {
		t.Fatalf("after restart: %+v %v", res, err)
	}
	// Expired: no longer in force.
	c2.Now = func() time.Time { return now.Add(2 * time.Hour) }
	if f, err := c2.InForce(); err != nil || f != nil {
		t.Fatalf("expired still in force: %+v %v", f, err)
	}
}

// TestRevocationsFloorResetOnRotation: a stolen revoke key's document at
// version 2^64-1 blocks every later one until a root rotation changes the
// revoke role; then the floor starts again (and only then).
func TestRevocationsFloorResetOnRotation(t *testing.T) {
	rootK, relK, revK, revK2 := newTestKey(t), newTestKey(t), newTestKey(t), newTestKey(t)
	store := &RevocationsStore{Path: filepath.Join(t.TempDir(), "r.json")}
	before := RevocationsTrust{Root: revokeRoot(t, rootK, relK, revK)}
	if _, err := before.Verify(signRev(t, revDoc(math.MaxUint64, bad1), revK), now, store); err != nil {
		t.Fatal(err)
	}
	if _, err := before.Verify(signRev(t, revDoc(1, bad1), relK), now, store); !errors.Is(err, ErrRevocationsRollback) {
		t.Fatalf("before the rotation: %v, want rollback", err)
	}
	after := RevocationsTrust{Root: revokeRoot(t, rootK, relK, revK2)}
	if _, err := after.Verify(signRev(t, revDoc(1), revK2), now, &RevocationsStore{Path: store.Path}); err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
	if _, err := after.Verify(signRev(t, revDoc(1, bad1), revK2), now, &RevocationsStore{Path: store.Path}); !errors.Is(err, ErrRevocationsConflict) {
		t.Fatalf("the new floor holds: %v", err)
	}
}

// TestRevocationsDamagedRecord: a damaged record refuses every document
// rather than reading as "nothing seen" (which would reopen rollback).
func TestRevocationsDamagedRecord(t *testing.T) {
	relK := newTestKey(t)
	for _, body := range []string{"{", "{}", `{"revocations":null}`} {
		p := filepath.Join(t.TempDir(), "r.json")
		if err := writeFile(p, body); err != nil {
			t.Fatal(err)
		}
		trust := RevocationsTrust{Keys: Keyring{relK.id: relK.pub}, Threshold: 1}
		if _, err := trust.Verify(signRev(t, revDoc(1, bad1), relK), now, &RevocationsStore{Path: p}); err == nil || !strings.Contains(err.Error(), "damaged") {
			t.Errorf("record %q: %v, want damaged", body, err)
		}
	}
}

// TestRevocationChannelFileNotPublished: a path source without a
// revocations.json is "not published", as a 404 is.
func TestRevocationChannelFileNotPublished(t *testing.T) {
	dir := t.TempDir()
	u, err := RevocationsURL("file://" + dir + "/manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	client, _ := NewClient(ClientConfig{})
	relK := newTestKey(t)
	c := &RevocationChannel{URL: u, Client: client, Trust: RevocationsTrust{Keys: Keyring{relK.id: relK.pub}, Threshold: 1},
		Store: &RevocationsStore{}, Now: func() time.Time { return now }}
	if res, err := c.Poll(context.Background()); err != nil || !res.NotPublished {
		t.Fatalf("missing file: %+v %v", res, err)
	}
	if err := writeFile(filepath.Join(dir, RevocationsFile), string(signRev(t, revDoc(1, bad1), relK))); err != nil {
		t.Fatal(err)
	}
	if res, err := c.Poll(context.Background()); err != nil || !res.Changed || res.InForce == nil {
		t.Fatalf("published file: %+v %v", res, err)
	}
}
