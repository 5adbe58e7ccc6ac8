package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/config"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/internal/redact"
)

// Snapshot writes the world-readable status snapshot (paths.status_file):
// what `klp-agent status` shows, read by any user and without the
// configuration, with the daemon's pid and start time. It holds no
// secrets: credentials in URLs are redacted, and no key material is in a
// status.
type Snapshot struct {
	Path    string
	PID     int
	Since   time.Time
	Version string
}

// Write writes st, the daemon's status collected at st.At, atomically,
// 0644, as this daemon's: running until it stops (stopped is set when it
// stops cleanly), with the check code and reason it sees.
func (s *Snapshot) Write(st *agent.Status, stopped time.Time) error {
	if s.Path == "" {
		return nil
	}
	st.Daemon = &agent.DaemonInfo{PID: s.PID, Since: s.Since, Version: s.Version, Written: st.At, Stopped: stopped, Running: stopped.IsZero()}
	st.Finish()
	b, err := MarshalStatus(st)
	if err != nil {
		return fmt.Errorf("status snapshot: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(s.Path), 0o755); err != nil {
		return fmt.Errorf("status snapshot: %w", err)
	}
	if err := atomicfile.WriteFile(s.Path, b, 0o644); err != nil {
		return fmt.Errorf("status snapshot: %w", err)
	}
	return nil
}

// userinfo is the user:password@ part of any URL in a text.
var userinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)([^/@\s"]+)@`)

// Redact hides credentials of URLs anywhere in b (JSON included: it never
// touches a quote or a backslash), masked as redact.URL masks them: the
// password, or a user name standing alone (a token). Already masked ones
// stay as they are.
func Redact(b []byte) []byte {
	return userinfo.ReplaceAllFunc(b, func(m []byte) []byte {
		sub := userinfo.FindSubmatch(m)
		user, _, hasPW := strings.Cut(string(sub[2]), ":")
		if !hasPW {
			user = redact.Mask
		} else {
			user += ":" + redact.Mask
		}
		return append(append([]byte{}, sub[1]...), user+"@"...)
	})
}

// MarshalStatus is the status as indented JSON with credentials redacted.
func MarshalStatus(st *agent.Status) ([]byte, error) {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(Redact(b), '\n'), nil
}

// ReadSnapshot reads a status snapshot and says whether its daemon runs.
func ReadSnapshot(path string) (*agent.Status, error) {
	b, err := limitfile.Read(path, 16<<20)
	if err != nil {
		return nil, err
	}
	var st agent.Status
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("status snapshot %s: %w", path, err)
	}
	if d := st.Daemon; d != nil {
		d.Running = d.Stopped.IsZero() && processAlive(d.PID)
	}
	return &st, nil
}

// ReadStatus is `klp-agent status`: the status read directly when the
// configuration at path and the state dir are readable (root), else the
// daemon's snapshot (snap; "" is paths.status_file, else
// config.DefaultStatusFile), which any user can read. Either way it is
// judged at now: whether the daemon runs (the state lock's holder where
// it can be seen, the snapshot otherwise), and whether the configuration
// on disk is one run accepts (CheckStart). viaSnapshot is why the
// snapshot was read (nil: it was not).
func ReadStatus(path, snap string, now time.Time) (s *agent.Status, viaSnapshot, err error) {
	h, err := LoadHost(path)
	if err == nil {
		if snap == "" {
			snap = h.Config.Paths.StatusFile
		}
		var in agent.StatusInput
		if in, err = h.StatusInput(now); err == nil {
			s, err = agent.CollectStatus(in)
		}
		if err == nil {
			var d *agent.DaemonInfo
			if snap != "" {
				if sn, serr := ReadSnapshot(snap); serr == nil {
					d = sn.Daemon
				}
			}
			s.Daemon = Liveness(h.Layout(), d)
			if cerr := h.CheckStart(path); cerr != nil {
				s.ConfigRefused = cerr.Error()
			}
			s.Finish()
			return s, nil, nil
		}
	}
	if snap == "" {
		snap = config.DefaultStatusFile
	}
	s, serr := ReadSnapshot(snap)
	if serr != nil {
		return nil, nil, fmt.Errorf("%w; no status snapshot either (%w): not configured, or the daemon is not running", err, serr)
	}
	if Refused(err) {
		s.ConfigRefused = err.Error()
	}
	s.At = now
	s.Finish()
	return s, fmt.Errorf("%s (%w)", snap, err), nil
}

// Refused says whether err, from LoadHost or ReadStatus, is a
// configuration run would refuse: a configuration that cannot be read for
// want of permission (not root) or is not there is none.
func Refused(err error) bool {
	return errors.Is(err, ErrConfig) && !errors.Is(err, fs.ErrPermission) && !errors.Is(err, fs.ErrNotExist)
}
