// Package fleetsim models a fleet of agents rolling one livepatch out under
// the manifest's staged rollout, and the fleet's pull-back rule: revoke the
// patch once crashes exceed a budget per 1000 patched hosts. It answers how
// fast a good patch reaches the fleet and how many hosts a bad one reaches
// before the revocation does, for rollout parameters an operator picks.
// With a Loop it models the pull-back part by part (Prometheus,
// Alertmanager, a person or the guard, the publish, the manifest's or
// revocations.json's poll, the rollback); PublishBytes sizes a publish
// across the fleet, whole manifest against shards.
//
// Hosts are not goroutines or events: each host's rollout time is computed
// in closed form from its stable bucket (manifest.Bucket, as Select uses)
// and the residual of its jittered poll renewal process, so a million hosts
// take about a second.
package fleetsim

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/klp-agent/klp-agent/manifest"
)

// Params describe the fleet, the rollout and the patch.
type Params struct {
	Hosts        int
	Interval     time.Duration // poll interval
	Jitter       float64       // ± fraction of Interval
	Canary       float64       // share of hosts in the canary tier, 0..1
	StartPercent float64       // ramp share at the start, 0..100
	Hold         time.Duration // the ramp holds at StartPercent this long (the canary soak)
	Ramp         time.Duration // then rises linearly to 100% over this long
	CrashRate    float64       // crashes per patched host-hour (0: a good patch)
	BudgetPer1k  float64       // revoke when crashes per 1000 patched hosts exceed this
	Window       time.Duration // ... counting crashes within this window (the alert rule's range)
	MinHosts     int           // ... and at least this many hosts are patched
	DetectDelay  time.Duration // metrics scrape, rule evaluation, the revoke published
	Seed         uint64
	// Loop, when set, replaces DetectDelay with the pull-back's parts
	// (ManualLoop, GuardLoop) and each host's rollback; its
	// ManifestInterval and Jitter are Interval and Jitter.
	Loop *Loop
}

// Defaults are a conservative production rollout: 1% canary held a day,
// then a ramp over two days.
func Defaults() Params {
	return Params{Hosts: 100_000, Interval: 15 * time.Minute, Jitter: 0.2, Canary: 0.01, StartPercent: 0,
		Hold: 24 * time.Hour, Ramp: 48 * time.Hour, BudgetPer1k: 1, Window: 24 * time.Hour, MinHosts: 100,
		DetectDelay: 5 * time.Minute, Seed: 1}
}

// ErrParams marks parameters the model cannot run.
var ErrParams = errors.New("invalid simulation parameters")

// Validate checks the parameters.
func (p Params) Validate() error {
	switch {
	case p.Hosts < 1 || p.Hosts > 10_000_000:
		return fmt.Errorf("%w: hosts %d not in [1, 10M]", ErrParams, p.Hosts)
	case p.Interval <= 0 || p.Jitter < 0 || p.Jitter >= 1:
		return fmt.Errorf("%w: interval must be > 0 and jitter in [0,1)", ErrParams)
	case p.Canary < 0 || p.Canary > 1 || p.StartPercent < 0 || p.StartPercent > 100:
		return fmt.Errorf("%w: canary in [0,1], start percent in [0,100]", ErrParams)
	case p.Hold < 0 || p.Ramp < 0 || p.DetectDelay < 0 || p.CrashRate < 0 || p.BudgetPer1k <= 0 || p.MinHosts < 0 || p.Window <= 0:
		return fmt.Errorf("%w: negative duration, rate or budget", ErrParams)
	}
	if p.Loop != nil {
		return p.loop().Validate()
	}
	return nil
}

// Result is what the simulation measured. Times are since the publish.
type Result struct {
	Hosts           int
	Patched         int           // hosts that ever ran the patch
	P50, P95, P99   time.Duration // time to that share of the fleet patched (-1: never)
	Revoked         bool
	RevokeAt        time.Duration // when the revocation was published
	DetectAt        time.Duration // when the budget was exceeded
	CrashesAtDetect int
	PatchedAtDetect int
	ExposedHosts    int           // patched before the revocation reached them
	Crashes         int           // crashes before each host rolled back
	RevokeReach99   time.Duration // from publish of the revocation to 99% of patched hosts rolled back
	// When Revoked: the patch's exposure, hours hosts ran it (each from its
	// apply to its rollback or crash), and from the budget exceeded to the
	// last host rolled back; with a Loop, the pull-back's parts.
	HostHours         float64
	HostHoursAfter    float64 // ... of them, after the budget was exceeded: what the pull-back controls
	LastBack          time.Duration
	Parts             Parts
	HoldEnds, RampEnd time.Duration
	Curve             []Point       // share of the fleet that has run the patch, hourly
	Elapsed           time.Duration // wall time the simulation took
}

// Point is the patched share of the fleet at a time.
type Point struct {
	At    time.Duration
	Share float64
}

// Run simulates one rollout.
func Run(p Params) (Result, error) {
	if err := p.Validate(); err != nil {
		return Result{}, err
	}
	start := time.Now()
	rng := rand.New(rand.NewPCG(p.Seed, p.Seed^0x9e3779b97f4a7c15))
	iv := p.Interval.Hours()
	a, b := iv*(1-p.Jitter), iv*(1+p.Jitter)
	// residual samples the time from an arbitrary moment to a host's next
	// poll: the stationary residual of a renewal process with intervals
	// uniform on [a,b] (length-biased interval, then a uniform point in it).
	residual := func() float64 {
		x := math.Sqrt(a*a + rng.Float64()*(b*b-a*a))
		return rng.Float64() * x
	}
	patchAt := make([]float64, p.Hosts) // hours
	crashAt := make([]float64, p.Hosts) // hours; +Inf: never
	var id []byte
	for h := 0; h < p.Hosts; h++ {
		var eligible float64 // canary hosts: at the publish
		if rng.Float64() >= p.Canary {
			id = appendHostID(id[:0], h)
			eligible = p.eligibleAt(manifest.Bucket(string(id), &simPatch))
		}
		patchAt[h] = eligible + residual()
		crashAt[h] = math.Inf(1)
		if p.CrashRate > 0 && !math.IsInf(patchAt[h], 1) {
			crashAt[h] = patchAt[h] + rng.ExpFloat64()/p.CrashRate
		}
	}
	res := Result{Hosts: p.Hosts, HoldEnds: p.Hold, RampEnd: p.Hold + p.Ramp}

	// The pull-back: sweep crashes in time order against the number of
	// hosts patched by then.
	sortedPatch := slices.Clone(patchAt)
	slices.Sort(sortedPatch)
	detectAt, revokeAt := math.Inf(1), math.Inf(1)
	if p.CrashRate > 0 {
		crashes := slices.Clone(crashAt)
		slices.Sort(crashes)
		w, first := p.Window.Hours(), 0
		for i, c := range crashes {
			if math.IsInf(c, 1) {
				break
			}
			for crashes[first] <= c-w {
				first++
			}
			inWindow := i - first + 1
			patched := upper(sortedPatch, c)
			if patched >= p.MinHosts && float64(inWindow)*1000 > p.BudgetPer1k*float64(patched) {
				res.Revoked, res.DetectAt = true, hours(c)
				res.CrashesAtDetect, res.PatchedAtDetect = inWindow, patched
				detectAt, revokeAt = c, c+p.DetectDelay.Hours()
				res.RevokeAt = hours(revokeAt)
				break
			}
		}
	}
	if p.Loop != nil {
		p.pullBack(&res, patchAt, crashAt, detectAt)
	} else {
		// Each host sees the revocation at its first poll after it; a host
		// that crashed blocked the patch itself on its next boot.
		var reach []float64
		last := math.Inf(-1)
		for h := range patchAt {
			if patchAt[h] >= revokeAt {
				patchAt[h] = math.Inf(1) // it saw the revoked manifest first
				continue
			}
			if math.IsInf(patchAt[h], 1) {
				continue
			}
			res.ExposedHosts++
			if res.Revoked {
				back := revokeAt + residual()
				if crashAt[h] < back {
					res.Crashes++
					back = crashAt[h]
				}
				reach = append(reach, back-revokeAt)
				res.HostHours += back - patchAt[h]
				res.HostHoursAfter += max(back-max(patchAt[h], detectAt), 0)
				last = max(last, back)
			} else if crashAt[h] < math.Inf(1) {
				res.Crashes++
			}
		}
		if len(reach) > 0 {
			slices.Sort(reach)
			res.RevokeReach99 = hours(reach[int(math.Ceil(0.99*float64(len(reach))))-1])
			res.LastBack = hours(last) - res.DetectAt
		}
	}
	res.Patched = res.ExposedHosts
	slices.Sort(patchAt)
	res.P50, res.P95, res.P99 = quantile(patchAt, p.Hosts, 0.50), quantile(patchAt, p.Hosts, 0.95), quantile(patchAt, p.Hosts, 0.99)
	end := patchAt[len(patchAt)-1]
	if math.IsInf(end, 1) {
		end = p.Hold.Hours() + p.Ramp.Hours() + 2*iv
	}
	for t := 0.0; t <= end+1; t++ {
		res.Curve = append(res.Curve, Point{At: hours(t), Share: float64(upper(patchAt, t)) / float64(p.Hosts)})
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// loop is the Loop with the fleet's own manifest polls.
func (p Params) loop() Loop {
	l := *p.Loop
	l.ManifestInterval, l.Jitter = p.Interval, p.Jitter
	return l
}

// pullBack is the Loop's pull-back: the revocation is published the
// loop's parts after the budget was exceeded (revokeAt is then moved
// there), and each host learns of it at its next poll of the document
// that carries it, then rolls back. Its own random stream, drawn the
// same way whatever the loop, keeps the rollout identical to a run
// without a Loop and lets loops be compared draw by draw.
func (p Params) pullBack(res *Result, patchAt, crashAt []float64, detectAt float64) {
	l := p.loop()
	rng := rand.New(rand.NewPCG(p.Seed^0x6a09e667f3bcc909, p.Seed))
	res.Parts = l.published(rng)
	revokeAt := detectAt + res.Parts.Published().Hours()
	if res.Revoked {
		res.RevokeAt = hours(revokeAt)
	}
	hp, channel := l.hostPoll(), l.Channel > 0
	var reach []float64
	last := math.Inf(-1)
	for h := range patchAt {
		wait := hp.at(rng.Float64(), rng.Float64())
		rb := uniform(rng, l.RollbackMin, l.RollbackMax)
		if math.IsInf(patchAt[h], 1) {
			continue
		}
		learn := revokeAt + wait.Hours()
		// The manifest's revocation stops a host at its first manifest
		// poll after the publish; the channel's at its first channel poll,
		// so a host whose manifest poll comes between the two still
		// applies the patch, then rolls it back.
		if !channel && patchAt[h] >= revokeAt || channel && patchAt[h] >= learn {
			patchAt[h] = math.Inf(1)
			continue
		}
		res.ExposedHosts++
		if !res.Revoked {
			if crashAt[h] < math.Inf(1) {
				res.Crashes++
			}
			continue
		}
		back := learn + rb.Hours()
		if crashAt[h] < back {
			res.Crashes++
			back = crashAt[h]
		} else if back > last {
			res.Parts.Poll, res.Parts.Rollback = wait, rb
		}
		reach = append(reach, back-revokeAt)
		res.HostHours += back - patchAt[h]
		res.HostHoursAfter += max(back-max(patchAt[h], detectAt), 0)
		last = max(last, back)
	}
	if len(reach) > 0 {
		slices.Sort(reach)
		res.RevokeReach99 = hours(reach[int(math.Ceil(0.99*float64(len(reach))))-1])
		res.LastBack = hours(last) - res.DetectAt
		res.Parts.Total = res.LastBack
	}
}

// simPatch is the patch rolled out; its identity only shuffles the buckets.
var simPatch = manifest.Patch{Kernel: "6.1.0-56-amd64", Name: "klp_sim", Level: 1}

// appendHostID names host h as the simulation's hosts are named.
func appendHostID(b []byte, h int) []byte {
	return strconv.AppendInt(append(b, "host-"...), int64(h), 10)
}

// eligibleAt is when Select first lets a non-canary host with this bucket
// have the patch, in hours after the publish (+Inf: never). The rollout is
// what an operator publishes: the entry with the canary tier at
// StartPercent and no duration (held), then after Hold the same entry
// re-added (add --replace) with its start at that moment and Ramp as its
// duration. Select admits a host once its bucket is under the share.
func (p Params) eligibleAt(bucket float64) float64 {
	switch {
	case bucket < p.StartPercent:
		return 0
	case p.Ramp == 0:
		return math.Inf(1) // a zero duration holds the ramp
	default:
		return p.Hold.Hours() + (bucket-p.StartPercent)/(100-p.StartPercent)*p.Ramp.Hours()
	}
}

// upper is how many sorted values are <= x.
func upper(sorted []float64, x float64) int {
	i, _ := slices.BinarySearchFunc(sorted, x, func(v, t float64) int {
		if v <= t {
			return -1
		}
		return 1
	})
	return i
}

// quantile is the time by which q of all n hosts were patched, or -1.
func quantile(sorted []float64, n int, q float64) time.Duration {
	k := int(math.Ceil(q*float64(n))) - 1
	if k < 0 || k >= len(sorted) || math.IsInf(sorted[k], 1) {
		return -1
	}
	return hours(sorted[k])
}

func hours(h float64) time.Duration { return time.Duration(h * float64(time.Hour)) }
