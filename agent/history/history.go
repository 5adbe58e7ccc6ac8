// Package history is the host's event history: what the agent did and
// why (applies, soaks, rollbacks with their causes, blocks, the operator's
// controls, kill-switch boots), kept in the state directory so "what
// happened on this host last week" has an answer after the journal has
// rotated it away.
//
// It is an append-only JSON-lines file: one Event per line, each appended
// with a single write and fsynced. When the file would grow past MaxBytes
// it is renamed to its ".1" sibling (replacing the older one) and a new
// file begins, so the history never takes more than twice MaxBytes. Files
// are opened with O_NOFOLLOW (a symlink planted at the name is refused,
// never written through) and created 0600: reasons and operator names are
// root's business, as the state file is.
package history

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// MaxBytes is the size at which the current file is rotated (documented in
// README "The daemon" and klp-agent(8)).
const MaxBytes = 1 << 20

// maxLine bounds one line when reading (an event is far smaller; a longer
// line is damage and is skipped).
const maxLine = 64 << 10

// Kind is what happened.
type Kind string

// Kinds of events, each recorded where the agent journals it.
const (
	KindApply      Kind = "apply"       // a level installed and enabled; it soaks
	KindGood       Kind = "good"        // a level passed its soak
	KindReapply    Kind = "reapply"     // the recorded level re-applied after a boot
	KindStall      Kind = "stall"       // a transition stalled and was reversed
	KindRollback   Kind = "rollback"    // stepped back, with its cause
	KindBlock      Kind = "block"       // a level blocked on this host
	KindUnblock    Kind = "unblock"     // klp-agent unblock
	KindHold       Kind = "hold"        // klp-agent hold
	KindResume     Kind = "resume"      // klp-agent resume
	KindPin        Kind = "pin"         // klp-agent pin LEVEL
	KindUnpin      Kind = "unpin"       // klp-agent pin --clear
	KindKillSwitch Kind = "kill-switch" // a boot with klp_agent.enable=0
	KindUninstall  Kind = "uninstall"   // klp-agent uninstall took the kernel back to no patch
)

// Event is one line of the history.
type Event struct {
	Time   time.Time `json:"time"`
	Kind   Kind      `json:"kind"`
	Kernel string    `json:"kernel,omitempty"`
	Patch  string    `json:"patch,omitempty"`
	Level  int       `json:"level,omitempty"`
	SHA256 string    `json:"sha256,omitempty"`
	// Duration is how long the step took (apply, rollback, re-apply) or
	// lasted (a soak, from apply to good).
	Duration time.Duration `json:"duration_ns,omitempty"`
	// Cause is a rollback's or block's typed cause (state.Cause).
	Cause string `json:"cause,omitempty"`
	// Reason is the human reason: a rollback's, a block's, a control's
	// --reason, the kill switch's.
	Reason string `json:"reason,omitempty"`
	// To is where a rollback stepped back to ("klp_x@1", or "no patch").
	To       string    `json:"to,omitempty"`
	Until    time.Time `json:"until,omitzero"` // a hold's end, if it has one
	Operator string    `json:"operator,omitempty"`
	Evidence []string  `json:"evidence,omitempty"`
}

// Log is the history at Path; the rotated half is Path+".1" (both named by
// state.Layout).
type Log struct {
	Path, Old string
	// Max is the rotation size (0: MaxBytes).
	Max int64
}

func (l Log) max() int64 {
	if l.Max > 0 {
		return l.Max
	}
	return MaxBytes
}

// Append adds ev as one line and fsyncs it. Callers journal an error and
// go on: the history must never stop an apply or a rollback.
func (l Log) Append(ev Event) error {
	line, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	line = append(line, '\n')
	f, err := openAppend(l.Path)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() > 0 && fi.Size()+int64(len(line)) > l.max() {
		f.Close()
		if err := os.Rename(l.Path, l.Old); err != nil {
			return fmt.Errorf("history: rotate: %w", err)
		}
		if f, err = openAppend(l.Path); err != nil {
			return err
		}
		if err := syncDir(filepath.Dir(l.Path)); err != nil {
			f.Close()
			return err
		}
	} else if err != nil {
		f.Close()
		return fmt.Errorf("history: %w", err)
	}
	_, err = f.Write(line)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("history: append %s: %w", l.Path, err)
	}
	return nil
}

// openAppend opens path for appending, creating it 0600; a symlink or
// anything but a regular file at path is refused.
func openAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		return nil, fmt.Errorf("history: open %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("history: %s is not a regular file", path)
	}
	return f, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("history: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("history: sync %s: %w", dir, err)
	}
	return nil
}

// Read returns every event kept, oldest first (the rotated file, then the
// current one). A line that does not parse (a torn last write after a
// power cut) is skipped and counted in skipped. Missing files are an empty
// history.
func (l Log) Read() (events []Event, skipped int, err error) {
	for _, p := range []string{l.Old, l.Path} {
		evs, n, err := readFile(p)
		if err != nil {
			return nil, 0, err
		}
		events, skipped = append(events, evs...), skipped+n
	}
	// Shown in the order written (a clock stepped back shows as such).
	return events, skipped, nil
}

func readFile(path string) ([]Event, int, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("history: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("history: %s is not a regular file", path)
	}
	var out []Event
	skipped := 0
	r := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := readLine(r)
		if len(line) > 0 {
			var ev Event
			if json.Unmarshal(line, &ev) != nil || ev.Kind == "" {
				skipped++
			} else {
				out = append(out, ev)
			}
		}
		if errors.Is(err, io.EOF) {
			return out, skipped, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("history: read %s: %w", path, err)
		}
	}
}

// readLine reads one line; a line longer than maxLine is discarded and
// returned as "{", which does not parse, so it is counted as skipped.
func readLine(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	long := false
	for {
		chunk, err := r.ReadSlice('\n')
		if !long && len(buf)+len(chunk) <= maxLine {
			buf = append(buf, chunk...)
		} else {
			long, buf = true, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if long {
			return []byte("{"), err
		}
		return bytes.TrimSpace(buf), err
	}
}

// Since keeps the events at or after t (all of them when t is zero).
func Since(events []Event, t time.Time) []Event {
	if t.IsZero() {
		return events
	}
	var out []Event
	for _, ev := range events {
		if !ev.Time.Before(t) {
			out = append(out, ev)
		}
	}
	return out
}
