package klp_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klp-agent/klp-agent/internal/testutil/rpmtest"
	"github.com/klp-agent/klp-agent/klp"
)

var errFakeInstall = errors.New("fake rpm -U refused")

// fakeRPM answers rpm -q from a table (name → installed files; a name not
// there is not installed) and refuses every rpm -U, recording the calls.
type fakeRPM struct {
	installed map[string][]string
	unsigned  bool        // rpmkeys --checksig fails
	queried   chan string // each rpm -q's name (and "rpmkeys"), if set

	mu    sync.Mutex
	calls []string // "-q name" or "-U file"
}

func (f *fakeRPM) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	last := args[len(args)-1]
	switch {
	case slices.Contains(args, "-q"):
		f.record("-q " + last)
		if f.queried != nil {
			f.queried <- last
		}
		files, ok := f.installed[last]
		if !ok {
			return nil, errors.New("package " + last + " is not installed")
		}
		out := "=klp-agent-instance " + last + "-9-1.noarch\n"
		for _, p := range files {
			out += p + "\n"
		}
		return []byte(out), nil
	case name == "rpmkeys":
		f.record("rpmkeys " + filepath.Base(last))
		if f.queried != nil {
			f.queried <- "rpmkeys"
		}
		if f.unsigned {
			return nil, errors.New("rpmkeys: NOT OK")
		}
		return []byte(last + ": digests signatures OK\n"), nil
	case slices.Contains(args, "-U"):
		f.record("-U " + filepath.Base(last))
		return nil, errFakeInstall
	}
	f.record(name + " " + last)
	return nil, errors.New("unexpected command")
}

func (f *fakeRPM) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeRPM) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func sortedCalls(c []string) []string {
	c = slices.Clone(c)
	slices.Sort(c)
	return c
}

func nameCheckRPM(t *testing.T, pkg string) (string, klp.Want) {
	t.Helper()
	mod := "klp_names_1"
	f := rpmtest.Build(t, t.TempDir(), rpmtest.Spec{Name: pkg, Module: mod, Level: 1, KernelRelease: krel, KO: goodKO(t, mod, krel)})
	sum, size := sha256File(t, f)
	return f, klp.Want{KernelRelease: krel, Name: mod, Level: 1, SHA256: sum, Size: size}
}

// The name-collision check (an RPM named like an installed package that
// is not a livepatch: rpm -U would replace it) still refuses before rpm -U,
// whoever started rpm -q: Apply itself, or the caller for the same name. A
// check the caller started for another name is not trusted: the verified
// header's name is queried and judged.
func TestApplyNameCheckRefusesBeforeInstall(t *testing.T) {
	file, want := nameCheckRPM(t, "openssh-server")
	sshd := []string{"/usr/sbin/sshd", "/usr/sbin"}
	lp := []string{"/usr/lib/klp-agent/livepatches/" + krel + "/klp_names_0.ko", "/usr/lib/klp-agent/livepatches/" + krel}
	for _, tt := range []struct {
		name      string
		installed map[string][]string
		caller    string // the name the caller's check queries; "" none
		err       error
		calls     []string
	}{
		{"foreign, Apply queries", map[string][]string{"openssh-server": sshd}, "", klp.ErrForeignPackage, []string{"-q openssh-server"}},
		{"foreign, the caller queried", map[string][]string{"openssh-server": sshd}, "openssh-server", klp.ErrForeignPackage, []string{"-q openssh-server"}},
		{"foreign, the caller queried another name", map[string][]string{"openssh-server": sshd}, "klp-other", klp.ErrForeignPackage,
			[]string{"-q klp-other", "-q openssh-server"}},
		{"a livepatch of that name", map[string][]string{"openssh-server": lp}, "openssh-server", errFakeInstall,
			[]string{"-q openssh-server", "-U " + filepath.Base(file)}},
		{"not installed", nil, "", errFakeInstall, []string{"-q openssh-server", "-U " + filepath.Base(file)}},
		{"signed", nil, "", errFakeInstall, []string{"-q openssh-server", "rpmkeys " + filepath.Base(file), "-U " + filepath.Base(file)}},
		{"unsigned", nil, "", klp.ErrSignature, []string{"-q openssh-server", "rpmkeys " + filepath.Base(file)}},
		{"unsigned and foreign", map[string][]string{"openssh-server": sshd}, "", klp.ErrForeignPackage,
			[]string{"-q openssh-server", "rpmkeys " + filepath.Base(file)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeRPM{installed: tt.installed, unsigned: tt.name == "unsigned" || tt.name == "unsigned and foreign"}
			in := &klp.Installer{RPM: &klp.RPM{Runner: f}, Root: t.TempDir(), CheckSig: strings.Contains(tt.name, "signed")}
			w := want
			if tt.caller != "" {
				w.NameCheck = in.StartNameCheck(context.Background(), tt.caller)
			}
			_, err := in.Apply(context.Background(), file, w)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			// The caller's query and Apply's run side by side.
			if got := f.got(); !slices.Equal(sortedCalls(got), sortedCalls(tt.calls)) {
				t.Fatalf("rpm calls %q, want %q", got, tt.calls)
			}
		})
	}
}

// rpm -q starts as soon as the header names the package, and rpmkeys
// (when signatures are required) as the apply starts, beside the payload
// read, not after it: the RPM comes through a FIFO whose last byte is
// written only once both were asked (the old order, each after the whole
// file was hashed, never asks them and the test gives up).
func TestApplySubprocessesRunBesideTheRead(t *testing.T) {
	file, want := nameCheckRPM(t, "klp-names")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		checkSig bool
		asked    []string // before the last byte
		calls    []string
	}{
		{false, []string{"klp-names"}, []string{"-q klp-names", "-U klp-names.rpm"}},
		{true, []string{"klp-names", "rpmkeys"}, []string{"-q klp-names", "rpmkeys klp-names.rpm", "-U klp-names.rpm"}},
	} {
		t.Run(fmt.Sprint("checksig=", tt.checkSig), func(t *testing.T) {
			fifo := filepath.Join(t.TempDir(), "klp-names.rpm")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			f := &fakeRPM{queried: make(chan string, 4)}
			in := &klp.Installer{RPM: &klp.RPM{Runner: f}, Root: t.TempDir(), CheckSig: tt.checkSig}
			writer := make(chan error, 1)
			go func() {
				w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
				if err != nil {
					writer <- err
					return
				}
				defer w.Close()
				if _, err := w.Write(b[:len(b)-1]); err != nil {
					writer <- err
					return
				}
				var asked []string
				for len(asked) < len(tt.asked) {
					select {
					case name := <-f.queried:
						asked = append(asked, name)
					case <-time.After(10 * time.Second):
						writer <- fmt.Errorf("asked %q while the file was still being read, want %q", asked, tt.asked)
						return
					}
				}
				if !slices.Equal(sortedCalls(asked), sortedCalls(tt.asked)) {
					writer <- fmt.Errorf("asked %q, want %q", asked, tt.asked)
					return
				}
				_, err = w.Write(b[len(b)-1:])
				writer <- err
			}()
			_, err = in.Apply(context.Background(), fifo, want)
			if werr := <-writer; werr != nil {
				t.Fatal(werr)
			}
			if !errors.Is(err, errFakeInstall) {
				t.Fatalf("err = %v, want the fake rpm -U's refusal (verified, checked, then installed)", err)
			}
			if got := f.got(); !slices.Equal(sortedCalls(got), sortedCalls(tt.calls)) || got[len(got)-1] != tt.calls[len(tt.calls)-1] {
				t.Fatalf("rpm calls %q, want %q, rpm -U last", got, tt.calls)
			}
		})
	}
}

// PackageName reads the header alone: it names the package of an RPM cut
// short in its payload (which InspectRPM refuses), and refuses what is not
// an RPM.
func TestPackageNameReadsTheHeaderOnly(t *testing.T) {
	file, _ := nameCheckRPM(t, "klp-names")
	if name, err := klp.PackageName(file); err != nil || name != "klp-names" {
		t.Fatalf("PackageName = %q, %v; want klp-names", name, err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.rpm")
	// The payload is the module, at least its ELF header past the RPM
	// headers: 64 bytes short of the end is inside the payload.
	if err := os.WriteFile(cut, b[:len(b)-64], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := klp.InspectRPM(cut); err == nil {
		t.Fatal("InspectRPM read a cut payload")
	}
	if name, err := klp.PackageName(cut); err != nil || name != "klp-names" {
		t.Fatalf("PackageName of a cut payload = %q, %v; want klp-names", name, err)
	}
	junk := filepath.Join(t.TempDir(), "junk.rpm")
	if err := os.WriteFile(junk, []byte("not an rpm, not at all, long enough for a lead........................................................"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := klp.PackageName(junk); !errors.Is(err, klp.ErrNotRPM) {
		t.Fatalf("PackageName of junk: %v, want ErrNotRPM", err)
	}
}
