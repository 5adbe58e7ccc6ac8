package fleetsim

import (
	"context"
	"fmt"
	"time"

	"github.com/klp-agent/klp-agent/manifest"
)

// Bytes is what one publish costs the fleet in downloads: the signed
// documents' real sizes as the manifest package writes them (MarshalJSON
// and SignPayload for manifest.json, SignShards for the shards,
// SignRevocations for revocations.json), times the hosts that download
// each. A changed document is one 200 per host; the unchanged polls
// around it (304s) are not counted here.
type Bytes struct {
	Hosts, Entries, Kernels int
	Whole                   int   // manifest.json, which every host downloads
	ShardMean, ShardMax     int   // a host's shard: its kernel's entries
	FleetWhole, FleetShards int64 // across the fleet
	// The guard's revocation: revocations.json revoking one patch.
	Revocations      int
	FleetRevocations int64
}

// PublishBytes sizes a publish of m to hosts spread evenly over m's
// kernels, signed by s.
func PublishBytes(m *manifest.Manifest, hosts int, s *manifest.Signer) (Bytes, error) {
	if hosts < 1 || len(m.Patches) == 0 {
		return Bytes{}, fmt.Errorf("%w: %d hosts, %d entries", ErrParams, hosts, len(m.Patches))
	}
	ctx := context.Background()
	payload, err := manifest.MarshalJSON(m)
	if err != nil {
		return Bytes{}, err
	}
	whole, err := manifest.SignPayload(ctx, payload, s)
	if err != nil {
		return Bytes{}, err
	}
	shards, err := manifest.SignShards(ctx, m, nil, s)
	if err != nil {
		return Bytes{}, err
	}
	b := Bytes{Hosts: hosts, Entries: len(m.Patches), Kernels: len(shards), Whole: len(whole)}
	b.FleetWhole = int64(hosts) * int64(len(whole))
	for i, sh := range shards {
		// hosts/kernels each, the remainder to the first kernels.
		n := hosts / len(shards)
		if i < hosts%len(shards) {
			n++
		}
		b.FleetShards += int64(n) * int64(len(sh.Envelope))
		b.ShardMax = max(b.ShardMax, len(sh.Envelope))
	}
	b.ShardMean = int(b.FleetShards / int64(hosts))
	p := m.Patches[0]
	rev := &manifest.Revocations{Type: manifest.RevocationsType, Version: 1, Expires: m.Expires, SignedAt: m.Expires.Add(-7 * 24 * time.Hour),
		Revoked: []manifest.Revoked{{Name: p.Name, Level: p.Level, Kernel: p.Kernel, SHA256: p.SHA256,
			Reason: "crash budget: KLPPatchCrashBudgetExceeded, 3.2 per 1000 hosts in a day"}}}
	env, err := manifest.SignRevocations(ctx, rev, s)
	if err != nil {
		return Bytes{}, err
	}
	b.Revocations = len(env)
	b.FleetRevocations = int64(hosts) * int64(len(env))
	return b, nil
}

// PollLoad is the steady cost of hosts polling one document every
// interval (the jitter averages out): requests per second at the web
// server, and bytes per day both ways at perPoll bytes a poll (a 304's
// request and answer when the document is unchanged).
func PollLoad(hosts int, interval time.Duration, perPoll int) (perSecond float64, perDay int64) {
	perSecond = float64(hosts) / interval.Seconds()
	return perSecond, int64(perSecond * 86400 * float64(perPoll))
}
