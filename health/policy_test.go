package health

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPolicyValidate(t *testing.T) {
	if err := DefaultPolicy().Validate(); err != nil {
		t.Fatalf("default policy: %v", err)
	}
	tests := []struct {
		name string
		p    Policy
		want string
	}{
		{"unknown attributed kind", Policy{Attributed: []Kind{"opps"}}, `attributed: unknown kind "opps"`},
		{"unknown soak kind", Policy{SoakUnattributed: []Kind{"crash"}}, `soak_unattributed: unknown kind "crash"`},
		{"zero threshold", Policy{Thresholds: map[Kind]int{KindWarning: 0}, Window: time.Minute}, "warning: 0 must be >= 1"},
		{"threshold without window", Policy{Thresholds: map[Kind]int{KindWarning: 3}}, "window: must be > 0"},
		{"unknown threshold kind", Policy{Thresholds: map[Kind]int{"warn": 3}, Window: time.Minute}, `unknown kind "warn"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func ev(kind Kind, module string) Event {
	return Event{Kind: kind, Header: string(kind) + " report", RIP: Frame{Func: "f", Module: module}}
}

func TestJudge(t *testing.T) {
	p := Suspect{Name: "klp_x", Functions: []Function{{"vmlinux", "cmdline_proc_show"}}}
	t0 := time.Unix(1000, 0)
	type step struct {
		ev       Event
		patch    Suspect
		soaking  bool
		at       time.Duration
		rollback bool
		reason   string
	}
	tests := []struct {
		name  string
		pol   Policy
		steps []step
	}{
		{"attributed oops", DefaultPolicy(), []step{{ev: ev(KindOops, "klp_x"), patch: p, rollback: true, reason: "oops attributed to klp_x"}}},
		{"attributed through a replaced function", DefaultPolicy(), []step{{ev: Event{Kind: KindWarning, RIP: Frame{Func: "cmdline_proc_show"}}, patch: p, rollback: true}}},
		{"unattributed oops while soaking", DefaultPolicy(), []step{{ev: ev(KindOops, "ext4"), patch: p, soaking: true, rollback: true, reason: "while klp_x was soaking"}}},
		{"unattributed oops after the soak", DefaultPolicy(), []step{{ev: ev(KindOops, "ext4"), patch: p}}},
		{"no patch, nothing to roll back", DefaultPolicy(), []step{{ev: ev(KindPanic, "klp_x"), soaking: true}}},
		{"failing health command while soaking", DefaultPolicy(), []step{{ev: Event{Kind: kindCommand, Header: "health command failed"}, patch: p, soaking: true, rollback: true}}},
		{"failing health command after the soak", DefaultPolicy(), []step{{ev: Event{Kind: kindCommand}, patch: p}}},
		{"warning burst reaches the threshold", Policy{Thresholds: map[Kind]int{KindWarning: 3}, Window: 10 * time.Minute}, []step{
			{ev: ev(KindWarning, "e1000"), patch: p, at: 0},
			{ev: ev(KindWarning, "e1000"), patch: p, at: time.Minute},
			{ev: ev(KindWarning, "e1000"), patch: p, at: 2 * time.Minute, rollback: true, reason: "3 warning reports within 10m0s under klp_x (threshold 3)"},
		}},
		{"old warnings fall out of the window", Policy{Thresholds: map[Kind]int{KindWarning: 2}, Window: 10 * time.Minute}, []step{
			{ev: ev(KindWarning, ""), patch: p, at: 0},
			{ev: ev(KindWarning, ""), patch: p, at: 11 * time.Minute},
			{ev: ev(KindWarning, ""), patch: p, at: 22 * time.Minute},
		}},
		{"counts restart with a new patch", Policy{Thresholds: map[Kind]int{KindHungTask: 2}, Window: time.Hour}, []step{
			{ev: ev(KindHungTask, ""), patch: p, at: 0},
			{ev: ev(KindHungTask, ""), patch: Suspect{Name: "klp_y"}, at: time.Minute},
			{ev: ev(KindHungTask, ""), patch: Suspect{Name: "klp_y"}, at: 2 * time.Minute, rollback: true},
		}},
		{"kinds not in the policy are recorded only", Policy{}, []step{{ev: ev(KindOops, "klp_x"), patch: p, soaking: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := &Judge{Policy: tt.pol}
			for i, s := range tt.steps {
				v := j.Judge(s.ev, s.patch, s.soaking, t0.Add(s.at))
				if v.Rollback != s.rollback || !strings.Contains(v.Reason, s.reason) {
					t.Fatalf("step %d: %+v, want rollback=%v reason ~%q", i, v, s.rollback, s.reason)
				}
			}
		})
	}
}
