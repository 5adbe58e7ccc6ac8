package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
)

// RollbackRequest is an operator's `klp-agent rollback`, handed to a
// running daemon through the state dir.
type RollbackRequest struct {
	Reason string    `json:"reason"`
	Block  bool      `json:"block"`
	At     time.Time `json:"at"`
}

// WriteRequest hands a rollback request to the daemon.
func WriteRequest(l state.Layout, r RollbackRequest) error {
	b, _ := json.Marshal(r)
	return atomicfile.WriteFile(l.RollbackRequest(), b, 0o600)
}

// RequestPending reports whether a rollback request waits for the daemon.
func RequestPending(l state.Layout) bool {
	_, err := os.Stat(l.RollbackRequest())
	return err == nil
}

// readRequest reads a waiting request; ok is false when there is none. A
// request that cannot be read is an error (and is removed like any other).
func readRequest(l state.Layout) (r RollbackRequest, ok bool, err error) {
	b, err := os.ReadFile(l.RollbackRequest())
	if errors.Is(err, fs.ErrNotExist) {
		return r, false, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		err = fmt.Errorf("rollback request %s: %w", l.RollbackRequest(), err)
	}
	return r, true, err
}

func removeRequest(l state.Layout) { os.Remove(l.RollbackRequest()) }
