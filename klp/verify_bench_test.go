package klp_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/klp"
)

// paddedKO is a livepatch module grown to size bytes: the real ELF with
// its .modinfo, then filler that compresses about as well as a module's
// code does (about 3:1), so each compressor does real work.
func paddedKO(b *testing.B, name string, size int) []byte {
	b.Helper()
	ko := goodKO(b, name, krel)
	r := rand.New(rand.NewPCG(1, 2))
	out := append([]byte(nil), ko...)
	for len(out) < size {
		out = append(out, "\x00\x00\x48\x89\xe5\x55"[r.IntN(6)], byte(r.IntN(16)))
	}
	return out[:max(size, len(ko))]
}

// BenchmarkVerifyFile is the apply's verify step without rpm: sha256 and
// size of the whole file, the header, the module from the payload (read
// once, decompressed up to the module's end) and its modinfo, for real
// RPMs from rpmbuild with each compressor rpm ships, at a few module
// sizes. b.SetBytes is the RPM's size, so MB/s compares sizes: a flat
// figure across sizes is a cost linear in the payload.
func BenchmarkVerifyFile(b *testing.B) {
	dir := b.TempDir()
	for _, pl := range []struct{ name, payload string }{{"gzip", "w9.gzdio"}, {"xz", "w6.xzdio"}, {"zstd", "w19.zstdio"}} {
		for _, size := range []int{16 << 10, 256 << 10, 4 << 20} {
			var file string
			var want klp.Want
			b.Run(fmt.Sprintf("%s/module=%dKiB", pl.name, size>>10), func(b *testing.B) {
				if file == "" {
					// Built once, and only for the sub-benchmarks -bench selects.
					mod := fmt.Sprintf("klp_bench_%s_%d", pl.name, size>>10)
					file = rpmtest.Build(b, dir, rpmtest.Spec{Family: "bench-" + pl.name + fmt.Sprint(size>>10), Module: mod, Level: 1,
						KernelRelease: krel, KO: paddedKO(b, mod, size), Payload: pl.payload})
					info, err := klp.InspectRPM(file)
					if err != nil {
						b.Fatal(err)
					}
					want = klp.Want{KernelRelease: krel, Name: mod, Level: 1, SHA256: info.SHA256, Size: info.Size}
				}
				b.SetBytes(want.Size)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := klp.VerifyFile(file, want); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
