package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/klp-agent/klp-agent/health"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// sample is a fixed sequence of what an agent reports in a day. The Go
// version is fixed and durations are exact, so the golden file is stable.
func sample() *Metrics {
	m := New("0.1.0", "go1.26")
	m.Polled("ok", t0, 7)
	m.ManifestInForce(7, t0.Add(10*24*time.Hour), t0.Add(-2*24*time.Hour), t0)
	m.TrustedRoot(3, t0.Add(365*24*time.Hour))
	m.SetPatch("6.1.0-56-amd64", "klp_cmdline_2", 2, "soaking")
	m.Applied(true, 1500*time.Millisecond)
	m.Applied(false, 0)
	m.HealthEvent("oops", health.SourceKmsg, true, "klp_cmdline_2")
	m.HealthEvent("oops", health.SourceNetconsole, false, "klp_cmdline_2")
	m.HealthEvent("warning", health.SourceTaint, false, "klp_cmdline_2")
	m.RolledBack("health")
	m.RolledBack("cosmic rays")
	m.SetPatch("6.1.0-56-amd64", "klp_cmdline_1", 1, "good")
	m.SetBlocked(1)
	m.SetControls(true, 3, false)
	m.Polled("error", t0.Add(time.Minute), 0)
	m.SetCheck(1, 2, t0.Add(time.Minute))
	return m
}

func TestTextfileGolden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "klp-agent.prom")
	if err := sample().WriteTextfile(path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "metrics.golden.prom")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 creates it)", err)
	}
	if string(got) != string(want) {
		t.Fatalf("textfile differs from %s (UPDATE_GOLDEN=1 regenerates it):\n%s", golden, got)
	}
}

func TestTextfileReplacedAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "klp-agent.prom")
	m := New("0.1.0", "go1.26")
	m.SetPatch("6.1.0-56-amd64", "klp_a", 1, "soaking")
	if err := m.WriteTextfile(path); err != nil {
		t.Fatal(err)
	}
	ino := inode(t, path)
	m.SetPatch("6.1.0-56-amd64", "klp_b", 2, "good")
	if err := m.WriteTextfile(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `patch="klp_b"`) || strings.Contains(string(b), `state="soaking"`) {
		t.Fatalf("second write not in place:\n%s", b)
	}
	// A rename, not an in-place rewrite: node_exporter holding the old
	// file open keeps reading a whole old file.
	if inode(t, path) == ino {
		t.Error("the file was rewritten in place")
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries after two writes (temp files left?)", len(ents))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v: node_exporter must read it", fi.Mode())
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino // the agent is Linux-only
}

func TestTextfileErrorNamesPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing-dir", "klp-agent.prom")
	err := New("0.1.0", "go1.26").WriteTextfile(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v does not name %s", err, path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v does not wrap the cause", err)
	}
}

func TestMetricSemantics(t *testing.T) {
	m := sample()
	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"unknown rollback reason counts as other", testutil.ToFloat64(m.rollbacks.WithLabelValues("other")), 1},
		{"a known reason counts as itself", testutil.ToFloat64(m.rollbacks.WithLabelValues("health")), 1},
		{"every reason exists at 0 for increase()", float64(testutil.CollectAndCount(m.rollbacks)), 6},
		{"the previous patch series is gone", float64(testutil.CollectAndCount(m.patchInfo)), 1},
		{"crash budget counts the oops", testutil.ToFloat64(m.crashes.WithLabelValues("klp_cmdline_2", "kmsg")), 1},
		{"the netconsole oops is counted apart", testutil.ToFloat64(m.crashes.WithLabelValues("klp_cmdline_2", "netconsole")), 1},
		{"the current patch's crash counter exists at 0", testutil.ToFloat64(m.crashes.WithLabelValues("klp_cmdline_1", "pstore")), 0},
		{"a warning is not a crash; series for each crash source of both patches", float64(testutil.CollectAndCount(m.crashes)), 10},
		{"a failed poll keeps the last good one", testutil.ToFloat64(m.lastOK), float64(t0.Unix())},
		{"and the manifest version", testutil.ToFloat64(m.manifestVer), 7},
		{"failed applies are not timed", float64(testutil.CollectAndCount(m.applyDuration)), 1},
		{"the applied level follows the patch", testutil.ToFloat64(m.appliedLevel), 1},
		{"the wanted level", testutil.ToFloat64(m.wantedLevel.WithLabelValues()), 2},
		{"the check code", testutil.ToFloat64(m.checkCode.WithLabelValues()), 1},
		{"the refresh time", testutil.ToFloat64(m.exported.WithLabelValues()), float64(t0.Add(time.Minute).Unix())},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestSetPatchReplaces(t *testing.T) {
	m := New("0.1.0", "go1.26")
	if n := testutil.CollectAndCount(m.patchInfo); n != 0 {
		t.Fatalf("%d patch_info series before SetPatch", n)
	}
	steps := []struct {
		kernel, patch string
		level         int
		state         string
		want          string
	}{
		{"6.1.0-56-amd64", "", 0, "none", `klp_agent_patch_info{kernel="6.1.0-56-amd64",level="0",patch="",state="none"} 1`},
		{"6.1.0-56-amd64", "klp_a", 3, "downloading", `klp_agent_patch_info{kernel="6.1.0-56-amd64",level="3",patch="klp_a",state="downloading"} 1`},
		{"6.1.0-56-amd64", "klp_a", 3, "soaking", `klp_agent_patch_info{kernel="6.1.0-56-amd64",level="3",patch="klp_a",state="soaking"} 1`},
		{"6.1.0-56-amd64", "klp_a", 3, "rolling-back", `klp_agent_patch_info{kernel="6.1.0-56-amd64",level="3",patch="klp_a",state="rolling-back"} 1`},
		{"6.1.0-56-amd64", "bad\xffname", 1, "good", "klp_agent_patch_info{kernel=\"6.1.0-56-amd64\",level=\"1\",patch=\"bad\uFFFDname\",state=\"good\"} 1"},
	}
	for _, s := range steps {
		m.SetPatch(s.kernel, s.patch, s.level, s.state)
		want := "# HELP klp_agent_patch_info The livepatch this host runs for its kernel (1); patch \"\" when none.\n" +
			"# TYPE klp_agent_patch_info gauge\n" + s.want + "\n"
		if err := testutil.CollectAndCompare(m.patchInfo, strings.NewReader(want)); err != nil {
			t.Errorf("after SetPatch(%q, %d, %q): %v", s.patch, s.level, s.state, err)
		}
	}
}

// A crash-class report, or any crash record found after a reboot, counts
// as the patch's crash under its source: kind and source are separate
// labels, and an unknown source is "other".
func TestHealthEventCrashes(t *testing.T) {
	tests := []struct {
		kind   string
		source health.Source
		patch  string
		crash  bool
		label  string // the source label
	}{
		{"oops", health.SourceKmsg, "klp_a", true, "kmsg"},
		{"bug", health.SourceNetconsole, "klp_a", true, "netconsole"},
		{"kernel-bug", health.SourceKmsg, "klp_a", true, "kmsg"},
		{"panic", health.SourceNetconsole, "klp_a", true, "netconsole"},
		{"hard-lockup", health.SourceKmsg, "klp_a", true, "kmsg"},
		{"oops", health.SourceTaint, "klp_a", true, "taint"},
		{"oops", health.SourcePstore, "klp_a", true, "pstore"},
		{"unknown", health.SourceKdump, "klp_a", true, "kdump"}, // a dump holding no report it recognises
		{"warning", health.SourcePstore, "klp_a", true, "pstore"},
		{"oops", health.Source("made-up"), "klp_a", true, "other"},
		{"oops", health.SourceKmsg, "", false, "kmsg"}, // no patch applied: not a patch's crash
		{"warning", health.SourceKmsg, "klp_a", false, "kmsg"},
		{"soft-lockup", health.SourceKmsg, "klp_a", false, "kmsg"},
		{"hung-task", health.SourceKmsg, "klp_a", false, "kmsg"},
		{"rcu-stall", health.SourceKmsg, "klp_a", false, "kmsg"},
		{"command", health.SourceCommand, "klp_a", false, "command"},
		{"warning", health.SourceTaint, "klp_a", false, "taint"},
	}
	for _, tt := range tests {
		m := New("0.1.0", "go1.26")
		m.HealthEvent(tt.kind, tt.source, true, tt.patch)
		if got := testutil.ToFloat64(m.healthEvents.WithLabelValues(tt.kind, tt.label, "true")); got != 1 {
			t.Errorf("%s/%s: health event counted %v", tt.kind, tt.source, got)
		}
		want := 0
		if tt.crash {
			want = 1
			if got := testutil.ToFloat64(m.crashes.WithLabelValues(tt.patch, tt.label)); got != 1 {
				t.Errorf("%s/%s: crashes{source=%q} = %v", tt.kind, tt.source, tt.label, got)
			}
		}
		if n := testutil.CollectAndCount(m.crashes); n != want {
			t.Errorf("%s/%s patch %q: %d crash series, want %d", tt.kind, tt.source, tt.patch, n, want)
		}
	}
}

func TestPolled(t *testing.T) {
	m := New("0.1.0", "go1.26")
	m.Polled("ok", t0, 7)
	m.Polled("not-modified", t0.Add(time.Minute), 0) // no version: keep 7
	m.Polled("weird", t0.Add(2*time.Minute), 9)      // unknown: an error
	tests := []struct {
		name      string
		got, want float64
	}{
		{"not-modified is a success", testutil.ToFloat64(m.lastOK), float64(t0.Add(time.Minute).Unix())},
		{"version 0 keeps the last", testutil.ToFloat64(m.manifestVer), 7},
		{"unknown result is an error", testutil.ToFloat64(m.lastPoll.WithLabelValues("error")), float64(t0.Add(2 * time.Minute).Unix())},
		{"results stay a closed set", float64(testutil.CollectAndCount(m.lastPoll)), 3},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

// The manifest in force: its expiry, when its version was first accepted
// and its age at the poll; version 0 (none in force) changes nothing.
func TestManifestInForce(t *testing.T) {
	m := New("0.1.0", "go1.26")
	m.ManifestInForce(7, t0.Add(30*24*time.Hour), t0.Add(-4*24*time.Hour), t0)
	m.ManifestInForce(0, time.Time{}, time.Time{}, t0.Add(time.Hour))
	for _, tt := range []struct {
		name      string
		got, want float64
	}{
		{"expiry", testutil.ToFloat64(m.manifestExp), float64(t0.Add(30 * 24 * time.Hour).Unix())},
		{"accepted", testutil.ToFloat64(m.manifestSince), float64(t0.Add(-4 * 24 * time.Hour).Unix())},
		{"age", testutil.ToFloat64(m.manifestAge), 4 * 24 * 3600},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestLint(t *testing.T) {
	m := sample()
	for _, c := range []prometheus.Collector{m.patchInfo, m.applies, m.rollbacks, m.healthEvents, m.crashes,
		m.blocked, m.manifestVer, m.lastPoll, m.lastOK, m.applyDuration} {
		problems, err := testutil.CollectAndLint(c)
		if err != nil || len(problems) > 0 {
			t.Errorf("promlint: %v %+v", err, problems)
		}
	}
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil || len(problems) > 0 {
		t.Fatalf("promlint (registry): %v %+v", err, problems)
	}
}

func TestServe(t *testing.T) {
	m := sample()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := m.Serve(ctx, "127.0.0.1:0", 0o660, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK ||
		!strings.Contains(string(b), `klp_agent_patch_info{kernel="6.1.0-56-amd64",level="1",patch="klp_cmdline_1",state="good"} 1`) {
		t.Fatalf("served %s:\n%s", resp.Status, b)
	}
	cancel()
	// Shutdown is asynchronous: wait for the listener to go, boundedly.
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr.String(), time.Second)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepts after ctx ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServeLoopbackOnly(t *testing.T) {
	tests := []struct {
		addr    string
		refused bool // ErrNotLoopback, before any socket is opened
	}{
		{"0.0.0.0:9797", true},
		{":9797", true},
		{"[::]:9797", true},
		{"10.1.2.3:9797", true},
		{"192.168.1.1:9797", true},
		{"example.com:9797", true},
		{"127.0.0.1:0", false},
		{"127.0.0.2:0", false},
		{"localhost:0", false},
		{"LOCALHOST:0", false},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := New("0.1.0", "go1.26")
	for _, tt := range tests {
		a, err := m.Serve(ctx, tt.addr, 0o660, nil)
		if tt.refused {
			if !errors.Is(err, ErrNotLoopback) {
				t.Errorf("%s: %v, want ErrNotLoopback", tt.addr, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.addr, err)
			continue
		}
		if ip := a.(*net.TCPAddr).IP; !ip.IsLoopback() {
			t.Errorf("%s bound %s", tt.addr, a)
		}
	}
	if _, err := m.Serve(ctx, "no-port", 0o660, nil); err == nil || errors.Is(err, ErrNotLoopback) {
		t.Errorf("address without a port: %v", err)
	}
}

// TestConcurrent is for -race: the daemon, health watchers and the HTTP
// handler call in from different goroutines.
func TestConcurrent(t *testing.T) {
	m := New("0.1.0", "go1.26")
	path := filepath.Join(t.TempDir(), "klp-agent.prom")
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				m.SetPatch("6.1.0-56-amd64", "klp_a", g*100+i, "soaking")
				m.Applied(i%2 == 0, time.Duration(i)*time.Millisecond)
				m.RolledBack("health")
				m.HealthEvent("oops", health.SourceKmsg, true, "klp_a")
				m.Polled("ok", t0, uint64(i+1))
				m.SetBlocked(i)
				if i%10 == 0 {
					if err := m.WriteTextfile(path); err != nil {
						t.Error(err)
					}
				}
				if _, err := m.Registry().Gather(); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if n := testutil.CollectAndCount(m.patchInfo); n != 1 {
		t.Fatalf("%d patch_info series after concurrent SetPatch", n)
	}
	if got := testutil.ToFloat64(m.crashes.WithLabelValues("klp_a", "kmsg")); got != 200 {
		t.Fatalf("crashes %v, want 200", got)
	}
}

// unixGet fetches /metrics over the socket at path.
func unixGet(path string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}}
	resp, err := c.Get("http://metrics/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// metrics.listen: unix:PATH serves over a socket with the configured mode
// in a 0755 directory; a stale socket is replaced, anything else at the
// path is refused and left alone.
func TestServeUnix(t *testing.T) {
	old := syscall.Umask(0o077) // the unit's: neither mode may depend on it
	defer syscall.Umask(old)
	for _, tt := range []struct {
		name    string
		plant   func(t *testing.T, path string)
		refused bool
	}{
		{"fresh", nil, false},
		{"stale socket", func(t *testing.T, path string) {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			l.SetUnlinkOnClose(false)
			l.Close()
		}, false},
		{"regular file", func(t *testing.T, path string) { os.WriteFile(path, []byte("keep"), 0o644) }, true},
		{"symlink", func(t *testing.T, path string) { os.Symlink(filepath.Join(t.TempDir(), "x"), path) }, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run", "klp-agent")
			path := filepath.Join(dir, "metrics.sock")
			if tt.plant != nil { // else the directory is created too
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				os.Chmod(dir, 0o755) // past the umask
				tt.plant(t, path)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := sample().Serve(ctx, UnixPrefix+path, 0o640, nil)
			if tt.refused {
				if !errors.Is(err, ErrNotSocket) {
					t.Fatalf("serve over %s: %v", tt.name, err)
				}
				if _, err := os.Lstat(path); err != nil {
					t.Fatalf("the %s was removed: %v", tt.name, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Lstat(path)
			if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o640 {
				t.Fatalf("socket: %v %v", fi.Mode(), err)
			}
			if di, err := os.Stat(dir); err != nil || di.Mode().Perm() != 0o755 {
				t.Fatalf("socket dir: %v %v", di.Mode(), err)
			}
			b, err := unixGet(path)
			if err != nil || !strings.Contains(b, "klp_agent_patch_info{") {
				t.Fatalf("served: %v\n%s", err, b)
			}
		})
	}
}

// A port someone else holds is a failure, never a shared listener.
func TestServeTCPPortTaken(t *testing.T) {
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err = sample().Serve(ctx, squatter.Addr().String(), 0o660, nil)
	if err == nil || !strings.Contains(err.Error(), squatter.Addr().String()) {
		t.Fatalf("serve on a taken port: %v", err)
	}
}

// The trusted root's series are absent until a root is known: a keys_dir
// host must not show an expiry of 0 (KLPTrustedRootExpiring would fire).
// Before the daemon first judges its status there is no check code: a
// gauge at 0 would read "up to date".
func TestCheckAbsentUntilSet(t *testing.T) {
	m := New("0.1.0", "go1.26")
	for _, c := range []prometheus.Collector{m.checkCode, m.wantedLevel, m.exported} {
		if n := testutil.CollectAndCount(c); n != 0 {
			t.Errorf("%d series before SetCheck", n)
		}
	}
	m.SetCheck(0, 0, t0)
	if n := testutil.CollectAndCount(m.checkCode); n != 1 {
		t.Errorf("%d check code series after SetCheck", n)
	}
}

func TestTrustedRootAbsentWithoutRoot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "klp-agent.prom")
	m := New("0.1.0", "go1.26")
	if err := m.WriteTextfile(path); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); strings.Contains(string(b), "klp_agent_trusted_root_") {
		t.Fatalf("trusted root series without a root:\n%s", b)
	}
	m.TrustedRoot(2, t0)
	if err := m.WriteTextfile(path); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "klp_agent_trusted_root_version 2\n") {
		t.Fatalf("no trusted root version after TrustedRoot:\n%s", b)
	}
}

// The socket's mode is set when bind creates it, under the unit's umask
// 0077, and never by name afterwards: a symlink swapped in at the path
// right after bind (by a user who can write the socket's directory) does
// not get its target chmod'ed. The old code chmod'ed the path, following
// the symlink and making its target 0640; the process umask is as before.
func TestUnixSocketModeSetAtBind(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	target := filepath.Join(dir, "shadow")
	if err := os.WriteFile(target, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "metrics.sock")
	var bound os.FileMode
	afterBind = func(p string) {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("after bind: %v", err)
			return
		}
		bound = fi.Mode()
		os.Rename(p, p+".moved")
		os.Symlink(target, p)
	}
	defer func() { afterBind = nil }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := sample().Serve(ctx, UnixPrefix+path, 0o640, nil); err != nil {
		t.Fatal(err)
	}
	if bound.Type() != os.ModeSocket || bound.Perm() != 0o640 {
		t.Errorf("socket at bind: %v, want a socket 0640", bound)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the symlink's target was chmod'ed: %v %v", fi.Mode(), err)
	}
	if u := syscall.Umask(0o077); u != 0o077 {
		t.Errorf("process umask %#o after the bind, want 0077", u)
	}
}

// Where unshare(CLONE_FS) is refused, the fallback binds with the process
// umask lowered by the socket's bits alone, and restores it.
func TestUnixSocketBindFallback(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "metrics.sock")
	ln, err := bindOnThread(path, 0o660, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket: %v %v", fi.Mode(), err)
	}
	if u := syscall.Umask(0o077); u != 0o077 {
		t.Errorf("process umask %#o after the bind, want 0077", u)
	}
}

// TestRevocationsInForce: the channel's version shows while a document is
// in force and goes away when none is.
func TestRevocationsInForce(t *testing.T) {
	m := New("0.1.0", "go1.26")
	for _, tt := range []struct {
		set  uint64
		want int // series of klp_agent_revocations_version
	}{{0, 0}, {3, 1}, {4, 1}, {0, 0}} {
		m.RevocationsInForce(tt.set)
		if n := testutil.CollectAndCount(m.revVer); n != tt.want {
			t.Fatalf("after %d: %d series, want %d", tt.set, n, tt.want)
		}
		if tt.want == 1 {
			if got := testutil.ToFloat64(m.revVer.WithLabelValues()); got != float64(tt.set) {
				t.Fatalf("version %v, want %d", got, tt.set)
			}
		}
	}
}
