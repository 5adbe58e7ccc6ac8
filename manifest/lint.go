package manifest

import (
	"fmt"
	"net/url"
	"sort"
	"time"
)

// Lint returns what is valid but probably not what the publisher meant,
// with DefaultMaxExpiry as the publisher's longest expiry.
func Lint(m *Manifest, now time.Time) []string { return LintMaxExpiry(m, now, DefaultMaxExpiry) }

// LintMaxExpiry is Lint with maxExpiry as the publisher's longest expiry,
// measured from signed_at when the manifest has one, else from now (as a
// host's clock at fetch time stands in for manifest.max_expiry): an expiry further out
// than maxExpiry is one that hosts with that limit refuse, and one a
// replaying mirror could hold hosts on for that long.
func LintMaxExpiry(m *Manifest, now time.Time, maxExpiry time.Duration) []string {
	var w []string
	if !m.SignedAt.IsZero() {
		if d := m.Expires.Sub(m.SignedAt); maxExpiry > 0 && d > maxExpiry {
			w = append(w, fmt.Sprintf("expires at %s, %s after signed_at %s: more than the %s limit; hosts with manifest.max_expiry %s refuse it",
				m.Expires.UTC().Format(time.RFC3339), d.Round(time.Minute), m.SignedAt.UTC().Format(time.RFC3339), maxExpiry, maxExpiry))
		}
		if m.SignedAt.After(now.Add(MaxClockSkew)) {
			w = append(w, fmt.Sprintf("signed_at %s is in the future: hosts whose clock is more than %s behind it refuse it", m.SignedAt.UTC().Format(time.RFC3339), MaxClockSkew))
		}
	}
	switch left := m.Expires.Sub(now); {
	case maxExpiry > 0 && m.SignedAt.IsZero() && left > maxExpiry:
		w = append(w, fmt.Sprintf("expires at %s, %s after now (%s, standing for the signing time): more than the %s limit; hosts with manifest.max_expiry %s refuse it",
			m.Expires.UTC().Format(time.RFC3339), left.Round(time.Minute), now.UTC().Format(time.RFC3339), maxExpiry, maxExpiry))
	case left <= 0:
		w = append(w, fmt.Sprintf("expired at %s: hosts will apply nothing from it", m.Expires.Format(time.RFC3339)))
	case left < 72*time.Hour:
		w = append(w, fmt.Sprintf("expires in %s: re-sign before then or hosts stop taking new patches", left.Round(time.Minute)))
	}
	levels := map[string][]int{}
	for i := range m.Patches {
		p := &m.Patches[i]
		levels[p.Kernel] = append(levels[p.Kernel], p.Level)
		if u, err := url.Parse(p.URL); err == nil && u.Scheme == "http" {
			w = append(w, fmt.Sprintf("%s: plain http URL (the pinned sha256 still protects it)", p.ID()))
		}
		if r := p.Rollout; r != nil && len(r.Tiers) == 0 && r.StartPercent == 0 && r.Duration == 0 {
			w = append(w, fmt.Sprintf("%s: rollout reaches no host (no tiers, 0%%, no ramp)", p.ID()))
		}
		for j := range m.Revoked {
			if m.Revoked[j].Matches(p) {
				w = append(w, fmt.Sprintf("%s: listed and revoked; remove the entry once hosts have rolled back", p.ID()))
			}
		}
	}
	kernels := make([]string, 0, len(levels))
	for k := range levels {
		kernels = append(kernels, k)
	}
	sort.Strings(kernels)
	for _, k := range kernels {
		ls := levels[k]
		sort.Ints(ls)
		for i := 1; i < len(ls); i++ {
			if ls[i] != ls[i-1]+1 {
				w = append(w, fmt.Sprintf("kernel %s: levels jump from %d to %d", k, ls[i-1], ls[i]))
			}
		}
	}
	return w
}
