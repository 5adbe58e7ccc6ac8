package klp

import (
	"context"
	"fmt"
)

// NameCheck is rpm's answer for one package name (rpm -q: its installed
// instances and their files), asked in the background: rpm -q is a
// process start and a database open, about ten times the rest of the
// verification, so it runs beside the payload read instead of after it.
// Apply judges the answer (checkName) before rpm -U, as before; only the
// wait moved.
type NameCheck struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{}
	ins    []Instance
	err    error
}

// StartNameCheck starts rpm -q of name. A caller that knows the package
// name before Apply (the agent reads the header before recording the
// apply) starts it there and hands it over in Want.NameCheck; Apply starts
// its own as soon as it has read the header otherwise. The name may come
// from bytes not yet verified: the query only reads rpm's database, with
// the name as one argument after "--", and Apply uses the answer only for
// the name the verified header says.
func (in *Installer) StartNameCheck(ctx context.Context, name string) *NameCheck {
	ctx, cancel := context.WithCancel(ctx)
	c := &NameCheck{name: name, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer cancel()
		c.ins, c.err = in.RPM.Instances(ctx, name)
	}()
	return c
}

// Name is the package name queried.
func (c *NameCheck) Name() string { return c.name }

// Stop cancels the query if it still runs and waits for it to end: for a
// caller whose apply did not happen.
func (c *NameCheck) Stop() {
	if c == nil {
		return
	}
	c.cancel()
	<-c.done
}

// wait is rpm's answer, once it has come.
func (c *NameCheck) wait(ctx context.Context) ([]Instance, error) {
	select {
	case <-c.done:
		return c.ins, c.err
	case <-ctx.Done():
		return nil, fmt.Errorf("query %s: %w", c.name, ctx.Err())
	}
}
