// Package runtest runs a long-lived Run(ctx) function (the daemon, the
// loop) in a test until the test stops it or ends.
package runtest

import (
	"context"
	"testing"
)

// Start runs run in a goroutine and returns stop, which cancels its
// context and returns run's error; stop is idempotent and also runs when
// the test ends.
func Start(t *testing.T, run func(context.Context) error) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			err = <-done
		}
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}
