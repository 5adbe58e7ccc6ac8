package klp_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/klp"
)

// noInstall runs rpm's queries for real and refuses rpm -U: Apply stops
// right after its verify step, whose time it reports.
type noInstall struct{ klp.ExecRunner }

func (r noInstall) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if slices.Contains(args, "-U") {
		return nil, errFakeInstall
	}
	return r.ExecRunner.Run(ctx, name, args...)
}

// BenchmarkApplyVerify is the apply's whole verify step as the real-kernel
// bench times it (ApplyTiming.Verify): the checks of BenchmarkVerifyFile
// and rpm -q of the package name, against a real rpm database holding the
// level below, for a few-KiB gzip RPM like the e2e ones.
func BenchmarkApplyVerify(b *testing.B) {
	root := b.TempDir()
	dir := b.TempDir()
	in := &klp.Installer{RPM: &klp.RPM{Runner: klp.ExecRunner{}, Root: root}, Root: root}
	old := rpmtest.Build(b, dir, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_1", Level: 1, KernelRelease: krel, KO: goodKO(b, "klp_cmdline_1", krel)})
	if err := in.RPM.Install(context.Background(), old); err != nil {
		b.Fatal(err)
	}
	file := rpmtest.Build(b, dir, rpmtest.Spec{Family: "cmdline", Module: "klp_cmdline_2", Level: 2, KernelRelease: krel, KO: goodKO(b, "klp_cmdline_2", krel)})
	info, err := klp.InspectRPM(file)
	if err != nil {
		b.Fatal(err)
	}
	want := klp.Want{KernelRelease: krel, Name: "klp_cmdline_2", Level: 2, SHA256: info.SHA256, Size: info.Size}
	in.RPM.Runner = noInstall{}
	var total float64
	for b.Loop() {
		res, err := in.Apply(context.Background(), file, want)
		if !errors.Is(err, errFakeInstall) || res == nil {
			b.Fatalf("apply: %v", err)
		}
		total += float64(res.Timing.Verify.Microseconds())
	}
	b.ReportMetric(total/float64(b.N)/1000, "verify-ms/op")
}
