package manifest

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkShardBytes is what one publish costs one host in manifest
// bytes, whole file against its kernel's shard (both signed JSON
// envelopes, the body of the one 200 each host gets per publish), at 10,
// 1,000 and 10,000 entries (benchManifest: five levels per kernel). The
// timed loop is the host's side of a shard poll: verify and select. The
// target is a shard under 4 KB at 10,000 entries (docs/benchmarks.md).
func BenchmarkShardBytes(b *testing.B) {
	k := newTestKey(b)
	trust := Trust{Keys: keyring(k), Threshold: 1, MaxSize: 64 << 20}
	now := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	for _, n := range []int{10, 1000, 10_000} {
		m := benchManifest(n)
		payload, err := MarshalJSON(m)
		if err != nil {
			b.Fatal(err)
		}
		whole, err := SignPayload(context.Background(), payload, k.signer)
		if err != nil {
			b.Fatal(err)
		}
		shards, err := SignShards(context.Background(), m, nil, k.signer)
		if err != nil {
			b.Fatal(err)
		}
		host := Host{ID: "0123456789abcdef", Kernel: fmt.Sprintf("6.1.0-%d-amd64", n/10)}
		var mine []byte
		total, largest := 0, 0
		for _, s := range shards {
			total += len(s.Envelope)
			largest = max(largest, len(s.Envelope))
			if s.Kernel == host.Kernel {
				mine = s.Envelope
			}
		}
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(mine)))
			for b.Loop() {
				v, err := trust.VerifyShard(mine, now, nil, host.Kernel)
				if err != nil {
					b.Fatal(err)
				}
				if d := Select(v.Manifest, host, now, nil); d.Wanted == nil {
					b.Fatal("nothing selected")
				}
			}
			b.ReportMetric(float64(len(whole)), "whole-B/host")
			b.ReportMetric(float64(len(mine)), "shard-B/host")
			b.ReportMetric(float64(largest), "largest-shard-B")
			b.ReportMetric(float64(total), "all-shards-B")
			b.ReportMetric(float64(len(shards)), "shards")
		})
	}
}
