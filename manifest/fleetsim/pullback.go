package fleetsim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// Loop is the path a pull-back takes from the moment the budget is
// crossed (the crash that crosses it is in its host's exported metrics)
// to each host rolled back. Every part is a model input, not a
// measurement: the defaults name where each value comes from
// (ManualLoop, GuardLoop).
type Loop struct {
	// Prometheus: the crash counter reaches the TSDB at the host's next
	// scrape, the klp-agent.records group recomputes the budget's measure
	// at its next evaluation, the klp-agent.alerts group fires at its next
	// evaluation after that, plus the alert's for: (rounded up to whole
	// evaluations). Each wait is the residual of a fixed-period schedule
	// whose phase the crash cannot know: uniform on [0, period).
	Scrape     time.Duration // scrape_interval
	RecordEval time.Duration // klp-agent.records' interval (1m in the rules file)
	AlertEval  time.Duration // klp-agent.alerts': the global evaluation_interval
	For        time.Duration // KLPPatchCrashBudgetExceeded's for:
	// Alertmanager: a new group's first notification waits GroupWait; an
	// alert that joins a group which already notified waits for the
	// group's next flush, the residual of GroupInterval.
	GroupWait     time.Duration
	GroupInterval time.Duration
	GroupBusy     bool
	// The decision: a person paged (HumanMax > 0: uniform on [HumanMin,
	// HumanMax], from the page to the revoked manifest signed), or the
	// guard's re-check of the budget against Prometheus.
	HumanMin, HumanMax time.Duration
	Guard              time.Duration
	Publish            time.Duration // the signed document on the web server
	// The hosts: each learns of the revocation at its next poll of the
	// document that carries it, revocations.json every Channel or, with
	// Channel 0, the manifest every ManifestInterval, both ± Jitter (the
	// agent's manifest.NextInterval: uniform on interval·[1-j, 1+j]).
	Channel          time.Duration
	ManifestInterval time.Duration
	Jitter           float64
	// Then it rolls back (uniform on [RollbackMin, RollbackMax]).
	RollbackMin, RollbackMax time.Duration
}

// prometheusDefaults are Prometheus's built-in scrape_interval and
// evaluation_interval (1m each when prometheus.yml sets none), the rules
// file's klp-agent.records interval (1m) and the alert's for: 0m, and
// Alertmanager's route defaults group_wait 30s, group_interval 5m. The
// agent's own defaults (agent/config.Default): manifest.poll_interval
// 15m, revocations_interval 30s, poll_jitter 0.2.
func prometheusDefaults() Loop {
	return Loop{Scrape: time.Minute, RecordEval: time.Minute, AlertEval: time.Minute, For: 0,
		GroupWait: 30 * time.Second, GroupInterval: 5 * time.Minute,
		ManifestInterval: 15 * time.Minute, Jitter: 0.2, RollbackMin: time.Second, RollbackMax: 2 * time.Second}
}

// ManualLoop is today's loop: the alert pages a person who revokes the
// patch in the manifest, signs and publishes it (assumed 10 to 30 min:
// an acknowledged page, then revoke, sign with the release key, publish);
// hosts learn at their next manifest poll.
func ManualLoop() Loop {
	l := prometheusDefaults()
	l.HumanMin, l.HumanMax = 10*time.Minute, 30*time.Minute
	l.Publish = 5 * time.Second
	return l
}

// GuardLoop is the guard's loop: Alertmanager's webhook, the guard's
// re-check (one Prometheus query, assumed 1 s), a revocations.json signed
// with the revoke key and published (assumed 5 s: a publish command such
// as an object-store copy; an atomic write to the served directory takes
// milliseconds), hosts polling it every 30 s ± 20 %.
func GuardLoop() Loop {
	l := prometheusDefaults()
	l.Guard, l.Publish = time.Second, 5*time.Second
	l.Channel = 30 * time.Second
	return l
}

// Validate checks the loop.
func (l Loop) Validate() error {
	for _, d := range []time.Duration{l.Scrape, l.RecordEval, l.AlertEval, l.For, l.GroupWait, l.GroupInterval,
		l.HumanMin, l.HumanMax, l.Guard, l.Publish, l.Channel, l.ManifestInterval, l.RollbackMin, l.RollbackMax} {
		if d < 0 {
			return fmt.Errorf("%w: negative duration in the loop", ErrParams)
		}
	}
	switch {
	case l.AlertEval == 0 && l.For > 0:
		return fmt.Errorf("%w: for: needs an alert evaluation interval", ErrParams)
	case l.HumanMax < l.HumanMin || l.RollbackMax < l.RollbackMin:
		return fmt.Errorf("%w: a range's max below its min", ErrParams)
	case l.Channel == 0 && l.ManifestInterval == 0:
		return fmt.Errorf("%w: no poll carries the revocation", ErrParams)
	case l.Jitter < 0 || l.Jitter >= 1:
		return fmt.Errorf("%w: jitter in [0,1)", ErrParams)
	}
	return nil
}

// Parts is one pull-back, part by part, from the budget crossed.
type Parts struct {
	Scrape       time.Duration // to the scrape that ingests the crash
	RuleEval     time.Duration // the records group, then the alert (and its for:)
	Alertmanager time.Duration // group_wait, or the busy group's next flush
	Decision     time.Duration // the guard's re-check, or the person
	Publish      time.Duration
	Poll         time.Duration // the last host's wait for its poll
	Rollback     time.Duration // the last host's rollback
	Total        time.Duration // to the last host rolled back
}

// Published is when the revocation was on the web server.
func (p Parts) Published() time.Duration {
	return p.Scrape + p.RuleEval + p.Alertmanager + p.Decision + p.Publish
}

// poll is how a host's next poll after an arbitrary moment falls: the
// stationary residual of a renewal process whose intervals are uniform on
// [a, b] (the length-biased interval, then a uniform point in it).
type poll struct{ a, b float64 }

func newPoll(interval time.Duration, jitter float64) poll {
	iv := float64(interval)
	return poll{iv * (1 - jitter), iv * (1 + jitter)}
}

// at turns two uniforms into a residual, so that residuals drawn from the
// same uniforms scale with the interval (a shorter poll is never later).
func (p poll) at(u1, u2 float64) time.Duration {
	return time.Duration(u2 * math.Sqrt(p.a*p.a+u1*(p.b*p.b-p.a*p.a)))
}

func uniform(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Float64()*float64(hi-lo))
}

// residual is the wait for the next tick of a schedule of this period.
func residual(rng *rand.Rand, period time.Duration) time.Duration {
	return time.Duration(rng.Float64() * float64(period))
}

// published draws the parts up to the publish. It always draws the same
// number of values, so loops that differ only in their parameters see the
// same random stream (the comparisons in the tests are per draw).
func (l Loop) published(rng *rand.Rand) Parts {
	var p Parts
	p.Scrape = residual(rng, l.Scrape)
	p.RuleEval = residual(rng, l.RecordEval) + residual(rng, l.AlertEval)
	if l.For > 0 {
		p.RuleEval += time.Duration(math.Ceil(float64(l.For)/float64(l.AlertEval))) * l.AlertEval
	}
	busy := residual(rng, l.GroupInterval)
	p.Alertmanager = l.GroupWait
	if l.GroupBusy {
		p.Alertmanager = busy
	}
	human := uniform(rng, l.HumanMin, l.HumanMax)
	p.Decision = l.Guard
	if l.HumanMax > 0 {
		p.Decision = human
	}
	p.Publish = l.Publish
	return p
}

// hostPoll is the poll that carries the revocation to the hosts.
func (l Loop) hostPoll() poll {
	if l.Channel > 0 {
		return newPoll(l.Channel, l.Jitter)
	}
	return newPoll(l.ManifestInterval, l.Jitter)
}

// PullBackResult is the distribution of pull-backs over trials.
type PullBackResult struct {
	Hosts, Trials int
	P50, P99      time.Duration // of Total
	// Median is each part's own median (the parts of different trials:
	// they need not sum to P50).
	Median Parts
	Max    time.Duration
}

// PullBack samples trials pull-backs of a patch that hosts run when the
// budget is crossed, each to the last of them rolled back. Hosts poll
// independently; the last host is the one whose poll and rollback end
// last.
func PullBack(l Loop, hosts, trials int, seed uint64) (PullBackResult, error) {
	if err := l.Validate(); err != nil {
		return PullBackResult{}, err
	}
	if hosts < 1 || hosts > 10_000_000 || trials < 1 {
		return PullBackResult{}, fmt.Errorf("%w: hosts %d, trials %d", ErrParams, hosts, trials)
	}
	rng := rand.New(rand.NewPCG(seed, seed^0xd1b54a32d192ed03))
	hp := l.hostPoll()
	all := make([]Parts, trials)
	for t := range all {
		p := l.published(rng)
		var last time.Duration = -1
		for range hosts {
			wait := hp.at(rng.Float64(), rng.Float64())
			rb := uniform(rng, l.RollbackMin, l.RollbackMax)
			if wait+rb > last {
				last, p.Poll, p.Rollback = wait+rb, wait, rb
			}
		}
		p.Total = p.Published() + last
		all[t] = p
	}
	r := PullBackResult{Hosts: hosts, Trials: trials}
	med := func(f func(Parts) time.Duration) time.Duration {
		v := make([]time.Duration, len(all))
		for i, p := range all {
			v[i] = f(p)
		}
		slices.Sort(v)
		return quantileD(v, 0.5)
	}
	r.Median = Parts{Scrape: med(func(p Parts) time.Duration { return p.Scrape }),
		RuleEval:     med(func(p Parts) time.Duration { return p.RuleEval }),
		Alertmanager: med(func(p Parts) time.Duration { return p.Alertmanager }),
		Decision:     med(func(p Parts) time.Duration { return p.Decision }),
		Publish:      med(func(p Parts) time.Duration { return p.Publish }),
		Poll:         med(func(p Parts) time.Duration { return p.Poll }),
		Rollback:     med(func(p Parts) time.Duration { return p.Rollback }),
		Total:        med(func(p Parts) time.Duration { return p.Total })}
	totals := make([]time.Duration, len(all))
	for i, p := range all {
		totals[i] = p.Total
	}
	slices.Sort(totals)
	r.P50, r.P99, r.Max = quantileD(totals, 0.5), quantileD(totals, 0.99), totals[len(totals)-1]
	return r, nil
}

// quantileD is the q-quantile of sorted values (nearest rank).
func quantileD(sorted []time.Duration, q float64) time.Duration {
	k := max(int(math.Ceil(q*float64(len(sorted))))-1, 0)
	return sorted[k]
}
