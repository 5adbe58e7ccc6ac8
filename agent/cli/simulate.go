package cli

import (
	"fmt"
	"time"

	"github.com/klp-agent/klp-agent/manifest/fleetsim"
)

// seedRebootDays is the seed's baseline: a kernel fix reaches the fleet
// through reboots in about 45 days.
const seedRebootDays = 45

func cmdSimulate(env *Env, args []string) error {
	d := fleetsim.Defaults()
	fs := newFlags(env, "simulate", "simulate [--hosts N] [--interval D] [--canary F] [--hold D] [--ramp D] [--crash-rate R] ...")
	hosts := fs.Int("hosts", d.Hosts, "fleet size")
	interval := fs.Duration("interval", d.Interval, "manifest.poll_interval")
	jitter := fs.Float64("jitter", d.Jitter, "manifest.poll_jitter")
	canary := fs.Float64("canary", d.Canary, "share of hosts in the canary tier (0..1)")
	startPct := fs.Float64("start-percent", d.StartPercent, "rollout start_percent")
	hold := fs.Duration("hold", d.Hold, "how long the ramp holds at start-percent after the canary gets the patch")
	ramp := fs.Duration("ramp", d.Ramp, "rollout duration: start-percent to 100%")
	crash := fs.Float64("crash-rate", 0, "crashes per patched host-hour (0: a good patch)")
	fs.Float64Var(crash, "crash-prob", 0, "same as --crash-rate")
	budget := fs.Float64("budget", d.BudgetPer1k, "revoke when crashes per 1000 patched hosts exceed this")
	fs.Float64Var(budget, "revoke-per-1000", d.BudgetPer1k, "same as --budget")
	window := fs.Duration("window", d.Window, "crash-counting window of the alert rule")
	minHosts := fs.Int("min-hosts", d.MinHosts, "do not judge the budget on fewer patched hosts")
	delay := fs.Duration("detect-delay", d.DetectDelay, "from the budget exceeded to the revocation published")
	seed := fs.Uint64("seed", d.Seed, "random seed (same seed, same result)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	p := fleetsim.Params{Hosts: *hosts, Interval: *interval, Jitter: *jitter, Canary: *canary, StartPercent: *startPct,
		Hold: *hold, Ramp: *ramp, CrashRate: *crash, BudgetPer1k: *budget, Window: *window, MinHosts: *minHosts,
		DetectDelay: *delay, Seed: *seed}
	r, err := fleetsim.Run(p)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	w := env.Stdout
	fmt.Fprintf(w, "fleet: %d hosts polling every %s ±%.0f%%; canary %.1f%%, hold %s, ramp %s from %.0f%%\n",
		p.Hosts, p.Interval, p.Jitter*100, p.Canary*100, p.Hold, p.Ramp, p.StartPercent)
	if p.CrashRate == 0 {
		fmt.Fprintf(w, "patched: 50%% after %s, 95%% after %s, 99%% after %s (reboots: %d days", dur(r.P50), dur(r.P95), dur(r.P99), seedRebootDays)
		if r.P99 > 0 {
			fmt.Fprintf(w, ", %.0fx slower", seedRebootDays*24/r.P99.Hours())
		}
		fmt.Fprintln(w, ")")
	} else {
		fmt.Fprintf(w, "bad patch: %.4f crashes per patched host-hour; pull back above %.1f per 1000 patched hosts in %s\n",
			p.CrashRate, p.BudgetPer1k, p.Window)
		if r.Revoked {
			fmt.Fprintf(w, "budget exceeded after %s (%d crashes, %d hosts patched); revoked at %s\n",
				dur(r.DetectAt), r.CrashesAtDetect, r.PatchedAtDetect, dur(r.RevokeAt))
			fmt.Fprintf(w, "revocation reached 99%% of patched hosts %s later\n", dur(r.RevokeReach99))
		} else {
			fmt.Fprintf(w, "never revoked: the budget was not exceeded\n")
		}
		fmt.Fprintf(w, "exposed: %d hosts (%.2f%% of the fleet) ran it; %d crashed\n",
			r.ExposedHosts, 100*float64(r.ExposedHosts)/float64(p.Hosts), r.Crashes)
	}
	fmt.Fprintf(w, "simulated in %s\n", r.Elapsed.Round(time.Millisecond))
	return nil
}

func dur(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	if d >= 48*time.Hour {
		return fmt.Sprintf("%.1fd", d.Hours()/24)
	}
	return d.Round(time.Minute).String()
}
