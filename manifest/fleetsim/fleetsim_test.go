package fleetsim

import (
	"errors"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/manifest"
)

// rollouts are the shapes the invariants must hold for.
var rollouts = []struct {
	name string
	set  func(*Params)
}{
	{"default", func(*Params) {}},
	{"fast", func(p *Params) { p.Hold, p.Ramp = 2*time.Hour, 6*time.Hour }},
	{"no canary, no hold", func(p *Params) { p.Canary, p.Hold, p.Ramp = 0, 0, time.Hour }},
	{"start at 10%", func(p *Params) { p.StartPercent, p.Hold, p.Ramp = 10, 4*time.Hour, 12*time.Hour }},
	{"held: no ramp", func(p *Params) { p.Canary, p.StartPercent, p.Ramp = 0.05, 5, 0 }},
	{"slow polls", func(p *Params) { p.Interval, p.Hold, p.Ramp = 4*time.Hour, 2*time.Hour, 6*time.Hour }},
}

func small(set func(*Params)) Params {
	p := Defaults()
	p.Hosts = 20_000
	set(&p)
	return p
}

// share is the fraction of the fleet the rollout admits at t: the canary
// plus the others under the ramp.
func share(p Params, t time.Duration) float64 {
	pct := p.StartPercent
	switch {
	case t < p.Hold:
	case p.Ramp == 0:
	default:
		pct += (100 - p.StartPercent) * min(1, float64(t-p.Hold)/float64(p.Ramp))
	}
	return p.Canary + (1-p.Canary)*pct/100
}

// TestMatchesSelect: the simulation's eligibility is the product's. For the
// two manifests an operator publishes (held, then ramping), Select picks
// the patch for a host exactly when the model says the host is eligible.
func TestMatchesSelect(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	for _, tt := range rollouts {
		t.Run(tt.name, func(t *testing.T) {
			p := small(tt.set)
			held := simPatch
			held.Rollout = &manifest.Rollout{Tiers: []string{"canary"}, Start: t0, StartPercent: p.StartPercent}
			ramping := simPatch
			ramping.Rollout = &manifest.Rollout{Tiers: []string{"canary"}, Start: t0.Add(p.Hold), StartPercent: p.StartPercent,
				Duration: manifest.Duration(p.Ramp)}
			mf := func(e manifest.Patch) *manifest.Manifest {
				return &manifest.Manifest{Schema: manifest.SchemaVersion, Version: 1, Expires: t0.AddDate(1, 0, 0), Patches: []manifest.Patch{e}}
			}
			phase := []*manifest.Manifest{mf(held), mf(ramping)}
			for _, at := range []time.Duration{0, p.Hold / 2, p.Hold, p.Hold + p.Ramp/3, p.Hold + p.Ramp*9/10, p.Hold + p.Ramp + time.Minute} {
				m := phase[0]
				if at >= p.Hold {
					m = phase[1]
				}
				for h := 0; h < 2000; h++ {
					host := manifest.Host{ID: string(appendHostID(nil, h)), Kernel: simPatch.Kernel}
					if h%10 == 0 {
						host.Tier = "canary"
					}
					want := host.Tier == "canary" || p.eligibleAt(manifest.Bucket(host.ID, &simPatch)) <= at.Hours()
					if got := manifest.Select(m, host, t0.Add(at), nil).Wanted != nil; got != want {
						t.Fatalf("%s at %v: Select %v, model %v", host.ID, at, got, want)
					}
				}
			}
		})
	}
}

func TestGoodPatchInvariants(t *testing.T) {
	for _, tt := range rollouts {
		t.Run(tt.name, func(t *testing.T) {
			p := small(tt.set)
			r, err := Run(p)
			if err != nil {
				t.Fatal(err)
			}
			// A good patch (crash rate 0) is never revoked.
			if r.Revoked || r.Crashes != 0 {
				t.Fatalf("good patch revoked or crashed: %+v", r)
			}
			prev := 0.0
			for _, pt := range r.Curve {
				if pt.Share < prev {
					t.Fatalf("patched share fell at %v: %v < %v", pt.At, pt.Share, prev)
				}
				prev = pt.Share
				// Polls only delay a host, so the stage's share caps the
				// patched share (slack: the buckets of 20k hosts are a
				// sample of a uniform distribution).
				if limit := share(p, pt.At) + 0.01; pt.Share > limit {
					t.Fatalf("at %v %.4f patched, over the stage cap %.4f", pt.At, pt.Share, limit)
				}
			}
			if !(r.P50 <= r.P95 && r.P95 <= r.P99) && r.P99 >= 0 {
				t.Fatalf("quantiles out of order: %v %v %v", r.P50, r.P95, r.P99)
			}
			if p.Ramp == 0 {
				// Held: the canary and the start share, never the rest.
				if got, want := float64(r.Patched)/float64(p.Hosts), share(p, 0); math.Abs(got-want) > 0.01 || r.P50 != -1 {
					t.Fatalf("held rollout patched %.4f (P50 %v), want %.4f", got, r.P50, want)
				}
				return
			}
			// Everybody, at most one poll (with its jitter) after the ramp.
			last := p.Hold + p.Ramp + time.Duration(float64(p.Interval)*(1+p.Jitter))
			if r.Patched != p.Hosts || prev != 1 || r.P99 > last {
				t.Fatalf("patched %d of %d, final share %v, P99 %v (bound %v)", r.Patched, p.Hosts, prev, r.P99, last)
			}
		})
	}
}

func TestBadPatch(t *testing.T) {
	tests := []struct {
		name      string
		set       func(*Params)
		revoked   bool
		inCanary  bool // revoked while only the canary runs it
		maxExpose float64
	}{
		// One crash per 20 patched host-hours: obviously bad.
		{"obvious, default rollout", func(p *Params) { p.CrashRate = 0.05 }, true, true, 0.015},
		{"obvious, slow polls", func(p *Params) { p.CrashRate = 0.05; p.Interval = time.Hour }, true, true, 0.015},
		// Half a crash per 1000 host-hours: the canary takes hours to show it.
		{"subtle, default rollout", func(p *Params) { p.CrashRate = 0.0005 }, true, true, 0.015},
		{"subtle, no hold", func(p *Params) { p.CrashRate = 0.0005; p.Hold, p.Ramp = 0, 6*time.Hour }, true, false, 1},
		{"rare crashes", func(p *Params) { p.CrashRate = 1e-9 }, false, false, 1},
		{"crash rate 0", func(p *Params) { p.CrashRate = 0 }, false, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := small(tt.set)
			r, err := Run(p)
			if err != nil {
				t.Fatal(err)
			}
			if r.Revoked != tt.revoked {
				t.Fatalf("revoked %v, want %v: %+v", r.Revoked, tt.revoked, r)
			}
			if exposed := float64(r.ExposedHosts) / float64(p.Hosts); exposed > tt.maxExpose {
				t.Fatalf("%.4f of the fleet exposed, want <= %.4f", exposed, tt.maxExpose)
			}
			if !r.Revoked {
				return
			}
			if tt.inCanary && r.RevokeAt > p.Hold {
				t.Fatalf("revoked at %v, after the canary hold (%v)", r.RevokeAt, p.Hold)
			}
			// Only a budget exceeded over enough hosts revokes, after the
			// detection delay.
			if float64(r.CrashesAtDetect)*1000 <= p.BudgetPer1k*float64(r.PatchedAtDetect) || r.PatchedAtDetect < p.MinHosts ||
				r.RevokeAt-r.DetectAt != p.DetectDelay {
				t.Fatalf("revoked without exceeding the budget: %+v", r)
			}
			// Every host hears of it by its next poll.
			if r.RevokeReach99 <= 0 || r.RevokeReach99 > time.Duration(float64(p.Interval)*(1+p.Jitter)) {
				t.Fatalf("revocation reached 99%% after %v", r.RevokeReach99)
			}
			// Nobody takes the patch once it is revoked.
			for _, pt := range r.Curve {
				if pt.At >= r.RevokeAt && int(math.Round(pt.Share*float64(p.Hosts))) != r.ExposedHosts {
					t.Fatalf("at %v after the revocation %.4f patched, %d exposed in all", pt.At, pt.Share, r.ExposedHosts)
				}
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	p := small(func(p *Params) { p.CrashRate = 0.01 })
	runs := make([]Result, 3)
	for i := range runs {
		if i == 2 {
			p.Seed++
		}
		var err error
		if runs[i], err = Run(p); err != nil {
			t.Fatal(err)
		}
		runs[i].Elapsed = 0
	}
	if !reflect.DeepEqual(runs[0], runs[1]) {
		t.Fatalf("same seed, different results:\n%+v\n%+v", runs[0], runs[1])
	}
	if reflect.DeepEqual(runs[0], runs[2]) {
		t.Fatal("a different seed changed nothing")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		set  func(*Params)
	}{
		{"no hosts", func(p *Params) { p.Hosts = 0 }},
		{"jitter 1", func(p *Params) { p.Jitter = 1 }},
		{"canary over 1", func(p *Params) { p.Canary = 2 }},
		{"start over 100", func(p *Params) { p.StartPercent = 101 }},
		{"negative hold", func(p *Params) { p.Hold = -time.Hour }},
		{"zero budget", func(p *Params) { p.BudgetPer1k = 0 }},
		{"zero interval", func(p *Params) { p.Interval = 0 }},
	}
	for _, tt := range tests {
		p := Defaults()
		tt.set(&p)
		if _, err := Run(p); !errors.Is(err, ErrParams) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

// BenchmarkMillionHosts: the bar is a million hosts in under a minute on
// two cores.
func BenchmarkMillionHosts(b *testing.B) {
	p := Defaults()
	p.Hosts = 1_000_000
	p.CrashRate = 0.001
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Run(p); err != nil {
			b.Fatal(err)
		}
	}
}
