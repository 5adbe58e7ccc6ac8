package window

import (
	"errors"
	"testing"
	"time"
)

func utc(string) (*time.Location, error) { return time.UTC, nil }

func must(t *testing.T, specs ...Spec) Set {
	t.Helper()
	for i := range specs {
		if specs[i].Timezone == "" {
			specs[i].Timezone = "UTC"
		}
	}
	s, err := ParseAll(specs, utc)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// 2026-11-30 is a Monday.
func at(day int, hhmm string) time.Time {
	t, _ := time.Parse("15:04", hhmm)
	return time.Date(2026, 11, 30+day, t.Hour(), t.Minute(), 0, 0, time.UTC)
}

func TestOpen(t *testing.T) {
	night := must(t, Spec{Days: []string{"mon", "wed"}, Start: "02:00", End: "04:00"})
	overMidnight := must(t, Spec{Days: []string{"fri"}, Start: "23:00", End: "01:30"})
	daily := must(t, Spec{Start: "12:00", End: "13:00"})
	tests := []struct {
		name string
		s    Set
		t    time.Time
		open bool
	}{
		{"no windows: always", nil, at(0, "10:00"), true},
		{"monday inside", night, at(0, "02:00"), true},
		{"monday end is closed", night, at(0, "04:00"), false},
		{"monday before", night, at(0, "01:59"), false},
		{"tuesday", night, at(1, "03:00"), false},
		{"wednesday", night, at(2, "03:59"), true},
		{"friday late", overMidnight, at(4, "23:30"), true},
		{"saturday early belongs to friday", overMidnight, at(5, "01:00"), true},
		{"saturday after end", overMidnight, at(5, "01:30"), false},
		{"saturday late is not friday", overMidnight, at(5, "23:30"), false},
		{"friday early is thursday's", overMidnight, at(4, "00:30"), false},
		{"daily", daily, at(6, "12:30"), true},
	}
	for _, tt := range tests {
		if got := tt.s.Open(tt.t); got != tt.open {
			t.Errorf("%s: Open(%s) = %v", tt.name, tt.t, got)
		}
	}
}

func TestNextOpen(t *testing.T) {
	s := must(t, Spec{Days: []string{"wed"}, Start: "02:00", End: "04:00"})
	if got, want := s.NextOpen(at(0, "10:17")), at(2, "02:00"); !got.Equal(want) {
		t.Errorf("next open %s, want %s", got, want)
	}
	if got := s.NextOpen(at(2, "03:00")); !got.Equal(at(2, "03:00")) {
		t.Errorf("open now: %s", got)
	}
}

func TestTimezone(t *testing.T) {
	berlin := time.FixedZone("CET", 3600)
	s, err := ParseAll([]Spec{{Start: "02:00", End: "04:00", Timezone: "Europe/Berlin"}}, func(string) (*time.Location, error) { return berlin, nil })
	if err != nil {
		t.Fatal(err)
	}
	if !s.Open(at(0, "01:30")) || s.Open(at(0, "03:30")) {
		t.Error("02:00-04:00 CET is 01:00-03:00 UTC")
	}
}

func TestParseRefuses(t *testing.T) {
	for _, s := range []Spec{
		{Days: []string{"monday"}, Start: "02:00", End: "04:00"},
		{Start: "2:00", End: "04:00"},
		{Start: "02:00", End: "24:00"},
		{Start: "02:00", End: "02:00"},
		{Start: "02:00", End: "04:00", Timezone: "Mars/Olympus"},
	} {
		if _, err := Parse(s, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", s, err)
		}
	}
}
