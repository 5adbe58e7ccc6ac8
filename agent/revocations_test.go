package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/manifest"
)

// revChannel is a revocation channel over the host's served directory,
// trusting pub; the host restarts with it.
func (h *host) revChannel(pub ed25519.PublicKey) {
	h.t.Helper()
	c, err := manifest.NewClient(manifest.ClientConfig{RetryWait: time.Millisecond})
	if err != nil {
		h.t.Fatal(err)
	}
	h.revs = &manifest.RevocationChannel{URL: h.srv.URL + "/revocations.json", Client: c,
		Trust: manifest.RevocationsTrust{Keys: manifest.Keyring{manifest.KeyID(pub): pub}, Threshold: 1},
		Store: &manifest.RevocationsStore{Path: filepath.Join(h.stateDir, "revocations-record.json")}, Now: func() time.Time { return h.now }}
	h.restart()
}

// publishRevocations serves a revocations.json revoking and pausing the
// given levels.
func (h *host) publishRevocations(key ed25519.PrivateKey, version uint64, revoked, paused []int) {
	h.t.Helper()
	d := &manifest.Revocations{Type: manifest.RevocationsType, Version: version, SignedAt: h.now, Expires: h.now.Add(time.Hour)}
	for _, l := range revoked {
		d.Revoked = append(d.Revoked, manifest.Revoked{Name: h.patches[l].Name, Level: l, Reason: "crash budget exceeded"})
	}
	for _, l := range paused {
		d.Paused = append(d.Paused, manifest.Pause{Name: h.patches[l].Name, Level: l, Reason: "canary over budget"})
	}
	env, err := manifest.SignRevocations(context.Background(), d, manifest.NewSigner(key))
	if err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.rpmDir, "revocations.json"), env, 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// TestRevocationChannelRollsBackBesideStalledDownload: a host running
// level 1, its manifest poll's download of level 2 stalled, rolls level 1
// back as soon as revocations.json revokes it: the channel's poll does not
// wait behind the download (which is cancelled for the rollback), and the
// patch is blocked with the channel's reason.
func TestRevocationChannelRollsBackBesideStalledDownload(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	hit, aborted := stallLevel2(t, h)
	h.publish(priv, 1, []int{1, 2})
	h.polls(pub)
	h.revChannel(pub)
	d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour, RevocationsInterval: 10 * time.Millisecond}}
	d.Init()
	stop := runLoop(t, d)
	select {
	case <-hit:
	case <-time.After(10 * time.Second):
		t.Fatal("level 2's download never started")
	}
	h.publishRevocations(priv, 1, []int{1}, nil)
	waitFor(t, "level 1 rolled back by the revocation channel", func() bool { return h.kernel.Patched("cmdline_proc_show") == "" })
	select {
	case <-aborted:
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled download was not abandoned for the rollback")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	k := h.agent.State().Kernels[krel]
	if !k.IsBlocked("klp_cmdline_1", 1, h.patches[1].SHA256) {
		t.Fatalf("level 1 not blocked: %+v", k.Blocked)
	}
	if b := k.Blocked[0]; b.Cause != state.CauseRevoked || !strings.Contains(b.Reason, "revoked by revocations.json version 1: crash budget exceeded") {
		t.Fatalf("block record %+v", b)
	}
}

// TestPlanWithRevocationChannel: what the channel in force adds to the
// manifest's say, host by host.
func TestPlanWithRevocationChannel(t *testing.T) {
	for _, tc := range []struct {
		name             string
		on               int // level applied and good before
		revoked, paused  []int
		wantRevoke       int // level the plan rolls back, 0: none
		wantApply        int // level the plan applies, 0: none
		wantReasonPrefix string
	}{
		{"nothing in force", 1, nil, nil, 0, 2, ""},
		{"current revoked", 1, []int{1}, nil, 1, 0, "revoked by revocations.json version 1"},
		{"next level revoked", 1, []int{2}, nil, 0, 0, ""},
		{"next level paused: not taken", 1, nil, []int{2}, 0, 0, ""},
		{"paused level already on: kept", 2, nil, []int{2}, 0, 0, ""},
		{"another level paused", 0, nil, []int{1}, 0, 2, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub, priv, _ := ed25519.GenerateKey(rand.Reader)
			h := newHost(t, 1, 2)
			if tc.on > 0 {
				h.converge([]int{tc.on})
				h.soak()
			}
			h.revChannel(pub)
			if tc.revoked != nil || tc.paused != nil {
				h.publishRevocations(priv, 1, tc.revoked, tc.paused)
				if _, err := h.revs.Poll(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			plan, err := h.agent.Plan(h.manifest([]int{1, 2}))
			if err != nil {
				t.Fatal(err)
			}
			gotRevoke, gotApply := 0, 0
			if plan.Revoked != nil {
				gotRevoke = plan.Revoked.Level
			}
			if plan.Apply != nil {
				gotApply = plan.Apply.Level
			}
			if gotRevoke != tc.wantRevoke || gotApply != tc.wantApply || !strings.HasPrefix(plan.Reason, tc.wantReasonPrefix) {
				t.Fatalf("plan: revoke %d apply %d reason %q; want revoke %d apply %d reason %q...", gotRevoke, gotApply, plan.Reason,
					tc.wantRevoke, tc.wantApply, tc.wantReasonPrefix)
			}
		})
	}
}

// TestWantedWithRevocations: the selection status shows and Plan acts on,
// under the channel's document: reasons say which entry did what.
func TestWantedWithRevocations(t *testing.T) {
	host := manifest.Host{ID: "h", Kernel: krel}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	p := func(l int) manifest.Patch {
		return manifest.Patch{Kernel: krel, Name: fmt.Sprintf("klp_cmdline_%d", l), Level: l, URL: "x.rpm", SHA256: strings.Repeat("a", 64), Size: 1}
	}
	m := &manifest.Manifest{Schema: 1, Version: 1, Expires: now.Add(time.Hour), Patches: []manifest.Patch{p(1), p(2), p(3)}}
	doc := func(revoked, paused []int) *manifest.Revocations {
		d := &manifest.Revocations{Version: 9}
		for _, l := range revoked {
			d.Revoked = append(d.Revoked, manifest.Revoked{Name: p(l).Name, Level: l, Reason: "bad"})
		}
		for _, l := range paused {
			d.Paused = append(d.Paused, manifest.Pause{Name: p(l).Name, Level: l, Reason: "canary"})
		}
		return d
	}
	for _, tc := range []struct {
		name    string
		rev     *manifest.Revocations
		pin     int
		wanted  int
		reasons map[int]string // level: reason prefix
	}{
		{"none", nil, 0, 3, map[int]string{3: "chosen: highest eligible level", 2: "superseded by level 3"}},
		{"top paused", doc(nil, []int{3}), 0, 2, map[int]string{3: "ramp paused by revocations.json version 9: canary", 2: "chosen: highest eligible level not paused", 1: "superseded by level 2"}},
		{"top revoked", doc([]int{3}, nil), 0, 2, map[int]string{3: "revoked: bad", 2: "chosen: highest eligible level ("}},
		{"all paused", doc(nil, []int{1, 2, 3}), 0, 0, map[int]string{1: "ramp paused"}},
		{"pinned below a pause", doc(nil, []int{3}), 2, 2, map[int]string{2: "chosen: highest eligible level at or below the pin"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := &state.Kernel{}
			if tc.pin > 0 {
				k.Pin = &state.Pin{Level: tc.pin}
			}
			d := WantedWith(k, m, tc.rev, host, now)
			got := 0
			if d.Wanted != nil {
				got = d.Wanted.Level
			}
			if got != tc.wanted {
				t.Fatalf("wanted %d, want %d: %+v", got, tc.wanted, d.Entries)
			}
			for _, e := range d.Entries {
				if want, ok := tc.reasons[e.Patch.Level]; ok && !strings.HasPrefix(e.Reason, want) {
					t.Errorf("level %d: reason %q, want %q...", e.Patch.Level, e.Reason, want)
				}
				if e.Chosen != (got == e.Patch.Level) {
					t.Errorf("level %d: chosen %v", e.Patch.Level, e.Chosen)
				}
			}
		})
	}
}

// TestRevocationChannelNotPublishedJournaledOnce: polls of a missing
// revocations.json say so once, not every 30 s; publishing it (then
// removing it) is said once each.
func TestRevocationChannelNotPublishedJournaledOnce(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	h := newHost(t, 1)
	core, logs := observer.New(zap.InfoLevel)
	h.log = zap.New(core)
	h.revChannel(pub)
	d := &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour, RevocationsInterval: 5 * time.Millisecond}}
	stop := runLoop(t, d)
	count := func(prefix string) int { return logs.FilterMessageSnippet(prefix).Len() }
	waitFor(t, "the first channel poll", func() bool { return count("no revocations.json at") == 1 })
	time.Sleep(50 * time.Millisecond) // some more polls of the missing file, at 5 ms
	if n := count("no revocations.json at"); n != 1 {
		t.Fatalf("%d not-published lines, want 1", n)
	}
	h.publishRevocations(priv, 1, nil, []int{1})
	waitFor(t, "revocations.json accepted", func() bool { return count("revocations.json version 1 accepted: 0 revoked, 1 paused") == 1 })
	if err := os.Remove(filepath.Join(h.rpmDir, "revocations.json")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "removal journaled", func() bool { return count("no revocations.json at") == 2 })
	time.Sleep(50 * time.Millisecond) // some more polls of the missing file
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := count("no revocations.json at"); n != 2 {
		t.Fatalf("%d not-published lines, want 2", n)
	}
}
