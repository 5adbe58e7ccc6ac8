// Package window is maintenance windows: the weekly stretches of time in
// which the agent may apply a new livepatch level (apply.windows). A
// rollback never waits for one.
package window

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrInvalid is a window that cannot be understood.
var ErrInvalid = errors.New("invalid maintenance window")

// Spec is a window as the configuration writes it.
type Spec struct {
	Days     []string `yaml:"days" json:"days"`                             // mon..sun; empty = every day
	Start    string   `yaml:"start" json:"start"`                           // HH:MM
	End      string   `yaml:"end" json:"end"`                               // HH:MM; before Start = past midnight
	Timezone string   `yaml:"timezone,omitempty" json:"timezone,omitempty"` // IANA name; empty = the host's local time
}

// Window is a parsed Spec.
type Window struct {
	Spec       Spec
	days       [7]bool
	start, end int // minutes after midnight
	loc        *time.Location
}

// Set is a list of windows; the empty Set is always open.
type Set []Window

var dayNames = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday,
	"wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// Parse checks a Spec. A timezone is looked up with load (time.LoadLocation
// when nil), so tests need no tzdata.
func Parse(s Spec, load func(string) (*time.Location, error)) (Window, error) {
	w := Window{Spec: s, loc: time.Local}
	if len(s.Days) == 0 {
		w.days = [7]bool{true, true, true, true, true, true, true}
	}
	for _, d := range s.Days {
		wd, ok := dayNames[strings.ToLower(d)]
		if !ok {
			return w, fmt.Errorf("%w: day %q (mon, tue, wed, thu, fri, sat, sun)", ErrInvalid, d)
		}
		w.days[wd] = true
	}
	var err error
	if w.start, err = clock(s.Start); err != nil {
		return w, err
	}
	if w.end, err = clock(s.End); err != nil {
		return w, err
	}
	if w.start == w.end {
		return w, fmt.Errorf("%w: start and end are both %s", ErrInvalid, s.Start)
	}
	if s.Timezone != "" {
		if load == nil {
			load = time.LoadLocation
		}
		if w.loc, err = load(s.Timezone); err != nil {
			return w, fmt.Errorf("%w: timezone %q: %w", ErrInvalid, s.Timezone, err)
		}
	}
	return w, nil
}

// ParseAll parses specs in order.
func ParseAll(specs []Spec, load func(string) (*time.Location, error)) (Set, error) {
	var set Set
	for i, s := range specs {
		w, err := Parse(s, load)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		set = append(set, w)
	}
	return set, nil
}

func clock(s string) (int, error) {
	t, err := time.Parse("15:04", s)
	if err != nil || len(s) != 5 {
		return 0, fmt.Errorf("%w: time %q (HH:MM, 24-hour)", ErrInvalid, s)
	}
	return t.Hour()*60 + t.Minute(), nil
}

// Open reports whether t is inside the window. A window that ends past
// midnight belongs to the day it starts on.
func (w Window) Open(t time.Time) bool {
	t = t.In(w.loc)
	m := t.Hour()*60 + t.Minute()
	if w.start < w.end {
		return w.days[t.Weekday()] && m >= w.start && m < w.end
	}
	// Past midnight: open from start on a listed day, or before end on
	// the day after a listed one.
	return (w.days[t.Weekday()] && m >= w.start) || (w.days[(t.Weekday()+6)%7] && m < w.end)
}

// Open reports whether t is inside any window (always, for none).
func (s Set) Open(t time.Time) bool {
	if len(s) == 0 {
		return true
	}
	for _, w := range s {
		if w.Open(t) {
			return true
		}
	}
	return false
}

// NextOpen is the first minute at or after t when a window is open (t
// itself when one is; the zero time when none opens within 8 days, which
// a valid Set never does).
func (s Set) NextOpen(t time.Time) time.Time {
	if s.Open(t) {
		return t
	}
	// Windows start on whole minutes: step minute by minute from the
	// next one, at most a week and a day (a DST shift moves an hour).
	m := t.Truncate(time.Minute).Add(time.Minute)
	for end := t.Add(8 * 24 * time.Hour); m.Before(end); m = m.Add(time.Minute) {
		if s.Open(m) {
			return m
		}
	}
	return time.Time{}
}

// String describes the windows for status and logs.
func (s Set) String() string {
	if len(s) == 0 {
		return "any time"
	}
	var parts []string
	for _, w := range s {
		days := "daily"
		if len(w.Spec.Days) > 0 {
			days = strings.Join(w.Spec.Days, ",")
		}
		p := fmt.Sprintf("%s %s-%s", days, w.Spec.Start, w.Spec.End)
		if w.Spec.Timezone != "" {
			p += " " + w.Spec.Timezone
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}
