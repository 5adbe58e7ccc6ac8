// Package sanitize is the one output boundary for text that came from
// outside the agent (an HTTP reason phrase, a manifest string, a netconsole
// sender or header, kernel text): before it reaches a terminal, the
// journal's MESSAGE or status.json, every byte that could move a cursor,
// clear a screen, hide text or reorder it is replaced by a visible escape.
package sanitize

import (
	"fmt"
	"reflect"
	"strings"
	"unicode/utf8"
)

// Text returns s with C0 controls (tab and newline included, so a line
// cannot be forged), DEL, C1 controls (U+0080-U+009F: 0x9b is a one-byte
// CSI), Unicode bidi overrides and isolates, line and paragraph separators
// and invalid UTF-8 bytes replaced by Go-style escapes (\x1b, \u202e,
// \xff). A backslash stays as it is: the escapes are for a human reader,
// not a reversible encoding. Text of clean input is the input itself.
func Text(s string) string {
	i := firstUnsafe(s)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r):
			writeEscape(&b, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// Safe reports whether s passes through Text unchanged.
func Safe(s string) bool { return firstUnsafe(s) < 0 }

func firstUnsafe(s string) int {
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n <= 1) || unsafeRune(r) {
			return i
		}
		i += n
	}
	return -1
}

func unsafeRune(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
		// Bidi embeddings, overrides, isolates and marks (Trojan Source).
		return true
	case r == 0x2028, r == 0x2029:
		return true
	}
	return false
}

func writeEscape(b *strings.Builder, r rune) {
	switch r {
	case '\n':
		b.WriteString(`\n`)
	case '\r':
		b.WriteString(`\r`)
	case '\t':
		b.WriteString(`\t`)
	default:
		if r < 0x100 {
			fmt.Fprintf(b, `\x%02x`, r)
		} else {
			fmt.Fprintf(b, `\u%04x`, r)
		}
	}
}

// Strings passes every exported string reachable from v (a pointer to a
// struct, usually) through Text in place: fields, slice and array
// elements, map keys and values, through pointers and embedded structs.
// A new string field of a status type is covered without being listed.
func Strings(v any) {
	walk(reflect.ValueOf(v))
}

func walk(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			walk(v.Elem())
		}
	case reflect.String:
		if v.CanSet() {
			if s := v.String(); !Safe(s) {
				v.SetString(Text(s))
			}
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				walk(v.Field(i))
			}
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			walk(v.Index(i))
		}
	case reflect.Map:
		walkMap(v)
	}
}

// walkMap rebuilds a map with string keys: each key and value is
// sanitised (values walked as copies, since map elements cannot be set).
func walkMap(v reflect.Value) {
	if v.IsNil() || v.Type().Key().Kind() != reflect.String {
		return
	}
	kt, et := v.Type().Key(), v.Type().Elem()
	keys := v.MapKeys()
	vals := make([]reflect.Value, len(keys))
	for i, k := range keys {
		vals[i] = v.MapIndex(k)
		v.SetMapIndex(k, reflect.Value{})
	}
	for i, k := range keys {
		nk := reflect.New(kt).Elem()
		nk.SetString(Text(k.String()))
		ne := reflect.New(et).Elem()
		ne.Set(vals[i])
		walk(ne)
		v.SetMapIndex(nk, ne)
	}
}
