package manifest

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Hostile values for a signed string: a screen clear, a carriage return,
// the one-character CSI (U+009B), a right-to-left override, a byte that is
// not UTF-8.
var controlValues = []string{"\x1b[2J", "a\rb", "\u009b31m", "\u202e", "\xff"}

// fullManifest sets every string a manifest can sign, so that each one is
// mutated below (stringSlots fails on an empty one: a new field must be
// given a value here, and is then covered).
func fullManifest() *Manifest {
	return &Manifest{Schema: SchemaVersion, Version: 7, Expires: now.Add(time.Hour),
		Patches: []Patch{{Kernel: "6.1.0-28-amd64", Name: "klp_a", Level: 1, URL: "rpms/a.rpm", SHA256: sha(1), Size: 10,
			Rollout:     &Rollout{Tiers: []string{"canary"}},
			Description: "fixes the thing", CVEs: []string{"CVE-2026-1234"}, Advisory: "RHSA-2026:1",
			Annotations: map[string]string{"ticket": "OPS-1"}}},
		Revoked:     []Revoked{{Name: "klp_b", Level: 2, Kernel: "6.1.0-28-amd64", SHA256: sha(2), Reason: "oopses on boot"}},
		Annotations: map[string]string{"vendor.example/build": "42"},
		Shard:       "6.1.0-28-amd64",
	}
}

// Every string a manifest or a root signs refuses control characters,
// bidi overrides and invalid UTF-8, found by reflection over the schema
// so that a new field is covered without being listed (revocation
// reasons and URLs were not checked before).
func TestSignedStringsRefuseControls(t *testing.T) {
	k1, k2, k3 := newTestKey(t), newTestKey(t), newTestKey(t)
	cases := map[string]struct {
		doc      func() any
		validate func(any) error
	}{
		"manifest": {func() any { return fullManifest() }, func(v any) error { return v.(*Manifest).Validate() }},
		"root": {func() any {
			r := newRoot(1, []testKey{k1}, 1, []testKey{k2}, 1)
			id, rk := NewRootKey(k3.pub)
			r.Keys[id] = rk
			r.Roles.Revoke = &Role{KeyIDs: []string{id}, Threshold: 1}
			return r
		}, func(v any) error { return v.(*Root).Validate() }},
		// revocations.json, the fast channel: its reasons reach status and
		// the journal as much as the manifest's do.
		"revocations": {func() any {
			return &Revocations{Type: RevocationsType, Version: 3, Expires: now.Add(time.Hour),
				Revoked: []Revoked{{Name: "klp_b", Level: 2, Kernel: "6.1.0-28-amd64", SHA256: sha(2), Reason: "oopses on boot"}},
				Paused:  []Pause{{Name: "klp_c", Level: 3, Kernel: "6.1.0-28-amd64", Reason: "canary crashes"}}}
		}, func(v any) error { return v.(*Revocations).Validate() }},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if err := c.validate(c.doc()); err != nil {
				t.Fatalf("the unmutated document is refused: %v", err)
			}
			slots := stringSlots(t, reflect.ValueOf(c.doc()), name)
			if len(slots) < 5 {
				t.Fatalf("only %d string slots found: %v", len(slots), slots)
			}
			for i, slot := range slots {
				for _, bad := range controlValues {
					doc := deepCopy(t, c.doc())
					n := -1
					mutate(reflect.ValueOf(doc), i, &n, func(s string) string { return s + bad })
					if err := c.validate(doc); err == nil {
						t.Errorf("%s with %q appended: accepted", slot, bad)
					}
				}
			}
		})
	}
}

// stringSlots lists the paths of every string (fields, elements, map keys
// and values) in v, in mutate's order, and fails on an empty one.
func stringSlots(t *testing.T, v reflect.Value, path string) []string {
	t.Helper()
	var out []string
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			t.Errorf("%s is nil: give it a value so its strings are covered", path)
			return nil
		}
		return stringSlots(t, v.Elem(), path)
	case reflect.String:
		if v.String() == "" {
			t.Errorf("%s is empty: give it a value so it is covered", path)
		}
		return []string{path}
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			return nil
		}
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() {
				out = append(out, stringSlots(t, v.Field(i), path+"."+f.Name)...)
			}
		}
	case reflect.Slice:
		if v.Len() == 0 && v.Type().Elem().Kind() != reflect.Uint8 {
			t.Errorf("%s is empty: give it an element so its strings are covered", path)
		}
		for i := range v.Len() {
			out = append(out, stringSlots(t, v.Index(i), path+"["+string(rune('0'+i))+"]")...)
		}
	case reflect.Map:
		if v.Len() == 0 {
			t.Errorf("%s is empty: give it an entry so its strings are covered", path)
		}
		for _, k := range sortedKeys(v) {
			out = append(out, stringSlots(t, k, path+" key "+k.String())...)
			out = append(out, stringSlots(t, v.MapIndex(k), path+"["+k.String()+"]")...)
		}
	}
	return out
}

// mutate applies f to the target-th string slot of v.
func mutate(v reflect.Value, target int, n *int, f func(string) string) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			mutate(v.Elem(), target, n, f)
		}
	case reflect.String:
		if *n++; *n == target {
			v.SetString(f(v.String()))
		}
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				mutate(v.Field(i), target, n, f)
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			mutate(v.Index(i), target, n, f)
		}
	case reflect.Map:
		for _, k := range sortedKeys(v) {
			nk := reflect.New(k.Type()).Elem()
			nk.Set(k)
			mutate(nk, target, n, f)
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			mutate(e, target, n, f)
			v.SetMapIndex(k, reflect.Value{})
			v.SetMapIndex(nk, e)
		}
	}
}

func sortedKeys(v reflect.Value) []reflect.Value {
	keys := v.MapKeys()
	strs := make([]string, len(keys))
	for i, k := range keys {
		strs[i] = k.String()
	}
	idx := make([]int, len(keys))
	for i := range idx {
		idx[i] = i
	}
	// Small maps: insertion sort by key.
	for i := 1; i < len(idx); i++ {
		for j := i; j > 0 && strings.Compare(strs[idx[j-1]], strs[idx[j]]) > 0; j-- {
			idx[j-1], idx[j] = idx[j], idx[j-1]
		}
	}
	out := make([]reflect.Value, len(keys))
	for i, j := range idx {
		out[i] = keys[j]
	}
	return out
}

func deepCopy(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	c := reflect.New(reflect.TypeOf(v).Elem())
	if err := json.Unmarshal(b, c.Interface()); err != nil {
		t.Fatal(err)
	}
	return c.Interface()
}
