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
// struct, usually) through Text: fields, slice and array elements, map
// keys and values, through pointers, interfaces and embedded structs. A
// new string field of a status type is covered without being listed.
// Only *v is changed in place; anything it reaches is copied before it is
// changed (copy on write), so a status that shares a slice, a map or a
// pointer with live data (the manifest in force) never writes to it.
func Strings(v any) {
	p := reflect.ValueOf(v)
	if p.Kind() != reflect.Pointer || p.IsNil() {
		return
	}
	if c, changed := clean(p.Elem()); changed {
		p.Elem().Set(c)
	}
}

// clean returns v with every exported string sanitised and true, or v
// itself and false when nothing needed it; v is never written to.
func clean(v reflect.Value) (reflect.Value, bool) {
	switch v.Kind() {
	case reflect.String:
		if Safe(v.String()) {
			return v, false
		}
		c := reflect.New(v.Type()).Elem()
		c.SetString(Text(v.String()))
		return c, true
	case reflect.Pointer:
		if v.IsNil() {
			return v, false
		}
		e, changed := clean(v.Elem())
		if !changed {
			return v, false
		}
		c := reflect.New(v.Type().Elem())
		c.Elem().Set(e)
		return c, true
	case reflect.Interface:
		if v.IsNil() {
			return v, false
		}
		e, changed := clean(v.Elem())
		if !changed {
			return v, false
		}
		c := reflect.New(v.Type()).Elem()
		c.Set(e)
		return c, true
	case reflect.Struct:
		return cleanFields(v)
	case reflect.Array:
		return cleanElems(v, reflect.New(v.Type()).Elem())
	case reflect.Slice:
		if v.IsNil() {
			return v, false
		}
		return cleanElems(v, reflect.MakeSlice(v.Type(), v.Len(), v.Len()))
	case reflect.Map:
		return cleanMap(v)
	}
	return v, false
}

func cleanFields(v reflect.Value) (reflect.Value, bool) {
	var c reflect.Value
	for i := range v.NumField() {
		if !v.Type().Field(i).IsExported() {
			continue
		}
		f, changed := clean(v.Field(i))
		if !changed {
			continue
		}
		if !c.IsValid() {
			c = reflect.New(v.Type()).Elem()
			c.Set(v)
		}
		c.Field(i).Set(f)
	}
	if !c.IsValid() {
		return v, false
	}
	return c, true
}

// cleanElems fills c (a fresh array or slice of v's length) when an
// element changes.
func cleanElems(v, c reflect.Value) (reflect.Value, bool) {
	changedAny := false
	for i := range v.Len() {
		e, changed := clean(v.Index(i))
		if changed && !changedAny {
			reflect.Copy(c, v)
			changedAny = true
		}
		if changed {
			c.Index(i).Set(e)
		}
	}
	if !changedAny {
		return v, false
	}
	return c, true
}

func cleanMap(v reflect.Value) (reflect.Value, bool) {
	if v.IsNil() {
		return v, false
	}
	type entry struct{ k, e reflect.Value }
	var entries []entry
	changedAny := false
	iter := v.MapRange()
	for iter.Next() {
		k, kc := clean(iter.Key())
		e, ec := clean(iter.Value())
		changedAny = changedAny || kc || ec
		entries = append(entries, entry{k, e})
	}
	if !changedAny {
		return v, false
	}
	c := reflect.MakeMapWithSize(v.Type(), len(entries))
	for _, en := range entries {
		c.SetMapIndex(en.k, en.e)
	}
	return c, true
}
