package cli

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	controlsock "github.com/klp-agent/klp-agent/agent/control"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/testutil/runtest"
	"github.com/klp-agent/klp-agent/internal/testutil/syncbuf"
)

// daemonHost is a configured host (a key, no manifest.url, no health
// sources) with its state dir and status file under the test's dirs.
func daemonHost(t *testing.T, extra ...string) (dir, stateDir, cfg string) {
	t.Helper()
	dir, keys, cfg := hostConfig(t, strings.Join(extra, "")+"health:\n  kmsg: false\n  taint: false\n  kdump_dir: \"\"\nlog:\n  format: console\n")
	run(t, t0, "manifest", "keygen", "--out", filepath.Join(keys, "release"))
	stateDir = filepath.Join(dir, "state")
	os.MkdirAll(filepath.Join(dir, "config.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "config.d", "10-state.yaml"),
		[]byte("paths:\n  state_dir: "+stateDir+"\n  status_file: "+filepath.Join(dir, "status.json")+"\n"), 0o644)
	return dir, stateDir, cfg
}

// startDaemon runs `klp-agent run` in this process until the test ends
// (or stop), and waits for its control socket.
func startDaemon(t *testing.T, cfg, stateDir string) *syncbuf.Buffer {
	t.Helper()
	logs, _ := startDaemonStop(t, cfg, stateDir)
	return logs
}

func startDaemonStop(t *testing.T, cfg, stateDir string) (*syncbuf.Buffer, func() error) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	stop := runtest.Start(t, func(ctx context.Context) error {
		if code := Main([]string{"run", "--config", cfg}, &Env{Stdout: logs, Stderr: logs, Ctx: ctx}); code != 0 {
			t.Errorf("run: exit %d\n%s", code, logs)
		}
		return nil
	})
	sock := state.Layout{Dir: stateDir}.ControlSocketPath()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if fi, err := os.Lstat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return logs, stop
		}
		if time.Now().After(deadline) {
			t.Fatalf("no control socket at %s:\n%s", sock, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Every request to a running daemon reports the daemon's own verdict: 0
// only when it did what was asked, 1 with its reason when it refused or
// failed.
func TestControlsThroughDaemon(t *testing.T) {
	dir, stateDir, cfg := daemonHost(t)
	logs := startDaemon(t, cfg, stateDir)
	by := fmt.Sprintf("the daemon (pid %d) answered: ", os.Getpid())
	for _, tt := range []struct {
		args []string
		code int
		out  string
	}{
		// Nothing applied: the daemon refuses, and the command says so.
		{[]string{"rollback"}, 1, "klp-agent rollback: " + by + "rollback: no patch applied\n"},
		{[]string{"rollback", "--block"}, 1, by + "rollback: no patch applied"},
		{[]string{"hold", "--until", "2027-01-01", "--reason", "change freeze"}, 0,
			"held: no new levels until 2027-01-01T00:00:00Z; health watching and rollbacks go on\n"},
		{[]string{"unblock", "klp_cmdline_3@3"}, 1, by + "control refused: klp_cmdline_3@3 is not blocked for kernel " + testKernel},
		{[]string{"pin", "2"}, 0, "pinned kernel " + testKernel + " at level 2: nothing above it is applied\n"},
		{[]string{"pin", "--clear"}, 0, "pin cleared\n"},
		{[]string{"resume"}, 0, "resumed: new levels may be applied\n"},
		{[]string{"resume"}, 0, "not held\n"},
		{[]string{"poll"}, 1, by + "manifest.url is not set: nothing to poll"},
		{[]string{"reload", "--pid", strconv.Itoa(os.Getpid())}, 0, "configuration reloaded from " + cfg + ", " + filepath.Join(dir, "config.d", "10-state.yaml") + "\n"},
		{[]string{"reload"}, 0, "configuration reloaded from "},
	} {
		out, code := runCode(t, t0, append([]string{tt.args[0], "--config", cfg}, tt.args[1:]...)...)
		if code != tt.code || !strings.Contains(out, tt.out) {
			t.Errorf("%v: exit %d, want %d with %q:\n%s", tt.args, code, tt.code, tt.out, out)
		}
	}
	waitLog(t, logs, "operator rollback failed: rollback: no patch applied")
	// The journal line reads as a sentence: what was done, then who asked.
	waitLog(t, logs, "held: no new levels until 2027-01-01T00:00:00Z; health watching and rollbacks go on; asked by ")
	waitLog(t, logs, "(uid 0): change freeze")

	// A configuration the command reads but the daemon refuses: the
	// daemon's reason, exit 1, the running one kept.
	root2 := t.TempDir()
	writeHostRoot(t, root2, testKernel, "0123456789abcdef0123456789abcdef")
	os.WriteFile(filepath.Join(dir, "config.d", "20-root.yaml"), []byte("paths:\n  root: "+root2+"\n"), 0o644)
	out, code := runCode(t, t0, "reload", "--config", cfg)
	if code != 1 || !strings.Contains(out, by+"reload refused, the daemon keeps its running configuration: paths.root and paths.state_dir change only with a restart") {
		t.Errorf("reload of a configuration the daemon refuses: exit %d\n%s", code, out)
	}
	os.Remove(filepath.Join(dir, "config.d", "20-root.yaml"))
	// One the command cannot read is not sent at all.
	os.WriteFile(filepath.Join(dir, "config.d", "10-typo.yaml"), []byte("health:\n  policy:\n    attributed: [opps]\n"), 0o644)
	out, code = runCode(t, t0, "reload", "--config", cfg)
	if code != 1 || !strings.Contains(out, "not sent to the daemon (it keeps its current one)") || !strings.Contains(out, "opps") {
		t.Errorf("reload of an invalid configuration: exit %d\n%s", code, out)
	}
	if n := strings.Count(logs.String(), "configuration reloaded"); n != 2 {
		t.Errorf("%d reloads logged, want the 2 asked for:\n%s", n, logs)
	}
}

// reload --pid of a process that is not the daemon is refused, and that
// process is not signalled: with a daemon running and without one.
func TestReloadRefusesAnotherPID(t *testing.T) {
	_, stateDir, cfg := daemonHost(t)
	sleep := exec.Command("sleep", "600")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleep.Wait() }()
	defer sleep.Process.Kill()
	pid := strconv.Itoa(sleep.Process.Pid)

	out, code := runCode(t, t0, "reload", "--config", cfg, "--pid", pid)
	if code != 1 || !strings.Contains(out, "klp-agent reload: no daemon runs (nothing holds the state lock)") {
		t.Errorf("reload --pid of a sleep, no daemon: exit %d\n%s", code, out)
	}
	startDaemon(t, cfg, stateDir)
	out, code = runCode(t, t0, "reload", "--config", cfg, "--pid", pid)
	want := fmt.Sprintf("the daemon (pid %d) answered: refused: pid %s is not the klp-agent daemon (the daemon holding %s is pid %d); nothing was signalled",
		os.Getpid(), pid, filepath.Join(stateDir, "lock"), os.Getpid())
	if code != 1 || !strings.Contains(out, want) {
		t.Errorf("reload --pid of a sleep, daemon running: exit %d\n%s", code, out)
	}
	select {
	case err := <-exited:
		t.Fatalf("the sleep was signalled: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
}

// A request the daemon took but did not answer (it died first) is no
// verdict: exit 75, never 0, and the command says the outcome is unknown.
// The "daemon" here is the test: it holds the lock and serves the socket.
func TestNoVerdictWhenTheDaemonDies(t *testing.T) {
	_, stateDir, cfg := daemonHost(t)
	store := &state.Store{Dir: stateDir}
	if err := store.Lock(); err != nil {
		t.Fatal(err)
	}
	defer store.Unlock()

	// Locked, nobody on the socket: another command acts on the state.
	out, code := runCode(t, t0, "hold", "--config", cfg, "--wait", "300ms")
	if code != 1 || !strings.Contains(out, "the state is locked by another klp-agent process and no daemon answers on the control socket") ||
		!strings.Contains(out, "nothing was done") {
		t.Errorf("locked, no daemon: exit %d\n%s", code, out)
	}

	l := state.Layout{Dir: stateDir}
	srv, err := controlsock.Listen(l.ControlDir(), state.ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, die := context.WithCancel(context.Background())
	got := make(chan agent.ControlRequest, 1)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ctx, func(ctx context.Context, req agent.ControlRequest) (agent.ControlResult, error) {
			got <- req
			<-ctx.Done() // dies before it answers
			return agent.ControlResult{}, ctx.Err()
		})
	}()
	go func() { <-got; die() }()
	out, code = runCode(t, t0, "rollback", "--config", cfg)
	<-served
	if code != ExitNoVerdict || !strings.Contains(out, "klp-agent rollback: no answer from the daemon: the daemon closed the connection first (it stopped or was killed); whether it was done is unknown") {
		t.Errorf("daemon died before answering: exit %d\n%s", code, out)
	}
}

// A real daemon stopping while a request waits for it (a poll, behind a
// poll that hangs on the mirror) gives no verdict: exit 75. Nothing of the
// request outlives its connection: the next start takes no poll request.
func TestStopBeforeAnswerIsNoVerdict(t *testing.T) {
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-hang:
		}
	}))
	defer srv.Close()
	defer close(hang)
	_, stateDir, cfg := daemonHost(t, "manifest:\n  url: "+srv.URL+"/manifest.json\n  retries: 0\n  timeout: 5m\n")
	logs, stop := startDaemonStop(t, cfg, stateDir)
	type result struct {
		out  string
		code int
	}
	polled := make(chan result, 1)
	go func() {
		out, code := runCode(t, t0, "poll", "--config", cfg, "--wait", "1m")
		polled <- result{out, code}
	}()
	waitLog(t, logs, "poll requested by")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	r := <-polled
	if r.code != ExitNoVerdict || !strings.Contains(r.out, "klp-agent poll: no answer from the daemon: the daemon closed the connection first (it stopped or was killed); whether it was done is unknown: see klp-agent status before asking again") {
		t.Errorf("poll when the daemon stopped first: exit %d\n%s", r.code, r.out)
	}
	logs = startDaemon(t, cfg, stateDir)
	waitLog(t, logs, "starting")
	if strings.Contains(logs.String(), "poll requested") {
		t.Errorf("the next daemon took the request again:\n%s", logs)
	}
}

func waitLog(t *testing.T, logs *syncbuf.Buffer, s string) {
	t.Helper()
	logs.WaitFor(t, s)
}
