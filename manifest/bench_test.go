package manifest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// benchManifest has n entries: n/5 kernel releases with five cumulative
// levels each, every level staged like a real rollout.
func benchManifest(n int) *Manifest {
	m := &Manifest{Schema: SchemaVersion, Version: 42, Expires: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < n; i++ {
		krel, level := fmt.Sprintf("6.1.0-%d-amd64", i/5), i%5+1
		m.Patches = append(m.Patches, Patch{Kernel: krel, Name: fmt.Sprintf("klp_cmdline_%d", level), Level: level,
			URL: fmt.Sprintf("rpms/%s/klp-cmdline-%d-1.x86_64.rpm", krel, level), SHA256: fmt.Sprintf("%064x", i), Size: 90000 + int64(i),
			Rollout: &Rollout{Tiers: []string{"canary"}, Start: start.Add(time.Duration(level) * 24 * time.Hour), StartPercent: 1, Duration: Duration(72 * time.Hour)}})
	}
	for i := 0; i < n/100; i++ {
		m.Revoked = append(m.Revoked, Revoked{Name: "klp_cmdline_3", Level: 3, Kernel: fmt.Sprintf("6.1.0-%d-amd64", i*7), Reason: "oops"})
	}
	return m
}

// yamlEntriesAtCap is the most fleet-shaped entries (benchManifest) whose
// YAML payload hosts still parse (MaxYAMLPayload).
func yamlEntriesAtCap(t testing.TB) int {
	n := 10
	for ; ; n += 10 {
		b, err := Marshal(benchManifest(n + 10))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > MaxYAMLPayload {
			return n
		}
	}
}

// BenchmarkVerifySelect is what one poll costs the host once the manifest
// is fetched: signature check, strict parse and validation, selection.
// The curve should be linear in entries; 10k entries within 20 ms with
// the JSON payload `manifest sign` writes. YAML for comparison: up to
// MaxYAMLPayload (the yaml/entries=N row at the cap is the most a host
// spends on one), and over it the cost of the refusal (metric refused=1).
func BenchmarkVerifySelect(b *testing.B) {
	k := newTestKey(b)
	for _, c := range []struct {
		format string
		n      int
	}{{"json", 10}, {"json", 1000}, {"json", 10_000}, {"json", 100_000}, {"yaml", 10}, {"yaml", yamlEntriesAtCap(b)}, {"yaml", 1000}, {"yaml", 10_000}} {
		n := c.n
		marshal := MarshalJSON
		if c.format == "yaml" {
			marshal = Marshal
		}
		payload, err := marshal(benchManifest(n))
		if err != nil {
			b.Fatal(err)
		}
		refused := c.format == "yaml" && len(payload) > MaxYAMLPayload
		env, err := SignPayload(context.Background(), payload, k.signer)
		if err != nil {
			b.Fatal(err)
		}
		trust := Trust{Keys: keyring(k), Threshold: 1, MaxSize: 64 << 20}
		host := Host{ID: "0123456789abcdef", Kernel: fmt.Sprintf("6.1.0-%d-amd64", n/10), Tier: ""}
		now := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
		b.Run(fmt.Sprintf("%s/entries=%d", c.format, n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(env)))
			for b.Loop() {
				v, err := trust.VerifyFor(env, now, nil, host.Kernel)
				if refused {
					if !errors.Is(err, ErrYAMLTooLarge) {
						b.Fatalf("%d-byte YAML payload: %v, want ErrYAMLTooLarge", len(payload), err)
					}
					continue
				}
				if err != nil {
					b.Fatal(err)
				}
				if d := Select(v.Manifest, host, now, nil); d.Wanted == nil {
					b.Fatal("nothing selected")
				}
			}
			if refused {
				b.ReportMetric(1, "refused")
			}
			b.ReportMetric(float64(len(payload)), "payload-bytes")
		})
	}
}

// BenchmarkYAMLAtCap is the YAML parse alone (ParseFor, no signature) on
// payloads of just under MaxYAMLPayload: the fleet-shaped manifest, and
// shapes that pack the most parser work into the bytes (flow mappings of
// one or two keys). It bounds what a signed YAML payload can cost a host;
// the shapes that do not validate are refused after the parse, so their
// cost is paid all the same.
func BenchmarkYAMLAtCap(b *testing.B) {
	fleet, err := Marshal(benchManifest(yamlEntriesAtCap(b)))
	if err != nil {
		b.Fatal(err)
	}
	fill := func(head, item, tail string) []byte {
		buf := []byte(head)
		for len(buf)+len(item)+len(tail) <= MaxYAMLPayload {
			buf = append(buf, item...)
		}
		return append(buf, tail...)
	}
	for _, c := range []struct {
		name    string
		payload []byte
	}{
		{"fleet", fleet},
		{"flow-empty-mappings", fill("schema: 1\npatches: [", "{},", "]\n")},
		{"flow-one-key", fill("schema: 1\npatches: [", "{level: 1},", "]\n")},
		{"block-one-key", fill("schema: 1\npatches:\n", "- level: 1\n", "")},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.payload)))
			for b.Loop() {
				_, _ = ParseFor(c.payload, MaxSize, "6.1.0-1-amd64")
			}
			b.ReportMetric(float64(len(c.payload)), "payload-bytes")
		})
	}
}
