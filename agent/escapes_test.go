package agent

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/agent/state"
	"github.com/klp-agent/klp-agent/health"
	"github.com/klp-agent/klp-agent/klp"
)

type journalEntry struct {
	msg  string
	vars map[string]string
}

type journalSink struct {
	mu      sync.Mutex
	entries []journalEntry
}

func (j *journalSink) send(msg string, _ journal.Priority, vars map[string]string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, journalEntry{msg, vars})
	return nil
}

func (j *journalSink) text() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	var b strings.Builder
	for _, e := range j.entries {
		b.WriteString(e.msg + "\n")
		for k, v := range e.vars {
			b.WriteString(k + "=" + v + "\n")
		}
	}
	return b.String()
}

// A netconsole datagram's header (text any host on the allow list, or a
// spoofer, chooses) carrying a screen clear, an OSC title change, a
// carriage return, a forged line and the one-byte CSI reaches the
// journal (MESSAGE and KLP_* fields, through the daemon's own logger) and
// the status snapshot only as visible escapes.
func TestNetconsoleHeaderEscapedInJournalAndStatus(t *testing.T) {
	const header = "Oops: 0000 [#1] SMP\x1b[2J\x1b]0;pwned\x07\r\nFAKE: all good\u009b31m"
	h := newHost(t, 1)
	h.converge([]int{1})
	sink := &journalSink{}
	log, err := logging.New(logging.Options{Format: logging.FormatJournal, Send: sink.send})
	if err != nil {
		t.Fatal(err)
	}
	h.agent.d.Log = log
	events := make(chan health.Event, 1)
	events <- health.Event{Kind: health.KindOops, Source: "netconsole", Sender: "10.0.0.9:6665", Header: header,
		RIP: health.Frame{Func: "cmdline_proc_show", Module: "klp_cmdline_1"}}
	stop := runLoop(t, &Loop{Agent: h.agent, Config: LoopConfig{Interval: time.Hour}, Events: events})
	waitFor(t, "the event recorded", func() bool {
		st, err := (&state.Store{Dir: h.stateDir}).Load()
		return err == nil && len(st.Events) == 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	s, err := CollectStatus(StatusInput{Store: &state.Store{Dir: h.stateDir}, Sysfs: &klp.Sysfs{FS: h.kernel}, Host: h.agent.d.Host, Now: h.now})
	if err != nil {
		t.Fatal(err)
	}
	s.Finish()
	for where, out := range map[string]string{"journal": sink.text(), "status": s.Events[0].Header} {
		for _, bad := range []string{"\x1b", "\x07", "\r", "\nFAKE", "\u009b"} {
			if strings.Contains(out, bad) {
				t.Errorf("%s: %q reached it:\n%q", where, bad, out)
			}
		}
		if !strings.Contains(out, `SMP\x1b[2J\x1b]0;pwned\x07\r\nFAKE: all good\x9b31m`) {
			t.Errorf("%s: the header is not shown escaped:\n%s", where, out)
		}
	}
}
