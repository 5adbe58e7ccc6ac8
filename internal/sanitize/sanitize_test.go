package sanitize

import "testing"

func TestText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain text, ünïcode ✓", "plain text, ünïcode ✓"},
		{"Not Found\x1b[2J", `Not Found\x1b[2J`},
		{"a\rb\nc\td", `a\rb\nc\td`},
		{"csi\xc2\x9b31m", `csi\x9b31m`}, // U+009B, the one-character CSI
		{"raw\x9b31m", `raw\x9b31m`},     // a lone 0x9b byte (invalid UTF-8)
		{"del\x7f", `del\x7f`},
		{"nul\x00", `nul\x00`},
		{"bell\a", `bell\x07`},
		{"evil\u202egnp.exe", `evil\u202egnp.exe`},
		{"iso\u2066x\u2069", `iso\u2066x\u2069`},
		{"ls\u2028ps\u2029", `ls\u2028ps\u2029`},
		{"bad\xff\xfe", `bad\xff\xfe`},
		{`back\slash`, `back\slash`},
	} {
		if got := Text(tc.in); got != tc.want {
			t.Errorf("Text(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if Safe(tc.in) != (tc.in == tc.want) {
			t.Errorf("Safe(%q) = %v", tc.in, Safe(tc.in))
		}
		if !Safe(Text(tc.in)) {
			t.Errorf("Text(%q) = %q is not safe", tc.in, Text(tc.in))
		}
	}
}

func TestStrings(t *testing.T) {
	type inner struct {
		S    string
		list []string // unexported: left alone
	}
	type named string
	type outer struct {
		A   string
		N   named
		P   *inner
		L   []inner
		M   map[string]string
		MP  map[string]*inner
		Arr [2]string
		inner
		I any
	}
	e := "x\x1b[2Jy"
	w := `x\x1b[2Jy`
	o := &outer{A: e, N: named(e), P: &inner{S: e}, L: []inner{{S: e}}, M: map[string]string{e: e, "ok": "ok"},
		MP: map[string]*inner{"k": {S: e}}, Arr: [2]string{e, "ok"}, inner: inner{S: e, list: []string{e}}, I: &inner{S: e}}
	Strings(o)
	if o.A != w || string(o.N) != w || o.P.S != w || o.L[0].S != w || o.M[w] != w || o.M["ok"] != "ok" || len(o.M) != 2 ||
		o.MP["k"].S != w || o.Arr[0] != w || o.I.(*inner).S != w {
		t.Errorf("not sanitised: %+v", o)
	}
	if o.inner.S != e || o.inner.list[0] != e {
		t.Errorf("unexported embedded struct changed: %+v", o.inner)
	}
	Strings(nil)
	Strings((*outer)(nil))
}

// Strings never writes to what the value shares: a slice, a map or a
// pointee it reaches is copied before it is changed, and a clean one is
// kept as it is.
func TestStringsCopiesOnWrite(t *testing.T) {
	type leaf struct{ S string }
	type doc struct {
		P     *leaf
		L     []string
		M     map[string]string
		Clean []string
	}
	e, w := "x\x1b[2J", `x\x1b[2J`
	shared := &leaf{S: e}
	list := []string{"ok", e}
	m := map[string]string{"k": e}
	clean := []string{"ok"}
	d := &doc{P: shared, L: list, M: m, Clean: clean}
	Strings(d)
	if d.P.S != w || d.L[1] != w || d.M["k"] != w {
		t.Fatalf("not sanitised: %+v", d)
	}
	if shared.S != e || list[1] != e || m["k"] != e {
		t.Errorf("shared data written to: %q %q %q", shared.S, list[1], m["k"])
	}
	if &d.Clean[0] != &clean[0] {
		t.Errorf("a clean slice was copied")
	}
}
