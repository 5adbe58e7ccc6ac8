package manifest

import (
	"math"
	"testing"
	"time"
)

func mkPatch(level int, r *Rollout) Patch {
	return Patch{Kernel: "6.1.0-28-amd64", Name: "klp_cmdline_" + string(rune('0'+level)), Level: level,
		URL: "x.rpm", SHA256: sha(level), Size: 1, Rollout: r}
}

// hostIn finds a host id whose bucket for p is below (or above) pct.
func hostIn(t *testing.T, p *Patch, pct float64, below bool) string {
	t.Helper()
	for i := 0; i < 100000; i++ {
		id := "host-" + string(rune('a'+i%26)) + time.Duration(i).String()
		if b := Bucket(id, p); (b < pct) == below {
			return id
		}
	}
	t.Fatal("no host found")
	return ""
}

func TestSelect(t *testing.T) {
	start := now.Add(-12 * time.Hour)
	ramp := &Rollout{Tiers: []string{"canary"}, Start: start, StartPercent: 10, Duration: Duration(24 * time.Hour)} // 55% now
	future := &Rollout{Tiers: []string{"canary"}, Start: now.Add(time.Hour)}
	canaryOnly := &Rollout{Tiers: []string{"canary"}, Start: start}
	p1, p2, p3 := mkPatch(1, nil), mkPatch(2, ramp), mkPatch(3, canaryOnly)
	inRamp, outRamp := hostIn(t, &p2, 55, true), hostIn(t, &p2, 55, false)
	tests := []struct {
		name      string
		m         Manifest
		host      Host
		blocked   Blocked
		wantLevel int // 0 = none
	}{
		{"no rollout: everyone", Manifest{Patches: []Patch{p1}}, Host{ID: "h", Kernel: p1.Kernel}, nil, 1},
		{"other kernel: nothing", Manifest{Patches: []Patch{p1}}, Host{ID: "h", Kernel: "6.1.0-29-amd64"}, nil, 0},
		{"kernel prefix is not a match", Manifest{Patches: []Patch{p1}}, Host{ID: "h", Kernel: "6.1.0-28"}, nil, 0},
		{"canary tier gets canary-only level", Manifest{Patches: []Patch{p1, p2, p3}}, Host{ID: outRamp, Tier: "canary", Kernel: p1.Kernel}, nil, 3},
		{"in ramp bucket", Manifest{Patches: []Patch{p1, p2, p3}}, Host{ID: inRamp, Kernel: p1.Kernel}, nil, 2},
		{"outside ramp bucket", Manifest{Patches: []Patch{p1, p2, p3}}, Host{ID: outRamp, Kernel: p1.Kernel}, nil, 1},
		{"rollout not started even for canary", Manifest{Patches: []Patch{p1, mkPatch(2, future)}}, Host{ID: "h", Tier: "canary", Kernel: p1.Kernel}, nil, 1},
		{"revoked level skipped", Manifest{Patches: []Patch{p1, p2, p3}, Revoked: []Revoked{{Name: p3.Name, Level: 3}}}, Host{ID: outRamp, Tier: "canary", Kernel: p1.Kernel}, nil, 2},
		{"revocation for other sha does not match", Manifest{Patches: []Patch{p1, p2, p3}, Revoked: []Revoked{{Name: p3.Name, Level: 3, SHA256: sha(99)}}}, Host{ID: outRamp, Tier: "canary", Kernel: p1.Kernel}, nil, 3},
		{"locally blocked skipped", Manifest{Patches: []Patch{p1, p2, p3}}, Host{ID: outRamp, Tier: "canary", Kernel: p1.Kernel}, func(p *Patch) bool { return p.Level >= 2 }, 1},
		{"everything revoked", Manifest{Patches: []Patch{p1}, Revoked: []Revoked{{Name: p1.Name, Level: 1}}}, Host{ID: "h", Kernel: p1.Kernel}, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Select(&tt.m, tt.host, now, tt.blocked)
			got := 0
			if d.Wanted != nil {
				got = d.Wanted.Level
			}
			if got != tt.wantLevel {
				for _, e := range d.Entries {
					t.Logf("level %d: %s", e.Patch.Level, e.Reason)
				}
				t.Fatalf("wanted level %d, want %d", got, tt.wantLevel)
			}
			chosen := 0
			for _, e := range d.Entries {
				if e.Reason == "" {
					t.Errorf("level %d has no reason", e.Patch.Level)
				}
				if e.Chosen {
					chosen++
				}
			}
			if chosen != min(got, 1) {
				t.Errorf("%d entries marked chosen", chosen)
			}
		})
	}
}

func TestRolloutShare(t *testing.T) {
	start := now.Add(-6 * time.Hour)
	tests := []struct {
		name string
		r    *Rollout
		want float64
	}{
		{"none", nil, 100},
		{"quarter of a 0..100 ramp", &Rollout{Start: start, Duration: Duration(24 * time.Hour)}, 25},
		{"from 20%", &Rollout{Start: start, StartPercent: 20, Duration: Duration(24 * time.Hour)}, 40},
		{"held", &Rollout{Start: start, StartPercent: 5}, 5},
		{"complete", &Rollout{Start: start, Duration: Duration(time.Hour)}, 100},
		{"not started", &Rollout{Start: now.Add(time.Minute), StartPercent: 50}, 0},
	}
	for _, tt := range tests {
		got, _, _ := rolloutShare(tt.r, "", now)
		if math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%s: share %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestBucketStableAndUniform(t *testing.T) {
	p := mkPatch(1, nil)
	if Bucket("a", &p) != Bucket("a", &p) {
		t.Fatal("bucket not stable")
	}
	q := mkPatch(2, nil)
	if Bucket("a", &p) == Bucket("a", &q) {
		t.Fatal("different patches should shuffle hosts")
	}
	const n = 20000
	under := 0
	for i := 0; i < n; i++ {
		b := Bucket(time.Duration(i).String(), &p)
		if b < 0 || b >= 100 {
			t.Fatalf("bucket %v out of range", b)
		}
		if b < 10 {
			under++
		}
	}
	// 10% expected; 5 standard deviations is about ±1.1%.
	if frac := float64(under) / n; frac < 0.089 || frac > 0.111 {
		t.Fatalf("%.3f of hosts under 10%%, want about 0.10", frac)
	}
}

func TestResolveURL(t *testing.T) {
	tests := []struct{ base, ref, want string }{
		{"https://h/klp/manifest.json", "rpms/a.rpm", "https://h/klp/rpms/a.rpm"},
		{"https://h/klp/manifest.json", "/other/a.rpm", "https://h/other/a.rpm"},
		{"https://h/klp/manifest.json", "https://m/a.rpm", "https://m/a.rpm"},
		{"http://127.0.0.1:8080/m.json", "a.rpm", "http://127.0.0.1:8080/a.rpm"},
	}
	for _, tt := range tests {
		p := Patch{Name: "x", Level: 1, URL: tt.ref}
		got, err := ResolveURL(tt.base, &p)
		if err != nil || got != tt.want {
			t.Errorf("ResolveURL(%q, %q) = %q, %v; want %q", tt.base, tt.ref, got, err, tt.want)
		}
	}
}
