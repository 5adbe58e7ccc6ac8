package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
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

// Write collects the status from in and writes it atomically, 0644.
// stopped is set when the daemon stops cleanly.
func (s *Snapshot) Write(in agent.StatusInput, stopped time.Time) error {
	if s.Path == "" {
		return nil
	}
	st, err := agent.CollectStatus(in)
	if err != nil {
		return fmt.Errorf("status snapshot: %w", err)
	}
	st.Daemon = &agent.DaemonInfo{PID: s.PID, Since: s.Since, Version: s.Version, Written: in.Now, Stopped: stopped}
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
	b, err := os.ReadFile(path)
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
