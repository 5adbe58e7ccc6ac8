package fleetsim

import (
	"errors"
	"testing"
	"time"
)

func small() Params {
	p := Defaults()
	p.Hosts = 20_000
	return p
}

func TestGoodPatchReachesTheFleet(t *testing.T) {
	p := small()
	r, err := Run(p)
	if err != nil {
		t.Fatal(err)
	}
	if r.Revoked || r.Crashes != 0 || r.Patched != p.Hosts {
		t.Fatalf("good patch: %+v", r)
	}
	// Nobody outside the canary before the hold ends; everybody shortly
	// after the ramp (one poll interval plus jitter).
	if r.P50 < p.Hold || r.P99 > p.Hold+p.Ramp+p.Interval*2 || !(r.P50 <= r.P95 && r.P95 <= r.P99) {
		t.Fatalf("quantiles %v %v %v", r.P50, r.P95, r.P99)
	}
	prev := 0.0
	for _, pt := range r.Curve {
		if pt.Share < prev {
			t.Fatalf("patched share fell at %v: %v < %v", pt.At, pt.Share, prev)
		}
		prev = pt.Share
		// The stage caps: the canary plus the ramp's share by then (with
		// sampling slack; polls only delay).
		ramp := 0.0
		if h := pt.At - p.Hold; h > 0 {
			ramp = min(1, float64(h)/float64(p.Ramp))
		}
		if cap := p.Canary + (1-p.Canary)*ramp + 0.01; pt.Share > cap {
			t.Fatalf("at %v %.4f patched, over the stage cap %.4f", pt.At, pt.Share, cap)
		}
	}
	if prev != 1 {
		t.Fatalf("final share %v", prev)
	}
}

func TestDeterministic(t *testing.T) {
	p := small()
	p.CrashRate = 0.01
	a, _ := Run(p)
	b, _ := Run(p)
	a.Elapsed, b.Elapsed = 0, 0
	if a.P99 != b.P99 || a.RevokeAt != b.RevokeAt || a.ExposedHosts != b.ExposedHosts || a.Crashes != b.Crashes {
		t.Fatalf("same seed, different results:\n%+v\n%+v", a, b)
	}
	p.Seed++
	if c, _ := Run(p); c.ExposedHosts == a.ExposedHosts && c.RevokeAt == a.RevokeAt {
		t.Fatal("a different seed changed nothing")
	}
}

func TestBadPatchIsPulledBackInTheCanary(t *testing.T) {
	p := small()
	p.CrashRate = 0.05 // one crash per 20 patched host-hours: obviously bad
	r, err := Run(p)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Revoked || r.RevokeAt > p.Hold {
		t.Fatalf("not revoked during the canary hold: %+v", r)
	}
	if r.ExposedHosts > int(float64(p.Hosts)*p.Canary*1.5) {
		t.Fatalf("%d hosts exposed, the canary is %d", r.ExposedHosts, int(float64(p.Hosts)*p.Canary))
	}
	if r.CrashesAtDetect*1000 <= int(p.BudgetPer1k*float64(r.PatchedAtDetect)) || r.PatchedAtDetect < p.MinHosts {
		t.Fatalf("revoked without exceeding the budget: %+v", r)
	}
	if r.RevokeReach99 <= 0 || r.RevokeReach99 > p.Interval*2 {
		t.Fatalf("revocation reached 99%% after %v", r.RevokeReach99)
	}
}

func TestRareCrashesStayUnderBudget(t *testing.T) {
	p := small()
	p.CrashRate = 1e-9
	r, _ := Run(p)
	if r.Revoked {
		t.Fatalf("revoked at a crash rate far under the budget: %+v", r)
	}
}

func TestValidate(t *testing.T) {
	for _, p := range []Params{{}, func() Params { p := Defaults(); p.Jitter = 1; return p }(), func() Params { p := Defaults(); p.Canary = 2; return p }()} {
		if _, err := Run(p); !errors.Is(err, ErrParams) {
			t.Errorf("%+v: %v", p, err)
		}
	}
}

// BenchmarkMillionHosts: the bar is a million hosts in under a minute on
// two cores.
func BenchmarkMillionHosts(b *testing.B) {
	p := Defaults()
	p.Hosts = 1_000_000
	p.CrashRate = 0.001
	for b.Loop() {
		if _, err := Run(p); err != nil {
			b.Fatal(err)
		}
	}
	_ = time.Second
}
