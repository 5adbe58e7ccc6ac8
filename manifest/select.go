package manifest

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"time"
)

// Host is what selection needs to know about this machine.
type Host struct {
	ID     string // stable identity, /etc/machine-id by default
	Tier   string // rollout tier from config, e.g. "canary"; may be empty
	Kernel string // exact running release, `uname -r`
}

// Entry is one manifest patch for this host's kernel and the reason it is
// or is not chosen.
type Entry struct {
	Patch    *Patch
	Chosen   bool
	Eligible bool
	Reason   string
	Bucket   float64 // this host's stable position in [0,100) for this patch
	Percent  float64 // share of non-tier hosts the rollout reaches now
	Revoked  *Revoked
	Blocked  bool
	TierHit  bool
	NotUntil time.Time // rollout start, if still in the future
}

// Decision is the selection result for one host.
type Decision struct {
	Host         Host
	Wanted       *Patch  // nil: no patch wanted for this kernel
	Entries      []Entry // this kernel's entries, highest level first
	OtherKernels int     // entries for other kernel releases
}

// Blocked reports whether a patch is blocked on this host (it hurt it
// before). It may be nil.
type Blocked func(*Patch) bool

// Select picks the highest level for the host's exact kernel release that
// the rollout lets this host have, skipping revoked and locally blocked
// entries. It is pure: same inputs, same answer.
func Select(m *Manifest, host Host, now time.Time, blocked Blocked) Decision {
	d := Decision{Host: host, OtherKernels: m.Skipped}
	for i := range m.Patches {
		p := &m.Patches[i]
		if p.Kernel != host.Kernel {
			d.OtherKernels++
			continue
		}
		e := Entry{Patch: p, Bucket: Bucket(host.ID, p)}
		e.Percent, e.TierHit, e.NotUntil = rolloutShare(p.Rollout, host.Tier, now)
		for j := range m.Revoked {
			if m.Revoked[j].Matches(p) {
				e.Revoked = &m.Revoked[j]
				break
			}
		}
		e.Blocked = blocked != nil && blocked(p)
		switch {
		case e.Revoked != nil:
			e.Reason = "revoked"
			if e.Revoked.Reason != "" {
				e.Reason += ": " + e.Revoked.Reason
			}
		case e.Blocked:
			e.Reason = "blocked on this host (it regressed here before)"
		case !e.NotUntil.IsZero():
			e.Reason = "rollout starts " + e.NotUntil.UTC().Format(time.RFC3339)
		case e.TierHit:
			e.Eligible, e.Reason = true, fmt.Sprintf("tier %q is in the rollout", host.Tier)
		case e.Bucket < e.Percent:
			e.Eligible, e.Reason = true, fmt.Sprintf("host bucket %.2f < rollout %.2f%%", e.Bucket, e.Percent)
		default:
			e.Reason = fmt.Sprintf("host bucket %.2f >= rollout %.2f%%", e.Bucket, e.Percent)
		}
		d.Entries = append(d.Entries, e)
	}
	slices.SortStableFunc(d.Entries, func(a, b Entry) int { return b.Patch.Level - a.Patch.Level })
	for i := range d.Entries {
		e := &d.Entries[i]
		if !e.Eligible {
			continue
		}
		if d.Wanted == nil {
			d.Wanted, e.Chosen = e.Patch, true
			e.Reason = "chosen: highest eligible level (" + e.Reason + ")"
		} else {
			e.Reason = "superseded by level " + strconv.Itoa(d.Wanted.Level) + " (" + e.Reason + ")"
		}
	}
	return d
}

// rolloutShare returns the percentage of hosts the rollout reaches now,
// whether host's tier is listed (and started), and the start time when it
// is still in the future.
func rolloutShare(r *Rollout, tier string, now time.Time) (percent float64, tierHit bool, notUntil time.Time) {
	if r == nil {
		return 100, false, time.Time{}
	}
	if !r.Start.IsZero() && now.Before(r.Start) {
		return 0, false, r.Start
	}
	tierHit = tier != "" && slices.Contains(r.Tiers, tier)
	percent = r.StartPercent
	if d := time.Duration(r.Duration); d > 0 {
		elapsed := time.Duration(0)
		if !r.Start.IsZero() {
			elapsed = now.Sub(r.Start)
		} else {
			elapsed = d // no start: the ramp is already complete
		}
		percent += (100 - r.StartPercent) * float64(elapsed) / float64(d)
	}
	return min(percent, 100), tierHit, time.Time{}
}

// Bucket places a host in [0,100) for one patch, stably: the same host and
// patch always land in the same place, and different patches shuffle the
// fleet so the same hosts are not always first.
func Bucket(hostID string, p *Patch) float64 {
	h := sha256.New()
	fmt.Fprintf(h, "klp-agent rollout\x00%s\x00%s\x00%s\x00%d", hostID, p.Kernel, p.Name, p.Level)
	v := binary.BigEndian.Uint64(h.Sum(nil)[:8])
	return float64(v>>11) / float64(1<<53) * 100
}

// ResolveURL makes a patch URL absolute against the manifest's URL, so a
// manifest can be moved with its RPMs to any web server.
func ResolveURL(manifestURL string, p *Patch) (string, error) {
	base, err := url.Parse(manifestURL)
	if err != nil {
		return "", fmt.Errorf("manifest url %q: %w", redact(manifestURL), redactErr(err))
	}
	ref, err := url.Parse(p.URL)
	if err != nil {
		return "", fmt.Errorf("%s: url %q: %w", p.ID(), p.URL, err)
	}
	u := base.ResolveReference(ref)
	// A manifest on a file system may name files beside it or http(s)
	// URLs; one served over http(s) only http(s) URLs, never a local file.
	switch {
	case u.Scheme == "http" || u.Scheme == "https":
	case u.Scheme == "file" && base.Scheme == "file":
		if _, err := localPath(u); err != nil {
			return "", fmt.Errorf("%s: %w", p.ID(), err)
		}
	default:
		return "", fmt.Errorf("%s: resolved url %q has unsupported scheme", p.ID(), redact(u.String()))
	}
	return u.String(), nil
}
