package manifest

import (
	"errors"
	"strings"
	"testing"
)

// annotated is validPayload with the informational fields publishers may
// add: older hosts refuse unknown keys, so new information goes into
// annotations, which every host since this schema accepts.
func annotated() string {
	return strings.Replace(validPayload(), "revoked:", `annotations:
  publisher: kernel-team@example
  ticket.example/id: "OPS-1234"
revoked:`, 1) + ""
}

func TestAnnotationsAndFixesParseSigned(t *testing.T) {
	k1 := newTestKey(t)
	payload := strings.Replace(annotated(), "    size: 7678\n", `    size: 7678
    description: "cmdline_proc_show reads past the end of saved_command_line"
    cves: [CVE-2026-12345, CVE-2025-0001]
    advisory: https://security.example/DSA-5999-1
    annotations: {risk: low}
`, 1)
	v, err := (Trust{Keys: keyring(k1), Threshold: 1}).Verify(sign(t, payload, k1), now, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := v.Patches[0]
	if p.Fixes() != "cmdline_proc_show reads past the end of saved_command_line; CVE-2026-12345, CVE-2025-0001; https://security.example/DSA-5999-1" ||
		p.Annotations["risk"] != "low" || v.Annotations["ticket.example/id"] != "OPS-1234" {
		t.Fatalf("parsed %+v, manifest annotations %v", p, v.Annotations)
	}
	// The same in the canonical JSON rendering.
	b, err := MarshalJSON(v.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseFor(b, DefaultMaxSize, p.Kernel)
	if err != nil || m.Patches[0].Fixes() != p.Fixes() || m.Annotations["publisher"] != "kernel-team@example" {
		t.Fatalf("JSON round trip: %v %+v", err, m)
	}
}

func TestAnnotationsDoNotLoosenStrictParsing(t *testing.T) {
	k1 := newTestKey(t)
	trust := Trust{Keys: keyring(k1), Threshold: 1}
	for name, payload := range map[string]string{
		"unknown top-level key":     annotated() + "mirror: x\n",
		"unknown patch key":         strings.Replace(annotated(), "    size: 7678\n", "    size: 7678\n    severity: high\n", 1),
		"annotation not a string":   strings.Replace(annotated(), "  publisher: kernel-team@example", "  publisher: {name: x}", 1),
		"annotation key":            strings.Replace(annotated(), "  publisher:", "  \"pub lisher\":", 1),
		"annotation escape":         strings.Replace(annotated(), "kernel-team@example", "\"\\e[31mred\"", 1),
		"bad CVE":                   strings.Replace(annotated(), "    size: 7678\n", "    size: 7678\n    cves: [CVE-26-1]\n", 1),
		"description with newline":  strings.Replace(annotated(), "    size: 7678\n", "    size: 7678\n    description: \"a\\nb\"\n", 1),
		"too long description":      strings.Replace(annotated(), "    size: 7678\n", "    size: 7678\n    description: "+strings.Repeat("x", MaxDescription+1)+"\n", 1),
		"patch annotations not map": strings.Replace(annotated(), "    size: 7678\n", "    size: 7678\n    annotations: [a]\n", 1),
	} {
		if _, err := trust.Verify(sign(t, payload, k1), now, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestJSONAnnotationsStrict(t *testing.T) {
	for name, payload := range map[string]string{
		"duplicate annotation": `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","annotations":{"a":"1","a":"2"}}`,
		"annotation number":    `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","annotations":{"a":1}}`,
		"unknown member":       `{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","annotations":{},"notes":"x"}`,
	} {
		if _, err := ParseFor([]byte(payload), DefaultMaxSize, "k1"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	m, err := ParseFor([]byte(`{"schema":1,"version":1,"expires":"2027-01-01T00:00:00Z","annotations":{"a":"1"}}`), DefaultMaxSize, "k1")
	if err != nil || m.Annotations["a"] != "1" {
		t.Fatalf("%v %+v", err, m)
	}
}
