package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/agent/window"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/klp"
	"github.com/klp-agent/klp-agent/klp/klptest"
	"github.com/klp-agent/klp-agent/manifest"
)

const krel = "6.1.0-56-amd64"

// host is one simulated machine: a simulated kernel (new at each boot), a
// real rpm database in a test root and the agent's state dir (both kept
// across boots, like a disk).
type host struct {
	t        testing.TB
	root     string
	stateDir string
	rpmDir   string
	srv      *httptest.Server
	now      time.Time
	boot     int
	kernel   *klptest.Kernel
	agent    *Agent
	patches  map[int]manifest.Patch
	kos      map[int][]byte
	// shapes, if set, change the simulated module of a level (klp_state,
	// replace, callbacks) from the next reboot on.
	shapes map[int]func(*klptest.Module)
	// scanners are the boot guard's, from the next restart on.
	scanners  []health.Scanner
	source    *manifest.Source
	revs      *manifest.RevocationChannel // the revocation channel, at the next restart
	published int
	rec       fakeRecorder
	// windows and killSwitch go to the agent's Deps at the next restart.
	windows    window.Set
	killSwitch string
	// log, if set, is the agent's logger from the next restart on.
	log *zap.Logger
}

// fakeRecorder notes what the agent reports for metrics.
type fakeRecorder struct {
	mu     sync.Mutex
	events []string
}

func (f *fakeRecorder) add(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, s)
}
func (f *fakeRecorder) Applied(ok bool, d time.Duration) { f.add(fmt.Sprintf("applied ok=%v", ok)) }
func (f *fakeRecorder) RolledBack(c state.Cause)         { f.add("rollback " + string(c)) }
func (f *fakeRecorder) Polled(result string, _ time.Time, v uint64) {
	f.add(fmt.Sprintf("poll %s v%d", result, v))
}
func (f *fakeRecorder) ManifestInForce(v uint64, expires, since, at time.Time) {
	f.add(fmt.Sprintf("manifest v%d expires %s since %s age %s", v, expires.UTC().Format(time.RFC3339), since.UTC().Format(time.RFC3339), at.Sub(since)))
}
func (f *fakeRecorder) TrustedRoot(v uint64, expires time.Time) {
	f.add(fmt.Sprintf("root v%d expires %s", v, expires.UTC().Format(time.RFC3339)))
}
func (f *fakeRecorder) HealthEvent(kind string, source health.Source, attributed bool, patch string) {
	f.add(fmt.Sprintf("health %s/%s attributed=%v patch=%s", kind, source, attributed, patch))
}
func (f *fakeRecorder) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.events, "; ")
}

func newHost(t testing.TB, levels ...int) *host {
	h := &host{t: t, root: t.TempDir(), stateDir: t.TempDir(), rpmDir: t.TempDir(),
		now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), patches: map[int]manifest.Patch{}, kos: map[int][]byte{}}
	h.srv = httptest.NewServer(http.FileServer(http.Dir(h.rpmDir)))
	t.Cleanup(h.srv.Close)
	for _, l := range levels {
		name := fmt.Sprintf("klp_cmdline_%d", l)
		ko := rpmtest.Module(t, "livepatch=Y", "vermagic="+krel+" SMP preempt mod_unload modversions ", "name="+name)
		f := rpmtest.Build(t, h.rpmDir, rpmtest.Spec{Family: "cmdline", Module: name, Level: l, KernelRelease: krel, KO: ko})
		sum, size, err := klp.FileSHA256(f)
		if err != nil {
			t.Fatal(err)
		}
		h.patches[l] = manifest.Patch{Kernel: krel, Name: name, Level: l, URL: filepath.Base(f), SHA256: sum, Size: size}
		h.kos[l] = ko
	}
	h.reboot()
	return h
}

// reboot starts a new boot: an empty kernel and a new agent process.
func (h *host) reboot() {
	h.boot++
	h.kernel = klptest.New()
	for l, p := range h.patches {
		m := klptest.Module{Name: p.Name, Livepatch: true, Replace: true, Funcs: map[string][]string{"vmlinux": {"cmdline_proc_show"}}}
		if f := h.shapes[l]; f != nil {
			f(&m)
		}
		h.kernel.AddFile(filepath.Join(h.root, "usr/lib/klp-agent/livepatches", krel, p.Name+".ko"), m)
		h.kernel.AddModule(h.kos[l], m)
	}
	h.restart()
}

// restart starts a new agent process in the same boot.
func (h *host) restart() {
	ctrl := &klp.Controller{Sysfs: &klp.Sysfs{FS: h.kernel, Poll: time.Millisecond}, Modules: h.kernel, Log: h.kernel,
		Opts: klp.Options{TransitionTimeout: 300 * time.Millisecond, UnloadTimeout: time.Second}}
	h.agent = New(Deps{
		Now:         func() time.Time { return h.now },
		Store:       &state.Store{Dir: h.stateDir, Now: func() time.Time { return h.now }},
		Source:      h.source,
		Revocations: h.revs,
		Host:        manifest.Host{ID: "host-1", Kernel: krel},
		Installer:   &klp.Installer{RPM: &klp.RPM{Runner: klp.ExecRunner{}, Root: h.root}, Controller: ctrl, Root: h.root},
		Soak:        30 * time.Minute,
		BootID:      func() (string, error) { return fmt.Sprintf("boot-%d", h.boot), nil },
		Scanners:    h.scanners,
		Recorder:    &h.rec,
		Windows:     h.windows,
		KillSwitch:  h.killSwitch,
		Log:         h.log,
	})
	if err := h.agent.Start(context.Background()); err != nil {
		h.t.Fatalf("start (boot %d): %v", h.boot, err)
	}
}

func (h *host) manifest(levels []int, revoked ...int) *manifest.Verified {
	m := &manifest.Manifest{Schema: 1, Version: 1, Expires: h.now.Add(24 * time.Hour)}
	for _, l := range levels {
		m.Patches = append(m.Patches, h.patches[l])
	}
	for _, l := range revoked {
		m.Revoked = append(m.Revoked, manifest.Revoked{Name: h.patches[l].Name, Level: l, Reason: "bad"})
	}
	return &manifest.Verified{Manifest: m, URL: h.srv.URL + "/manifest.json"}
}

func (h *host) converge(levels []int, revoked ...int) error {
	return h.agent.Converge(context.Background(), h.manifest(levels, revoked...))
}

// expect checks the kernel and the recorded state agree on the level.
func (h *host) expect(phase state.Phase, level int) {
	h.t.Helper()
	k := h.agent.State().Kernels[krel]
	served := h.kernel.Patched("cmdline_proc_show")
	want := ""
	if level > 0 {
		want = h.patches[level].Name
	}
	cur := 0
	if k.Current != nil {
		cur = k.Current.Level
	}
	if k.Phase != phase || cur != level || served != want {
		h.t.Fatalf("phase %s, recorded level %d, kernel serves %q; want %s, level %d", k.Phase, cur, served, phase, level)
	}
	// What is on disk must say the same.
	st, err := (&state.Store{Dir: h.stateDir}).Load()
	if err != nil || st.Kernels[krel].Phase != phase {
		h.t.Fatalf("state file: %v %v", st, err)
	}
}

func (h *host) soak() {
	h.t.Helper()
	h.now = h.now.Add(31 * time.Minute)
	if err := h.agent.Tick(); err != nil {
		h.t.Fatal(err)
	}
}

func TestApplySoakUpgradeRevoke(t *testing.T) {
	h := newHost(t, 1, 2, 3)
	h.expect(state.PhaseNone, 0)
	if err := h.converge([]int{1}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 1)
	// One change at a time: a newer level waits for the soak.
	if err := h.converge([]int{1, 2}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 1)
	h.soak()
	h.expect(state.PhaseGood, 1)
	if err := h.converge([]int{1, 2}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 2)
	h.soak()
	// Level 2 revoked: back to 1 (still patched throughout), 2 blocked.
	if err := h.converge([]int{1, 2}, 2); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseGood, 1)
	k := h.agent.State().Kernels[krel]
	if !k.IsBlocked(h.patches[2].Name, 2, h.patches[2].SHA256) {
		t.Fatal("revoked level not blocked")
	}
	// Even if the revocation is lifted, this host never takes 2 again, but 3 is fine.
	if err := h.converge([]int{1, 2}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseGood, 1)
	if err := h.converge([]int{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 3)
	if got, want := h.rec.String(), "applied ok=true; applied ok=true; rollback revoked; applied ok=true"; got != want {
		t.Fatalf("recorded %q, want %q", got, want)
	}
}

func TestHealthRollbackToPreviousGoodAndToNone(t *testing.T) {
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	h.converge([]int{1, 2})
	if err := h.agent.Rollback(context.Background(), state.CauseHealth, "oops attributed to klp_cmdline_2", []string{"BUG: kernel NULL pointer dereference"}, true); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseGood, 1)
	// Level 1 also goes bad: nothing older is good, so no patch at all.
	if err := h.agent.Rollback(context.Background(), state.CauseOperator, "operator", nil, true); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseNone, 0)
	if got := h.rec.String(); !strings.HasSuffix(got, "rollback health; rollback operator") {
		t.Fatalf("recorded %q: want a health then an operator rollback", got)
	}
	if loaded := h.kernel.Loaded(); len(loaded) != 0 {
		t.Fatalf("modules still loaded: %v", loaded)
	}
	if err := h.converge([]int{1, 2}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseNone, 0)
}

func TestRebootReappliesOfflineAndRestartDoesNothing(t *testing.T) {
	h := newHost(t, 1)
	h.converge([]int{1})
	h.soak()
	loads := len(h.kernel.Loads)
	h.agent.Stop()
	h.restart() // same boot: the kernel still has it
	h.expect(state.PhaseGood, 1)
	if len(h.kernel.Loads) != loads {
		t.Fatal("a restart in the same boot loaded the module again")
	}
	h.srv.Close() // no network from here on
	h.agent.Stop()
	h.reboot()
	h.expect(state.PhaseGood, 1)
	if len(h.kernel.Loads) != 1 {
		t.Fatalf("after reboot: %d loads, want the good level re-applied once", len(h.kernel.Loads))
	}
}

func TestRebootAfterCrashWhileSoakingBlocks(t *testing.T) {
	// A crash record from the boot guard's scanners: its source, path and
	// cause go into the block's evidence and the metrics, with whether its
	// trace runs through the patch.
	kdump := health.Crash{Source: health.SourceKdump, Path: "/var/crash/202611251230/dmesg.202611251230",
		Events: []health.Event{{Kind: health.KindBug, Header: "BUG: kernel NULL pointer dereference", Lines: []string{"BUG: kernel NULL pointer dereference"}}}}
	pstore := health.Crash{Source: health.SourcePstore, Path: "/sys/fs/pstore/dmesg-efi-176514000001001", Note: "Panic#1",
		Events: []health.Event{{Kind: health.KindOops, Header: "Oops: 0002 [#1] PREEMPT SMP NOPTI",
			RIP: health.Frame{Func: "klp_fault", Module: "klp_cmdline_2"}, Lines: []string{"Oops: 0002 [#1] PREEMPT SMP NOPTI"}}}}
	for _, tt := range []struct {
		name     string
		clean    bool
		crashes  []health.Crash
		evidence string // in the block's evidence
		recorded string // what the metrics heard
	}{
		{"no clean stop", false, nil, "no clean stop recorded", ""},
		{"kdump dump", true, []health.Crash{kdump}, "kdump /var/crash/202611251230/dmesg.202611251230: bug: BUG: kernel NULL pointer dereference",
			"health bug/kdump attributed=false patch=klp_cmdline_2"},
		{"pstore record", true, []health.Crash{pstore}, "pstore /sys/fs/pstore/dmesg-efi-176514000001001 (Panic#1): oops: Oops: 0002",
			"health oops/pstore attributed=true patch=klp_cmdline_2"},
		{"a record with no report", true, []health.Crash{{Source: health.SourcePstore, Path: "/sys/fs/pstore/dmesg-ramoops-0"}},
			"pstore /sys/fs/pstore/dmesg-ramoops-0: no kernel report found in it", "health unknown/pstore attributed=false patch=klp_cmdline_2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHost(t, 1, 2)
			h.converge([]int{1})
			h.soak()
			h.converge([]int{1, 2})
			if tt.clean {
				h.agent.Stop()
			}
			h.scanners = []health.Scanner{fakeScanner(tt.crashes)}
			h.reboot()
			h.expect(state.PhaseGood, 1)
			k := h.agent.State().Kernels[krel]
			if !k.IsBlocked(h.patches[2].Name, 2, h.patches[2].SHA256) {
				t.Fatal("the patch live at the crash is not blocked")
			}
			if ev := strings.Join(k.Blocked[0].Evidence, "\n"); !strings.Contains(ev, tt.evidence) {
				t.Fatalf("evidence %q does not say %q", ev, tt.evidence)
			}
			rec := h.rec.String()
			if !strings.HasSuffix(rec, "rollback boot-crash") || (tt.recorded != "") != strings.Contains(rec, "health ") ||
				!strings.Contains(rec, tt.recorded) {
				t.Fatalf("recorded %q, want %q", rec, tt.recorded)
			}
		})
	}
}

// fakeScanner finds the same crashes whatever the time.
type fakeScanner []health.Crash

func (f fakeScanner) Source() health.Source { return health.SourcePstore }
func (f fakeScanner) CrashesSince(time.Time) ([]health.Crash, error) {
	return f, nil
}

// A pstore record (here a sample of the real kernel's log in ramoops'
// form) written while level 2 soaked blocks it after the reboot, naming
// source, path and cause; the record stays (the agent deletes nothing) and
// is not counted again against level 3, applied after it was written.
func TestPstoreRecordBlocksOnce(t *testing.T) {
	h := newHost(t, 1, 2, 3)
	h.converge([]int{1})
	h.soak()
	h.converge([]int{1, 2})
	h.agent.Stop() // a clean stop: only the record can say it crashed
	dir := t.TempDir()
	from := "../health/testdata/pstore/ramoops-oops-gpf-6.1/pstore"
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(from, e.Name()))
		p := filepath.Join(dir, e.Name())
		os.WriteFile(p, b, 0o444)
		os.Chtimes(p, h.now.Add(time.Minute), h.now.Add(time.Minute))
	}
	h.scanners = []health.Scanner{health.PstoreScanner{Dir: dir, OwnerUID: os.Getuid()}}
	h.now = h.now.Add(5 * time.Minute)
	h.reboot()
	h.expect(state.PhaseGood, 1)
	k := h.agent.State().Kernels[krel]
	if !k.IsBlocked(h.patches[2].Name, 2, h.patches[2].SHA256) {
		t.Fatal("the patch live at the crash is not blocked")
	}
	want := "pstore " + filepath.Join(dir, "dmesg-ramoops-0") + " (Oops#1, 3 parts): oops: general protection fault"
	if ev := strings.Join(k.Blocked[0].Evidence, "\n"); !strings.Contains(ev, want) || !strings.Contains(ev, "RIP: 0010:klp_crash_gpf+0x33/0x52 [klp_crash]") {
		t.Fatalf("evidence %q does not say %q and the RIP", ev, want)
	}
	const counted = "health oops/pstore attributed=false patch=klp_cmdline_2"
	if rec := h.rec.String(); strings.Count(rec, counted) != 1 {
		t.Fatalf("recorded %q", rec)
	}
	h.converge([]int{1, 3})
	h.agent.Stop()
	h.now = h.now.Add(5 * time.Minute)
	h.reboot()
	h.expect(state.PhaseSoaking, 3)
	if rec := h.rec.String(); strings.Count(rec, "/pstore") != 1 {
		t.Fatalf("the record was counted again: %q", rec)
	}
	if left, _ := os.ReadDir(dir); len(left) != len(ents) {
		t.Fatalf("%d of %d records left", len(left), len(ents))
	}
}

func TestCleanRebootWhileSoakingKeepsSoaking(t *testing.T) {
	h := newHost(t, 1)
	h.converge([]int{1})
	until := h.agent.State().Kernels[krel].SoakUntil
	h.agent.Stop()
	h.now = h.now.Add(5 * time.Minute)
	h.reboot()
	h.expect(state.PhaseSoaking, 1)
	if got := h.agent.State().Kernels[krel].SoakUntil; !got.Equal(until) {
		t.Fatalf("soak restarted: until %v, was %v", got, until)
	}
}

func TestDigestMismatchAppliesNothing(t *testing.T) {
	h := newHost(t, 1)
	m := h.manifest([]int{1})
	m.Patches[0].SHA256 = strings.Repeat("0", 64)
	err := h.agent.Converge(context.Background(), m)
	if !errors.Is(err, klp.ErrDigest) {
		t.Fatalf("err = %v, want ErrDigest", err)
	}
	h.expect(state.PhaseNone, 0)
	ents, _ := os.ReadDir(filepath.Join(h.stateDir, "rpms"))
	if len(ents) != 0 {
		t.Fatalf("a rejected download was kept: %v", ents)
	}
}

func TestStalledApplyIsRetriedNotBlocked(t *testing.T) {
	h := newHost(t, 1, 2)
	h.converge([]int{1})
	h.soak()
	h.kernel.SetTask(klptest.Task{PID: 77, Comm: "stuck", Blocking: true})
	err := h.converge([]int{1, 2})
	if !errors.Is(err, klp.ErrStalled) {
		t.Fatalf("err = %v, want ErrStalled", err)
	}
	h.expect(state.PhaseGood, 1)
	if h.agent.State().Kernels[krel].IsBlocked(h.patches[2].Name, 2, h.patches[2].SHA256) {
		t.Fatal("a stall is not a regression: the patch must not be blocked")
	}
	h.kernel.SetTask(klptest.Task{PID: 77, Comm: "stuck"}) // the task moved on
	if err := h.converge([]int{1, 2}); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseSoaking, 2)
}

// A dump a local user planted (not root's alone) does not block the
// soaking patch after a reboot; one kdump-tools wrote does.
func TestPlantedDumpDoesNotBlock(t *testing.T) {
	for _, planted := range []bool{true, false} {
		t.Run(fmt.Sprintf("planted=%v", planted), func(t *testing.T) {
			h := newHost(t, 1, 2)
			h.converge([]int{1})
			h.soak()
			h.converge([]int{1, 2})
			h.agent.Stop() // a clean stop: only a dump can say it crashed
			crash := t.TempDir()
			os.Chmod(crash, 0o1777)
			stamp := h.now.Add(time.Minute).UTC().Format("200601021504")
			dir := filepath.Join(crash, stamp)
			os.Mkdir(dir, 0o755)
			oops, _ := os.ReadFile("../health/testdata/oops-klp.txt")
			var dmesg strings.Builder
			for i, l := range strings.Split(strings.TrimRight(string(oops), "\n"), "\n") {
				fmt.Fprintf(&dmesg, "[  100.%06d] %s\n", i, l)
			}
			os.WriteFile(filepath.Join(dir, "dmesg."+stamp), []byte(dmesg.String()), 0o644)
			if planted {
				os.Chmod(dir, 0o777) // any user could have written it
			}
			h.scanners = []health.Scanner{health.KdumpScanner{Dir: crash, OwnerUID: os.Getuid(), Location: time.UTC, Settle: time.Nanosecond}}
			h.reboot()
			k := h.agent.State().Kernels[krel]
			if blocked := k.IsBlocked(h.patches[2].Name, 2, h.patches[2].SHA256); blocked == planted {
				t.Fatalf("planted=%v: level 2 blocked=%v (%+v)", planted, blocked, k.Blocked)
			}
			if planted {
				h.expect(state.PhaseSoaking, 2)
			} else {
				h.expect(state.PhaseGood, 1)
			}
		})
	}
}

// A download's .part file is created afresh: a crashed download's leftover
// is replaced, and a symlink planted there is unlinked, not written
// through (root would copy RPM bytes over its target, or create it).
func TestDownloadPartNotFollowed(t *testing.T) {
	for _, tt := range []struct {
		name           string
		link, dangling bool
	}{
		{"stale file", false, false},
		{"symlink", true, false},
		{"dangling symlink", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHost(t, 1)
			p := h.patches[1]
			rec := state.PatchRecord{Name: p.Name, Level: p.Level, SHA256: p.SHA256, Size: p.Size, URL: h.srv.URL + "/" + p.URL}
			dst, err := h.agent.d.Store.RPMPath(&rec)
			if err != nil {
				t.Fatal(err)
			}
			victim := filepath.Join(t.TempDir(), "victim")
			if !tt.dangling {
				os.WriteFile(victim, []byte("precious"), 0o644)
			}
			os.MkdirAll(filepath.Dir(dst), 0o700)
			if tt.link {
				err = os.Symlink(victim, dst+".part")
			} else {
				err = os.WriteFile(dst+".part", []byte("half an RPM"), 0o600)
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := h.agent.Download(context.Background(), rec)
			if err != nil || got != dst {
				t.Fatalf("download: %s %v", got, err)
			}
			if sum, _, err := klp.FileSHA256(dst); err != nil || sum != p.SHA256 {
				t.Fatalf("downloaded copy: %s %v", sum, err)
			}
			b, err := os.ReadFile(victim)
			if tt.dangling != (err != nil) || (!tt.dangling && string(b) != "precious") {
				t.Fatalf("victim after download: %d bytes, %v", len(b), err)
			}
		})
	}
}

// A rollback to no patch whose patch and module are already gone (taken
// out by hand with klp disable, or a rollback resumed after its disable)
// is done, not failed: Disable's ErrNotFound is "nothing left".
func TestRollbackToNoneWhenThePatchIsAlreadyGone(t *testing.T) {
	h := newHost(t, 1)
	h.converge([]int{1})
	ctx := context.Background()
	if err := h.agent.d.Installer.Controller.Disable(ctx, "klp_cmdline_1"); err != nil {
		t.Fatal(err)
	}
	if err := h.agent.Rollback(ctx, state.CauseOperator, "operator", nil, true); err != nil {
		t.Fatal(err)
	}
	h.expect(state.PhaseNone, 0)
}
