//go:build e2e

package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// repoDir is the repository root (this file lives in e2e/).
func repoDir(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// kernelLines are the Debian 12 kernel lines e2e/setup.sh prepares: 6.1
// (linux-image-amd64, the default line) and 6.12 (linux-image-6.12-amd64,
// bookworm-security).
var kernelLines = []string{"6.1", "6.12"}

// kernelEnvFile is the env file setup.sh writes for a line (keep in step
// with setup.sh and lib.sh's klp_env_file).
func kernelEnvFile(line string) string {
	if line == "6.1" {
		return "current.env"
	}
	return "current-" + line + ".env"
}

// lineEnv is what the e2e scripts need to act on a kernel line: lib.sh's
// klp_load_env reads that line's env file. "" is the default line (6.1),
// named too, so a KLP_E2E_LINE in the test's own environment cannot
// switch one script of a test to another kernel.
func lineEnv(line string) []string {
	if line == "" {
		line = "6.1"
	}
	return []string{"KLP_E2E_LINE=" + line}
}

// kernelEnv reads what e2e/setup.sh resolved for the default line (6.1).
func kernelEnv(t *testing.T) map[string]string {
	t.Helper()
	return kernelEnvFor(t, "6.1")
}

// kernelEnvFor reads what e2e/setup.sh resolved for a kernel line. A
// missing harness fails the test loudly: CI must never count a real-kernel
// test it did not run.
func kernelEnvFor(t *testing.T, line string) map[string]string {
	t.Helper()
	if !slices.Contains(kernelLines, line) {
		t.Fatalf("unknown kernel line %q (known: %v)", line, kernelLines)
	}
	cache := os.Getenv("KLP_E2E_CACHE")
	if cache == "" {
		cache = "/var/cache/klp-agent-e2e"
	}
	file := kernelEnvFile(line)
	b, err := os.ReadFile(filepath.Join(cache, file))
	if err != nil {
		t.Fatalf("real-kernel harness not set up for %s (%v): run 'sudo e2e/setup.sh' or 'sudo make e2e'", line, err)
	}
	env := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = v
		}
	}
	for _, k := range []string{"KLP_E2E_KREL", "KLP_E2E_VMLINUZ"} {
		if _, err := os.Stat(env[k]); k == "KLP_E2E_VMLINUZ" && err != nil {
			t.Fatalf("%s: %v: run 'sudo e2e/setup.sh'", k, err)
		}
		if env[k] == "" {
			t.Fatalf("%s missing from %s: run 'sudo e2e/setup.sh'", k, file)
		}
	}
	// 6.1 must not pass for 6.12 or the other way round.
	if !strings.HasPrefix(env["KLP_E2E_KREL"], line+".") {
		t.Fatalf("%s names kernel %s, not one of the %s line: run 'sudo e2e/setup.sh'", file, env["KLP_E2E_KREL"], line)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 not found: run 'sudo e2e/setup.sh'")
	}
	return env
}

func runCmd(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// buildAgent builds the static binary users install.
func buildAgent(t *testing.T, out string, tags ...string) string {
	t.Helper()
	bin := filepath.Join(out, "klp-agent")
	runCmd(t, repoDir(t), []string{"CGO_ENABLED=0"}, "go", "build", "-trimpath", "-tags", strings.Join(tags, ","), "-o", bin, ".")
	return bin
}

// buildRPMs builds the test modules against the real headers and packages
// them with rpmbuild.
func buildRPMs(t *testing.T, out string) {
	t.Helper()
	buildRPMsFor(t, out, "")
}

// builtRPMs caches build-rpms.sh's output per kernel line for the rest of
// this test process: the sources cannot change during one run, and every
// test building the modules again cost CI a minute each.
var builtRPMs = struct {
	sync.Mutex
	dir map[string]string
}{dir: map[string]string{}}

// buildRPMsFor does it against a kernel line's headers ("" is 6.1). The
// first call per line builds; later ones copy that build into out.
func buildRPMsFor(t *testing.T, out, line string) {
	t.Helper()
	if line == "" {
		line = "6.1"
	}
	builtRPMs.Lock()
	defer builtRPMs.Unlock()
	src, ok := builtRPMs.dir[line]
	if !ok {
		dir, err := os.MkdirTemp("", "klp-e2e-rpms-"+line+"-")
		if err != nil {
			t.Fatal(err)
		}
		runCmd(t, repoDir(t), lineEnv(line), "e2e/build-rpms.sh", dir)
		builtRPMs.dir[line], src = dir, dir
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	runCmd(t, repoDir(t), nil, "cp", "-a", src+"/.", out)
}

// rpmFiles stages what the real rpm needs inside a busybox guest and
// returns mkinitramfs -f arguments: its binaries in /usr/local/bin (busybox
// has an rpm applet of its own in /usr/bin), their shared libraries at the
// paths ldd names (copied, not linked: the guest has no merged /usr), and
// its configuration.
func rpmFiles(t *testing.T, work string) []string {
	t.Helper()
	stage := filepath.Join(work, "rpmstage")
	if err := os.MkdirAll(stage, 0o755); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var args []string
	add := func(src, dest string) {
		if seen[dest] {
			return
		}
		seen[dest] = true
		b, err := os.ReadFile(src) // follows symlinks
		if err != nil {
			t.Fatalf("stage %s: %v (install rpm: make deps)", src, err)
		}
		staged := filepath.Join(stage, strconv.Itoa(len(seen)))
		if err := os.WriteFile(staged, b, 0o755); err != nil {
			t.Fatal(err)
		}
		args = append(args, staged+":"+dest)
	}
	re := regexp.MustCompile(`(/[^ ]+) \(0x`)
	for _, bin := range []string{"rpm", "rpmkeys", "rpmdb"} {
		path := "/usr/bin/" + bin
		add(path, "/usr/local/bin/"+bin)
		if bin == "rpmdb" {
			add(path, "/usr/bin/rpmdb") // rpm --initdb runs it by this path
		}
		out, err := exec.Command("ldd", path).Output()
		if err != nil {
			t.Fatalf("ldd %s: %v (install rpm: make deps)", path, err)
		}
		for _, m := range re.FindAllStringSubmatch(string(out), -1) {
			add(m[1], m[1])
		}
	}
	args = append(args, "/usr/lib/rpm:/usr/lib/rpm")
	if _, err := os.Stat("/etc/rpm"); err == nil {
		args = append(args, "/etc/rpm:/etc/rpm")
	}
	sort.Strings(args)
	return args
}

// Marker is one "KLP-E2E: ..." line from the guest's serial console.
type marker struct {
	name, status, detail string
}

// guest describes one boot.
type guest struct {
	scenario string
	files    []string // mkinitramfs -f SRC:/DEST
	kos      []string // extra .ko files for /klp
	kmods    []string // kernel modules to load at boot (virtio_net, ext4, ...)
	disk     string   // attached as /dev/vda
	net      bool     // user networking: the host's loopback is 10.0.2.2
	append   []string // extra kernel command line words
	qemu     []string // extra qemu arguments (after run-qemu.sh's own)
	timeout  time.Duration
	name     string // for the kept serial log
	crashes  bool   // the scenario crashes the kernel: no DONE marker expected
	// watch, if set, is called with each PASS/FAIL marker as the guest
	// prints it, from another goroutine (so t.Errorf, not t.Fatal): the
	// host can react while the guest runs.
	watch func(marker)
	line  string // kernel line to boot (see kernelLines); "" is 6.1
}

func boot(t *testing.T, work string, g guest) ([]marker, string) {
	t.Helper()
	initrd := filepath.Join(work, "initrd-"+g.name+".cpio.gz")
	args := []string{"-o", initrd, "-s", g.scenario}
	for _, f := range g.files {
		args = append(args, "-f", f)
	}
	for _, k := range g.kos {
		args = append(args, "-k", k)
	}
	for _, m := range g.kmods {
		args = append(args, "-m", m)
	}
	env := lineEnv(g.line)
	runCmd(t, repoDir(t), env, "e2e/guest/mkinitramfs.sh", args...)
	qargs := []string{"-i", initrd, "-t", strconv.Itoa(int(g.timeout.Seconds()))}
	if g.disk != "" {
		qargs = append(qargs, "-d", g.disk)
	}
	if g.net {
		qargs = append(qargs, "-n")
	}
	for _, a := range g.append {
		qargs = append(qargs, "-a", a)
	}
	if len(g.qemu) > 0 {
		qargs = append(append(qargs, "--"), g.qemu...)
	}
	return bootWatch(t, work, g.name, env, qargs, g.crashes, g.watch)
}

// bootWith runs run-qemu.sh with qargs and returns the markers and the
// serial log; crashes says no DONE marker is expected.
func bootWith(t *testing.T, work, name string, qargs []string, crashes bool) ([]marker, string) {
	t.Helper()
	return bootWatch(t, work, name, lineEnv(""), qargs, crashes, nil)
}

var (
	markerRE = regexp.MustCompile(`KLP-E2E: (\S+) (PASS|FAIL)(?: (.*))?$`)
	bootRE   = regexp.MustCompile(`KLP-E2E: boot krel=(\S+)`)
)

// oneLine cuts s to n bytes for a progress line.
func oneLine(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// bootWatch is bootWith with extra environment for run-qemu.sh (lineEnv)
// that also calls watch (if not nil) with each
// PASS/FAIL marker while the guest runs. Each marker is also logged as it
// comes, with the time since qemu started: under go test -v (make check,
// make demo) a guest's minutes are never silent.
func bootWatch(t *testing.T, work, name string, env, qargs []string, crashes bool, watch func(marker)) ([]marker, string) {
	t.Helper()
	log := filepath.Join(work, "serial-"+name+".log")
	start := time.Now()
	qargs = append([]string{"-l", log, "-q"}, qargs...)
	cmd := exec.Command("e2e/guest/run-qemu.sh", qargs...)
	cmd.Dir = repoDir(t)
	cmd.Env = append(os.Environ(), env...)
	done, watched := make(chan struct{}), make(chan struct{})
	{
		go func() {
			defer close(watched)
			var off int64
			var partial string
			for stop := false; !stop; {
				select {
				case <-done:
					stop = true // one last read
				case <-time.After(100 * time.Millisecond):
				}
				f, err := os.Open(log)
				if err != nil {
					continue // qemu has not started yet
				}
				b, _ := io.ReadAll(io.NewSectionReader(f, off, 1<<40))
				f.Close()
				off += int64(len(b))
				lines := strings.Split(partial+strings.ReplaceAll(string(b), "\r", ""), "\n")
				partial = lines[len(lines)-1]
				for _, l := range lines[:len(lines)-1] {
					if m := bootRE.FindStringSubmatch(l); m != nil {
						t.Logf("progress %s +%.0fs: kernel %s up, scenario running", name, time.Since(start).Seconds(), m[1])
					}
					if m := markerRE.FindStringSubmatch(l); m != nil {
						t.Logf("progress %s +%.0fs: %s %s %s", name, time.Since(start).Seconds(), m[1], m[2], oneLine(m[3], 120))
						if watch != nil {
							watch(marker{m[1], m[2], m[3]})
						}
					}
				}
			}
		}()
	}
	out, err := cmd.CombinedOutput()
	close(done)
	<-watched
	t.Logf("guest %s ran %.1fs: %s", name, time.Since(start).Seconds(), strings.TrimSpace(string(out)))
	raw, rerr := os.ReadFile(log)
	if rerr != nil {
		t.Fatalf("no serial log: %v (qemu: %v)", rerr, err)
	}
	// Keep the console log past the test's temp dir, for whoever debugs.
	keep := filepath.Join(os.TempDir(), "klp-e2e-"+strings.ReplaceAll(t.Name(), "/", "_")+name+".serial.log")
	if werr := os.WriteFile(keep, raw, 0o644); werr == nil {
		t.Logf("serial log kept at %s", keep)
	}
	var ms []marker
	sc := bufio.NewScanner(strings.NewReader(strings.ReplaceAll(string(raw), "\r", "")))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	re := markerRE
	timeRE := regexp.MustCompile(`KLP-E2E: time (\S+) (.*)$`)
	for sc.Scan() {
		line := sc.Text()
		if m := timeRE.FindStringSubmatch(line); m != nil {
			ms = append(ms, marker{m[1], "TIME", m[2]})
		} else if m := re.FindStringSubmatch(line); m != nil {
			ms = append(ms, marker{m[1], m[2], m[3]})
		}
	}
	// run-qemu.sh exits 2 when no DONE marker came, which is what a
	// crashing scenario expects.
	var ee *exec.ExitError
	crashedAsPlanned := crashes && errors.As(err, &ee) && ee.ExitCode() == 2
	if err != nil && !crashedAsPlanned {
		t.Errorf("guest %s failed: %v; serial log tail:\n%s", name, err, tail(string(raw), 60))
	}
	return ms, string(raw)
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// checkMarkers asserts that every wanted guest step reported PASS and no
// other step failed, and returns the PASS details by step.
func checkMarkers(t *testing.T, ms []marker, log string, want ...string) map[string]string {
	t.Helper()
	got := map[string]marker{}
	for _, m := range ms {
		if m.status == "FAIL" && !slices.Contains(want, m.name) {
			t.Errorf("guest step %s FAIL: %s", m.name, m.detail)
		}
		got[m.name] = m
	}
	details := map[string]string{}
	for _, name := range want {
		m, ok := got[name]
		switch {
		case !ok:
			t.Errorf("%s: never reported; log tail:\n%s", name, tail(log, 40))
		case m.status != "PASS":
			t.Errorf("%s: %s", name, m.detail)
		default:
			details[name] = m.detail
			t.Logf("%s: %s", name, m.detail)
		}
	}
	return details
}

// publisher is a release team's side: the agent binary as their CLI, the
// test livepatch RPMs, a release key and nginx's document root.
type publisher struct {
	work, bin, rpms, www, keys string
	t                          *testing.T
}

func newPublisher(t *testing.T, work string) *publisher {
	t.Helper()
	p := &publisher{work: work, bin: buildAgent(t, work), rpms: filepath.Join(work, "rpms"),
		www: filepath.Join(work, "www"), keys: filepath.Join(work, "keys"), t: t}
	buildRPMs(t, p.rpms)
	for _, d := range []string{filepath.Join(p.www, "rpms"), p.keys} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p.cli("manifest", "keygen", "--out", filepath.Join(p.keys, "release"))
	return p
}

// agentConfig is the guest daemon's configuration: the manifest from nginx
// on the host (port), polled every 10 s, the publisher's key, apply.soak
// soak, and extra top-level YAML (e.g. a health: section).
func agentConfig(port, soak, extra string) string {
	return `manifest:
  url: http://10.0.2.2:` + port + `/manifest.json
  poll_interval: 10s
  poll_jitter: 0
  timeout: 20s
  retries: 1
trust:
  keys_dir: /etc/klp-agent/keys
host:
  id: e2e-guest-1
apply:
  soak: ` + soak + `
  # Debian's rpm finds its database with bash, which the guest lacks.
  rpm_dbpath: /var/lib/rpm
log:
  level: debug
  format: console
` + extra
}

// publish adds the built RPM file to the manifest src (extra: manifest add
// flags) and signs it into the web root.
func (p *publisher) publish(src, file string, extra ...string) {
	p.t.Helper()
	if err := p.tryPublish(src, file, extra...); err != nil {
		p.t.Fatal(err)
	}
}

// tryPublish is publish for any goroutine: it returns its error. The RPM
// is copied into the web root first, the signed manifest written aside and
// renamed over the old one.
func (p *publisher) tryPublish(src, file string, extra ...string) error {
	b, err := os.ReadFile(filepath.Join(p.rpms, file))
	if err != nil {
		return err
	}
	staged := filepath.Join(p.www, "rpms", file)
	if err := os.WriteFile(staged, b, 0o644); err != nil {
		return err
	}
	signed := filepath.Join(p.work, "signed.json")
	for _, args := range [][]string{
		append([]string{"manifest", "add", "--manifest", src, "--rpm", staged, "--url", "rpms/" + file}, extra...),
		{"manifest", "sign", "--in", src, "--key", filepath.Join(p.keys, "release.key"), "--out", signed},
	} {
		cmd := exec.Command(p.bin, args...)
		cmd.Dir = p.work
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %v\n%s", p.bin, strings.Join(args, " "), err, out)
		}
	}
	return os.Rename(signed, filepath.Join(p.www, "manifest.json"))
}

// cli runs the agent binary's publisher commands.
func (p *publisher) cli(args ...string) string { return runCmd(p.t, p.work, nil, p.bin, args...) }

// stage copies a built RPM into the web root and returns its path there.
func (p *publisher) stage(file string) string {
	p.t.Helper()
	b, err := os.ReadFile(filepath.Join(p.rpms, file))
	if err != nil {
		p.t.Fatal(err)
	}
	dst := filepath.Join(p.www, "rpms", file)
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		p.t.Fatal(err)
	}
	return dst
}
