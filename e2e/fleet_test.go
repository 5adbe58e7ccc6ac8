//go:build e2e

package e2e

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/guard"
	"github.com/klp-agent/klp-agent/internal/testutil/nginxtest"
	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/manifest"
)

// fleetKrel is the simulated hosts' kernel release.
const fleetKrel = "6.1.0-99-amd64"

// fleetHosts is how many agent processes TestFleetLoop runs
// (KLP_FLEET_HOSTS, default 50: the "at least 50").
func fleetHosts(t *testing.T) int {
	t.Helper()
	n := 50
	if s := os.Getenv("KLP_FLEET_HOSTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 3 {
			t.Fatalf("KLP_FLEET_HOSTS=%q: want a number >= 3", s)
		}
		n = v
	}
	return n
}

// fleetHost is one simulated host: a real `klp-agent run` (a klp_simkernel
// build) with its own paths.root, state directory and metrics port.
type fleetHost struct {
	id, dir, root, state, status, log string
	canary                            bool
	metrics                           int
	proc                              *process
}

// TestFleetLoop closes the fleet loop end to end with the real engines:
// nginx serves the signed manifest, the RPMs and revocations.json; N real
// agent daemons (klp_simkernel builds: a simulated kernel under each
// host's paths.root, the real rpm in it) poll them; the real Prometheus
// scrapes their metrics and evaluates the shipped rules; the real
// Alertmanager posts the budget alert to `klp-agent guard` (the shipped
// build) with a bearer token; the guard re-checks it in Prometheus, signs
// revocations.json with the revoke role's key and publishes it; every host
// still running the patch rolls back at its next revocations poll.
//
// Level 1 goes to every host, level 2 to the canary tier only; k of the
// canary hosts then crash on level 2: the test sets the D bit (a task
// died in an oops) in their <root>/proc/sys/kernel/tainted, which the
// agent's real taint watcher reads (a source the shipped rules count in
// the budget, as kmsg, kdump and pstore). The soak is short, so level 2 is
// the good level when they crash: the default policy does not roll an
// unattributed report back after the soak, and only the fleet pulls the
// patch back.
//
// A qemu guest with the real kernel belongs among these hosts (issue 22):
// it would be one more scrape target and revocations poller, booted with
// e2e/harness_test.go's boot() and a guest scenario that runs the daemon
// against this test's nginx (10.0.2.2); this test does not boot it (see
// fleetGuestHook).
func TestFleetLoop(t *testing.T) {
	n := fleetHosts(t)
	canaries := max(3, n/5)
	crashers := max(1, canaries/5)
	start := time.Now()
	work := t.TempDir()
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := buildAgent(t, filepath.Join(work, "shipped"))
	sim := buildAgent(t, filepath.Join(work, "sim"), "klp_simkernel")
	www, keys := filepath.Join(work, "www"), filepath.Join(work, "keys")
	for _, d := range []string{filepath.Join(www, "rpms"), keys} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cli := func(args ...string) string { return runCmd(t, work, nil, bin, args...) }

	// The root of trust: a root key, a release key, and a revoke role
	// whose key the guard holds.
	for _, k := range []string{"root", "release", "revoke"} {
		cli("manifest", "keygen", "--out", filepath.Join(keys, k))
	}
	rootFile := filepath.Join(www, "root.1.json")
	cli("manifest", "root", "init", "--root-key", filepath.Join(keys, "root.pub"), "--manifest-key", filepath.Join(keys, "release.pub"),
		"--revoke-key", filepath.Join(keys, "revoke.pub"), "--out", rootFile)
	cli("manifest", "root", "sign", "--envelope", rootFile, "--key", filepath.Join(keys, "root.key"))
	if err := os.Chmod(filepath.Join(keys, "revoke.key"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Levels 1 and 2 (published now and later), and a level 3 that only
	// the forged document names.
	rpms := map[int]string{}
	for _, l := range []int{1, 2, 3} {
		name := fmt.Sprintf("klp_cmdline_%d", l)
		ko := rpmtest.Module(t, "livepatch=Y", "vermagic="+fleetKrel+" SMP preempt mod_unload modversions ", "name="+name)
		rpms[l] = rpmtest.Build(t, filepath.Join(www, "rpms"), rpmtest.Spec{Family: "cmdline", Module: name, Level: l, KernelRelease: fleetKrel, KO: ko})
	}
	src := filepath.Join(work, "manifest.yaml")
	publish := func(level int, extra ...string) {
		t.Helper()
		signed := filepath.Join(work, "signed.json")
		cli(append([]string{"manifest", "add", "--manifest", src, "--rpm", rpms[level], "--url", "rpms/" + filepath.Base(rpms[level])}, extra...)...)
		cli("manifest", "sign", "--in", src, "--key", filepath.Join(keys, "release.key"), "--out", signed)
		if err := os.Rename(signed, filepath.Join(www, "manifest.json")); err != nil {
			t.Fatal(err)
		}
	}
	publish(1)
	srv := nginxtest.Start(t, www)

	// The hosts.
	hosts := make([]*fleetHost, n)
	for i := range hosts {
		h := &fleetHost{id: fmt.Sprintf("host-%02d", i), canary: i < canaries, metrics: nginxtest.FreePort(t, "tcp")}
		h.dir = filepath.Join(work, "hosts", h.id)
		h.root, h.state, h.status, h.log = filepath.Join(h.dir, "root"), filepath.Join(h.dir, "state"), filepath.Join(h.dir, "status.json"), filepath.Join(h.dir, "agent.log")
		writeFleetHost(t, h, srv.URL, rootFile)
		hosts[i] = h
	}
	for _, h := range hosts {
		h.proc = startProcess(t, h.log, sim, "run", "--config", filepath.Join(h.dir, "config.yaml"))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range hosts[:min(3, len(hosts))] {
				b, _ := os.ReadFile(h.log)
				t.Logf("%s log tail:\n%s", h.id, tail(string(b), 30))
			}
		}
	})

	// Prometheus with the shipped rules and the test's copy of them,
	// Alertmanager, and the guard between Alertmanager and nginx's
	// directory.
	floor := canaries // every canary host ran level 2: the budget's floor
	eng := startEngines(t, work, hosts, floor, rootFile, filepath.Join(keys, "revoke.key"), filepath.Join(www, "revocations.json"))

	waitFleet(t, "every host on level 1, soaked", 90*time.Second, hosts, func(h *fleetHost, st *agent.Status) bool {
		return st.Applied != nil && st.Applied.Level == 1 && st.Phase == "good"
	})
	t.Logf("progress +%.0fs: %d hosts on level 1", time.Since(start).Seconds(), n)

	publish(2, "--tier", "canary", "--start-percent", "0")
	waitFleet(t, "the canary tier on level 2, soaked", 90*time.Second, hosts, func(h *fleetHost, st *agent.Status) bool {
		want := 1
		if h.canary {
			want = 2
		}
		return st.Applied != nil && st.Applied.Level == want && st.Phase == "good"
	})
	// Prometheus must have seen all of them on it (the floor).
	waitProm(t, eng.prom, `max_over_time(klp_fleettest:patched_hosts:count{patch="klp_cmdline_2"}[1d])`, float64(canaries), 60*time.Second)
	t.Logf("progress +%.0fs: %d canary hosts on level 2, %d others on level 1", time.Since(start).Seconds(), canaries, n-canaries)
	for _, h := range hosts {
		if got, want := simLoads(t, h, "klp_cmdline_2"), map[bool]int{true: 1, false: 0}[h.canary]; got != want {
			t.Fatalf("%s (canary %v) loaded klp_cmdline_2 %d times, want %d", h.id, h.canary, got, want)
		}
	}

	// k of the canary hosts crash on level 2: the budget is crossed now.
	crossed := time.Now()
	for _, h := range hosts[:crashers] {
		writeFile(t, filepath.Join(h.root, "proc/sys/kernel/tainted"), "128\n") // D: a task died in an oops
	}
	t.Logf("progress +%.0fs: %d of %d canary hosts crashed on level 2 (taint D)", time.Since(start).Seconds(), crashers, canaries)

	// The alert fires in Prometheus and reaches Alertmanager ...
	var fired time.Time
	var decided *guard.Record
	var rolledBack time.Time
	deadline := crossed.Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		if fired.IsZero() && amFiring(t, eng.am, "klp_cmdline_2") {
			fired = time.Now()
		}
		if decided == nil {
			decided = guardDecision(t, eng.decisions, guard.ActionRevoked, "klp_cmdline_2")
		}
		if on := onLevel(t, hosts, 2); len(on) == 0 {
			rolledBack = time.Now()
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if fired.IsZero() {
		fired = ifThen(amFiring(t, eng.am, "klp_cmdline_2"), time.Now())
	}
	if decided == nil {
		decided = guardDecision(t, eng.decisions, guard.ActionRevoked, "klp_cmdline_2")
	}
	switch {
	case fired.IsZero():
		t.Fatalf("Alertmanager has no firing KLPPatchCrashBudgetExceeded for klp_cmdline_2 after 5 min")
	case decided == nil:
		recs, _ := guard.ReadDecisions(eng.decisions)
		t.Fatalf("the guard revoked nothing: decisions %+v", recs)
	case rolledBack.IsZero():
		t.Fatalf("hosts still on level 2 five minutes after the budget was crossed: %v", onLevel(t, hosts, 2))
	}
	t.Logf("alert firing in Alertmanager: %v (labels %v); guard decision: %s %s level %d, Prometheus value %.1f, revocations.json version %d",
		fired.Sub(crossed).Round(10*time.Millisecond), decided.Labels, decided.Action, decided.Patch, decided.Level, decided.Value, decided.Version)
	if decided.Level != 2 || decided.Value <= 1 || decided.Version == 0 {
		t.Errorf("guard decision %+v: want level 2 revoked, confirmed by Prometheus (> 1 per 1000), a version signed", decided)
	}
	// The published document is the revoke role's, verifiable as hosts
	// verify it.
	cli("manifest", "revocations", "verify", "--file", filepath.Join(www, "revocations.json"), "--root", rootFile)
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
	if !decided.StartsAt.IsZero() {
		fired = decided.StartsAt // Prometheus's own time the alert fired, not when this test saw it
	}
	t.Logf("pull-back time (budget crossed -> last host rolled back): %v = %v taint watcher, scrape, rules and Alertmanager + %v guard (webhook, Prometheus re-check, sign, publish) + %v revocations polls and rollbacks",
		r(rolledBack.Sub(crossed)), r(fired.Sub(crossed)), r(decided.Time.Sub(fired)), r(rolledBack.Sub(decided.Time)))

	// Every canary host rolled back to level 1, by the revocation or (a
	// crashed one during its soak) by itself; level 2 is never taken again.
	waitFleet(t, "every host on level 1", 30*time.Second, hosts, func(h *fleetHost, st *agent.Status) bool {
		return st.Applied != nil && st.Applied.Level == 1
	})
	// Each canary host was pulled back by the channel (the crashed ones
	// too: past the soak, the default policy leaves an unattributed oops
	// to the fleet), no other host rolled anything back, and the crashes
	// were counted where the budget counts them.
	pulled := regexp.MustCompile(`rolled back klp_cmdline_2\S* to \S*klp_cmdline_1.*revoked by revocations.json version ` + strconv.FormatUint(decided.Version, 10))
	for _, h := range hosts {
		log := readFile(t, h.log)
		if got := pulled.MatchString(log); got != h.canary {
			t.Errorf("%s (canary %v): pulled back by revocations.json version %d: %v, want %v; log tail:\n%s", h.id, h.canary, decided.Version, got, h.canary, tail(log, 10))
		}
		if !h.canary && strings.Contains(log, "rolled back") {
			t.Errorf("%s (not canary) rolled back: %s", h.id, tail(log, 10))
		}
	}
	waitProm(t, eng.prom, `sum(klp_agent_crashes_total{patch="klp_cmdline_2",source="taint"})`, float64(crashers), 10*time.Second)
	loads := map[string]int{}
	for _, h := range hosts {
		loads[h.id] = simLoads(t, h, "klp_cmdline_2")
	}
	time.Sleep(12 * time.Second) // > one manifest poll (10s) and two revocations polls (5s)

	// A document the revoke key signed that adds a patch: refused by
	// every host, and nothing is applied.
	forged := forgeRevocations(t, filepath.Join(www, "revocations.json"), filepath.Join(keys, "revoke.key"), rpms[3])
	writeFile(t, filepath.Join(www, "revocations.json"), string(forged))
	refusal := `outside the revoke role's scope`
	waitFleet(t, "every host refusing the forged document", 30*time.Second, hosts, func(h *fleetHost, _ *agent.Status) bool {
		return strings.Contains(readFile(t, h.log), refusal)
	})
	time.Sleep(6 * time.Second) // another revocations poll
	for _, h := range hosts {
		st := readStatus(t, h)
		if st == nil || st.Applied == nil || st.Applied.Level != 1 {
			t.Errorf("%s after the forged document: applied %+v, want level 1", h.id, st)
		}
		if got := simLoads(t, h, "klp_cmdline_2"); got != loads[h.id] {
			t.Errorf("%s loaded klp_cmdline_2 again (%d times, %d before)", h.id, got, loads[h.id])
		}
		if got := simLoads(t, h, "klp_cmdline_3"); got != 0 {
			t.Errorf("%s loaded the forged document's klp_cmdline_3", h.id)
		}
	}
	t.Logf("fleet of %d hosts (%d canary, %d crashed): ran %.0fs", n, canaries, crashers, time.Since(start).Seconds())
	fleetGuestHook(t)
}

// fleetGuestHook is where the lead adds the real-kernel host: a qemu guest
// running the shipped agent against this test's nginx, scraped by the same
// Prometheus, on level 2 in the canary tier, that must roll back with the
// rest (issue 22, "at least one qemu guest with the real kernel").
func fleetGuestHook(t *testing.T) {
	t.Log("no qemu guest among the hosts (not wired yet)")
}

func ifThen(ok bool, t time.Time) time.Time {
	if ok {
		return t
	}
	return time.Time{}
}

// writeFleetHost lays out a host: the files the agent reads under
// paths.root, its trusted root and its configuration.
func writeFleetHost(t *testing.T, h *fleetHost, base, rootFile string) {
	t.Helper()
	for p, v := range map[string]string{"proc/sys/kernel/osrelease": fleetKrel, "etc/machine-id": "0123456789abcdef0123456789abcdef",
		"proc/sys/kernel/random/boot_id": "b0071d00-0000-4000-8000-000000000001", "proc/sys/kernel/tainted": "0", "proc/cmdline": "root=/dev/vda ro"} {
		writeFile(t, filepath.Join(h.root, p), v+"\n")
	}
	trusted := filepath.Join(h.dir, "root.1.json")
	writeFile(t, trusted, readFile(t, rootFile))
	tier := ""
	if h.canary {
		tier = "  tier: canary\n"
	}
	writeFile(t, filepath.Join(h.dir, "config.yaml"), `manifest:
  url: `+base+`/manifest.json
  poll_interval: 10s
  poll_jitter: 0
  revocations_interval: 5s
  timeout: 10s
  retries: 0
trust:
  root: `+trusted+`
host:
  id: `+h.id+`
`+tier+`apply:
  soak: 2s
health:
  kmsg: false
  kdump_dir: ""
  pstore_dir: ""
  taint: true
  taint_interval: 1s
metrics:
  listen: 127.0.0.1:`+strconv.Itoa(h.metrics)+`
paths:
  root: `+h.root+`
  state_dir: `+h.state+`
  status_file: `+h.status+`
log:
  level: info
  format: console
`)
}

// engines are the fleet side: Prometheus, Alertmanager and the guard.
type engines struct {
	prom, am, decisions string
}

// startEngines starts Prometheus (the shipped rules, plus the test's copy
// with a floor of floor hosts and a 1 s evaluation), Alertmanager (group
// wait 0 s, the guard's webhook with a bearer token from a file) and the
// guard (the shipped build, the revoke key, the test rule's expression as
// its re-check) on loopback.
func startEngines(t *testing.T, work string, hosts []*fleetHost, floor int, rootFile, revokeKey, revFile string) engines {
	t.Helper()
	dir := filepath.Join(work, "engines")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	promPort, amPort, guardPort := nginxtest.FreePort(t, "tcp"), nginxtest.FreePort(t, "tcp"), nginxtest.FreePort(t, "tcp")
	e := engines{prom: fmt.Sprintf("http://127.0.0.1:%d", promPort), am: fmt.Sprintf("http://127.0.0.1:%d", amPort),
		decisions: filepath.Join(dir, "decisions.json")}

	// The shipped rules, loaded as they are (their alert's floor, 100
	// hosts, keeps it quiet here), and the test's copy: the same
	// expressions under other record names, evaluated every second, with
	// a floor this fleet can reach.
	shipped := filepath.Join(repoDir(t), "packaging/prometheus/klp-agent.rules.yml")
	rules := readFile(t, shipped)
	test := testRules(t, rules, floor)
	testFile := filepath.Join(dir, "fleettest.rules.yml")
	writeFile(t, testFile, test)
	var targets []string
	for _, h := range hosts {
		targets = append(targets, fmt.Sprintf("%q", "127.0.0.1:"+strconv.Itoa(h.metrics)))
	}
	promCfg := filepath.Join(dir, "prometheus.yml")
	writeFile(t, promCfg, `global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: [`+shipped+`, `+testFile+`]
alerting:
  alertmanagers: [{static_configs: [{targets: ["127.0.0.1:`+strconv.Itoa(amPort)+`"]}]}]
scrape_configs:
  - job_name: klp-agent
    static_configs: [{targets: [`+strings.Join(targets, ", ")+`]}]
`)
	runCmd(t, dir, nil, "promtool", "check", "config", promCfg)

	token := filepath.Join(dir, "guard.token")
	writeFile(t, token, "fleet-test-token-"+strconv.FormatInt(time.Now().UnixNano(), 36)+"\n")
	if err := os.Chmod(token, 0o600); err != nil {
		t.Fatal(err)
	}
	amCfg := filepath.Join(dir, "alertmanager.yml")
	writeFile(t, amCfg, `route:
  receiver: klp-guard
  group_by: [alertname, patch]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: klp-guard
    webhook_configs:
      - url: http://127.0.0.1:`+strconv.Itoa(guardPort)+`/alerts
        send_resolved: false
        http_config:
          authorization: {type: Bearer, credentials_file: `+token+`}
`)
	query := testExpr(t, guard.DefaultQuery, floor)
	guardCfg := filepath.Join(dir, "guard.yaml")
	writeFile(t, guardCfg, `listen: 127.0.0.1:`+strconv.Itoa(guardPort)+`
token_file: `+token+`
prometheus:
  url: `+e.prom+`
  query: '`+query+`'
root: `+rootFile+`
key: `+revokeKey+`
file: `+revFile+`
validity: 7d
refresh_before: 3d
decisions_file: `+e.decisions+`
log:
  level: info
  format: console
`)
	bin := filepath.Join(work, "shipped", "klp-agent")
	runCmd(t, dir, nil, bin, "guard", "--config", guardCfg, "--check-config")

	for _, p := range []struct {
		name string
		argv []string
	}{
		{"prometheus", []string{"prometheus", "--config.file=" + promCfg, "--storage.tsdb.path=" + filepath.Join(dir, "tsdb"),
			"--web.listen-address=127.0.0.1:" + strconv.Itoa(promPort)}},
		{"alertmanager", []string{"prometheus-alertmanager", "--config.file=" + amCfg, "--storage.path=" + filepath.Join(dir, "am"),
			"--web.listen-address=127.0.0.1:" + strconv.Itoa(amPort), "--cluster.listen-address="}},
		{"guard", []string{bin, "guard", "--config", guardCfg}},
	} {
		log := filepath.Join(dir, p.name+".log")
		startProcess(t, log, p.argv[0], p.argv[1:]...)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("%s log tail:\n%s", p.name, tail(readFile(t, log), 25))
			}
		})
	}
	for _, u := range []string{e.prom + "/-/ready", e.am + "/-/ready"} {
		waitHTTP(t, u, 30*time.Second)
	}
	return e
}

// testRules is the shipped rules file with its recorded series renamed
// (klp: to klp_fleettest:), its recording group evaluated every second
// and the budget alert's floor lowered to floor. Each change must find
// what it changes: a rules file that moves on fails here, not quietly.
func testRules(t *testing.T, rules string, floor int) string {
	t.Helper()
	for _, r := range []struct {
		old, new string
		n        int
	}{
		{"name: klp-agent.records", "name: fleettest.records", 1},
		{"name: klp-agent.alerts", "name: fleettest.alerts", 1},
		{"interval: 1m", "interval: 1s", 1},
	} {
		if c := strings.Count(rules, r.old); c != r.n {
			t.Fatalf("shipped rules: %q found %d times, want %d", r.old, c, r.n)
		}
		rules = strings.ReplaceAll(rules, r.old, r.new)
	}
	return testExpr(t, rules, floor)
}

// testExpr renames the recorded series and lowers the floor in a rule or
// the guard's query.
func testExpr(t *testing.T, s string, floor int) string {
	t.Helper()
	if strings.Count(s, ">= 100") != 1 || !strings.Contains(s, "klp:") {
		t.Fatalf("the budget expression changed (no single '>= 100' floor or no klp: series):\n%s", s)
	}
	s = strings.ReplaceAll(s, "klp:", "klp_fleettest:")
	return strings.Replace(s, ">= 100", ">= "+strconv.Itoa(floor), 1)
}

// process is a daemon the test started: its output goes to a log file;
// done is closed when it exits.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// startProcess starts argv with its output in log and stops it (SIGTERM,
// then SIGKILL after 10 s) when the test ends.
func startProcess(t *testing.T, log string, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), done: make(chan struct{})}
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// exited says how the process ended ("" while it runs).
func (p *process) exited() string {
	select {
	case <-p.done:
		return fmt.Sprintf("exited: %v", p.err)
	default:
		return ""
	}
}

func waitHTTP(t *testing.T, u string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v: %v", u, within, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// readStatus is the host's status snapshot (paths.status_file), nil
// before the daemon wrote one.
func readStatus(t *testing.T, h *fleetHost) *agent.Status {
	t.Helper()
	b, err := os.ReadFile(h.status)
	if err != nil {
		return nil
	}
	var st agent.Status
	if err := json.Unmarshal(b, &st); err != nil {
		return nil // being replaced: read again
	}
	return &st
}

// waitFleet waits until ok holds for every host's status.
func waitFleet(t *testing.T, what string, within time.Duration, hosts []*fleetHost, ok func(*fleetHost, *agent.Status) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var not []string
		for _, h := range hosts {
			if why := h.proc.exited(); why != "" {
				t.Fatalf("%s: %s: %s", what, h.id, why)
			}
			if st := readStatus(t, h); st == nil || !ok(h, st) {
				not = append(not, h.id)
			}
		}
		if len(not) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var why string
			if st := readStatus(t, hostByID(hosts, not[0])); st != nil {
				why = fmt.Sprintf("; %s: phase %s applied %+v wanted %+v problems %v", not[0], st.Phase, st.Applied, st.Wanted, st.Problems)
			}
			t.Fatalf("%s: not after %v on %d hosts %v%s", what, within, len(not), not, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func hostByID(hosts []*fleetHost, id string) *fleetHost {
	for _, h := range hosts {
		if h.id == id {
			return h
		}
	}
	return nil
}

// onLevel lists the hosts whose status says they run level.
func onLevel(t *testing.T, hosts []*fleetHost, level int) []string {
	var on []string
	for _, h := range hosts {
		st := readStatus(t, h)
		if st == nil || st.Applied == nil || st.Applied.Level == level {
			on = append(on, h.id)
		}
	}
	return on
}

// simLoads counts the loads of a module the host's simulated kernel
// recorded (agent/daemon/simkernel.go keeps it in <root>/simkernel.json).
func simLoads(t *testing.T, h *fleetHost, module string) int {
	t.Helper()
	var k struct{ Loads []string }
	for range 20 {
		b, err := os.ReadFile(filepath.Join(h.root, "simkernel.json"))
		if err == nil && json.Unmarshal(b, &k) == nil {
			n := 0
			for _, l := range k.Loads {
				if l == module {
					n++
				}
			}
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: no simulated kernel state", h.id)
	return 0
}

// waitProm waits until an instant query's first sample is at least want.
func waitProm(t *testing.T, prom, query string, want float64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		resp, err := http.Get(prom + "/api/v1/query?query=" + url.QueryEscape(query))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = string(b)
			var r struct {
				Data struct {
					Result []struct {
						Value []any `json:"value"`
					} `json:"result"`
				} `json:"data"`
			}
			if json.Unmarshal(b, &r) == nil && len(r.Data.Result) > 0 && len(r.Data.Result[0].Value) == 2 {
				if s, ok := r.Data.Result[0].Value[1].(string); ok {
					if v, err := strconv.ParseFloat(s, 64); err == nil && v >= want {
						return
					}
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("Prometheus %s: not >= %v after %v: %s", query, want, within, last)
}

// amFiring reports whether Alertmanager holds an active budget alert for
// the patch (its API v2).
func amFiring(t *testing.T, am, patch string) bool {
	t.Helper()
	resp, err := http.Get(am + "/api/v2/alerts?active=true&filter=" + url.QueryEscape(`alertname="`+guard.DefaultAlertName+`"`))
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var alerts []struct {
		Labels map[string]string `json:"labels"`
		Status struct {
			State string `json:"state"`
		} `json:"status"`
	}
	if json.NewDecoder(resp.Body).Decode(&alerts) != nil {
		return false
	}
	for _, a := range alerts {
		if a.Labels["patch"] == patch && a.Status.State == "active" {
			return true
		}
	}
	return false
}

// guardDecision is the guard's recorded decision of action for patch.
func guardDecision(t *testing.T, file, action, patch string) *guard.Record {
	t.Helper()
	recs, err := guard.ReadDecisions(file)
	if err != nil {
		return nil // being replaced
	}
	for i := range recs {
		if recs[i].Action == action && recs[i].Patch == patch {
			return &recs[i]
		}
	}
	return nil
}

// forgeRevocations is the next version of the published document with a
// patch added ("patches": level 3, served beside the others), signed by
// the revoke key as a thief holding it would: what hosts must refuse.
func forgeRevocations(t *testing.T, published, revokeKey, rpm string) []byte {
	t.Helper()
	cur, err := manifest.RevocationsPayload([]byte(readFile(t, published)))
	if err != nil {
		t.Fatal(err)
	}
	sum, size := fileSum(t, rpm)
	doc := map[string]any{"type": manifest.RevocationsType, "version": cur.Version + 1, "expires": cur.Expires, "revoked": cur.Revoked,
		"patches": []map[string]any{{"kernel": fleetKrel, "name": "klp_cmdline_3", "level": 3, "url": "rpms/" + filepath.Base(rpm),
			"sha256": sum, "size": size}}}
	payload, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := manifest.LoadSigner(revokeKey)
	if err != nil {
		t.Fatal(err)
	}
	id, err := signer.KeyID()
	if err != nil {
		t.Fatal(err)
	}
	pt := manifest.RevocationsPayloadType
	pae := fmt.Sprintf("DSSEv1 %d %s %d %s", len(pt), pt, len(payload), payload)
	sig, err := signer.Sign(context.Background(), []byte(pae))
	if err != nil {
		t.Fatal(err)
	}
	env, err := json.Marshal(map[string]any{"payloadType": pt, "payload": base64.StdEncoding.EncodeToString(payload),
		"signatures": []map[string]string{{"keyid": id, "sig": base64.StdEncoding.EncodeToString(sig)}}})
	if err != nil {
		t.Fatal(err)
	}
	// A sanity check that the forgery is well signed: its signature
	// verifies under the revoke key, so only the scope rule refuses it.
	pub, err := manifest.ParsePublicKey([]byte(readFile(t, strings.TrimSuffix(revokeKey, ".key")+".pub")))
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(pub, []byte(pae), sig) {
		t.Fatal("the forged document's signature does not verify under the revoke key")
	}
	return env
}

func fileSum(t *testing.T, path string) (string, int64) {
	t.Helper()
	out := runCmd(t, "", nil, "sha256sum", path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(out)[0], fi.Size()
}
