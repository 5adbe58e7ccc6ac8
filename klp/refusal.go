package klp

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/klp-agent/klp-agent/internal/kmsg"
	"golang.org/x/sys/unix"
)

// KernelLog reads what the kernel logs about a load: why it refuses a
// livepatch is in its own words there, not in finit_module's errno
// ("invalid argument" says nothing of a klp_state downgrade).
type KernelLog interface {
	// Mark starts listening; the cursor returns what was logged since.
	Mark() (LogCursor, error)
}

// LogCursor returns the kernel's records since its Mark.
type LogCursor interface {
	// Since returns the text of the kernel's own records (facility 0)
	// logged since Mark, without waiting.
	Since() []string
	Close() error
}

// KmsgLog is the real KernelLog: /dev/kmsg under a root.
type KmsgLog struct{ Path string }

// Mark implements KernelLog: /dev/kmsg opened at its end.
func (k KmsgLog) Mark() (LogCursor, error) {
	fd, err := unix.Open(k.Path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: k.Path, Err: err}
	}
	if _, err := unix.Seek(fd, 0, io.SeekEnd); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "seek", Path: k.Path, Err: err}
	}
	return &kmsgCursor{fd: fd}, nil
}

type kmsgCursor struct{ fd int }

// maxLogRecords bounds what one load's refusal collects.
const maxLogRecords = 256

func (c *kmsgCursor) Since() []string {
	var out []string
	buf := make([]byte, 8192)
	for len(out) < maxLogRecords {
		n, err := unix.Read(c.fd, buf)
		if errors.Is(err, unix.EPIPE) {
			continue // overwritten records: go on with the next
		}
		if err != nil || n <= 0 {
			return out // EAGAIN: nothing more yet
		}
		head, text, ok := strings.Cut(string(buf[:n]), ";")
		if !ok {
			continue
		}
		prio, err := strconv.Atoi(strings.SplitN(head, ",", 2)[0])
		if err != nil || prio>>3 != 0 {
			continue // not the kernel's
		}
		text, _, _ = strings.Cut(text, "\n")
		out = append(out, kmsg.Unescape(text))
	}
	return out
}

func (c *kmsgCursor) Close() error { return unix.Close(c.fd) }

// Refusal is why the kernel would not take a livepatch.
type Refusal string

// Refusals the kernel gives in its log, each deterministic: the same
// module is refused the same way again on this kernel.
const (
	RefusedState         Refusal = "its klp_state versions are lower than the installed livepatches'"
	RefusedPrePatch      Refusal = "its pre-patch callback failed"
	RefusedSignature     Refusal = "its module signature was rejected"
	RefusedLockdown      Refusal = "the kernel is locked down against unsigned modules"
	RefusedSymbols       Refusal = "it needs symbols this kernel does not have, or has in another version"
	RefusedVermagic      Refusal = "it was built for another kernel (version magic)"
	RefusedNotLivepatch  Refusal = "it is not marked as a livepatch"
	RefusedNotCumulative Refusal = "it does not replace the livepatch before it (klp_patch.replace is false)"
	RefusedUnknown       Refusal = ""
)

// Sentinel errors.
var (
	// ErrRefused wraps every RefusedError.
	ErrRefused = errors.New("the kernel refused the livepatch")
	// ErrNotCumulative is a livepatch that leaves the previous one enabled.
	ErrNotCumulative = errors.New("livepatch is not cumulative")
)

// RefusedError is a livepatch the kernel did not take, with its reason and
// the kernel's own words.
type RefusedError struct {
	Module string
	Reason Refusal
	Err    error    // from finit_module, or what the agent saw in sysfs
	Kernel []string // the kernel's log lines about it
}

func (e *RefusedError) Error() string {
	s := "kernel refused " + e.Module
	if e.Reason != RefusedUnknown {
		s += ": " + string(e.Reason)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if len(e.Kernel) > 0 {
		s += "; kernel: " + strings.Join(e.Kernel, " | ")
	}
	return s
}

// Unwrap lets errors.Is see ErrRefused, ErrNotCumulative and the cause.
func (e *RefusedError) Unwrap() []error {
	errs := []error{ErrRefused, e.Err}
	if e.Reason == RefusedNotCumulative {
		errs = append(errs, ErrNotCumulative)
	}
	return errs
}

// Deterministic reports whether the same module would be refused again:
// the kernel said why, in words that do not depend on the moment.
func (e *RefusedError) Deterministic() bool { return e.Reason != RefusedUnknown }

// refusalPatterns map the kernel's lines to reasons (kernel/livepatch/,
// kernel/module/, security/lockdown/; the same text in 6.1 and 6.12).
var refusalPatterns = []struct {
	sub    string
	reason Refusal
}{
	{"is not compatible with the already installed livepatches", RefusedState},
	{"pre-patch callback failed", RefusedPrePatch},
	{"Loading of unsigned module is rejected", RefusedSignature},
	{"Loading of module with unavailable key is rejected", RefusedSignature},
	{"Loading of module with unsupported crypto is rejected", RefusedSignature},
	{"is blacklisted", RefusedSignature},
	{"unsigned module loading is restricted", RefusedLockdown},
	{"disagrees about version of symbol", RefusedSymbols},
	{"Unknown symbol", RefusedSymbols},
	{"no symbol version for", RefusedSymbols},
	{"not found in symbol table", RefusedSymbols},
	{"version magic", RefusedVermagic},
	{"is not marked as a livepatch module", RefusedNotLivepatch},
}

// refusal explains a failed load of module from the kernel's log lines:
// those that name the module, or come from livepatch, module signing or
// lockdown (whose lines do not name it).
func refusal(module string, err error, lines []string) *RefusedError {
	e := &RefusedError{Module: module, Err: err}
	for _, l := range lines {
		if !strings.Contains(l, module) && !strings.HasPrefix(l, "livepatch:") && !strings.HasPrefix(l, "Lockdown:") &&
			!strings.HasPrefix(l, "Loading of ") && !strings.HasPrefix(l, "Module hash") {
			continue
		}
		e.Kernel = append(e.Kernel, l)
		for _, p := range refusalPatterns {
			if e.Reason == RefusedUnknown && strings.Contains(l, p.sub) {
				e.Reason = p.reason
			}
		}
	}
	// Some refusals have their errno and no line of their own (the
	// signature notice is once per boot, lockdown's is rate-limited).
	if e.Reason == RefusedUnknown {
		switch {
		case errors.Is(err, syscall.EKEYREJECTED):
			e.Reason = RefusedSignature
		case errors.Is(err, syscall.ENOEXEC):
			e.Reason = RefusedVermagic
		}
	}
	return e
}

// notCumulative is the refusal of a patch that left previous enabled, or
// that says it does not replace.
func notCumulative(module, why string) *RefusedError {
	return &RefusedError{Module: module, Reason: RefusedNotCumulative, Err: fmt.Errorf("%s", why)}
}
