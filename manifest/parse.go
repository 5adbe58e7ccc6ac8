package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	json "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"go.yaml.in/yaml/v3"
)

// DefaultMaxSize bounds a manifest (envelope or payload) in bytes; hosts
// raise it with manifest.max_size up to MaxSize.
const (
	DefaultMaxSize = 4 << 20
	MaxSize        = 64 << 20
)

// ErrEmptyDocument is returned by DecodeStrict for input with no document.
var ErrEmptyDocument = errors.New("empty document")

// MaxYAMLPayload bounds a YAML payload a host parses. The YAML parser reads
// about 10 MB/s, 25-30 times slower than the JSON path at 10,000 entries,
// so a host's cost is bounded here (770 fleet-shaped entries, about 40 ms
// on a 2-core machine; BenchmarkVerifySelect, BenchmarkYAMLAtCap) and a
// larger manifest is signed as JSON, which every agent reads (JSON is the
// YAML subset it is). The publisher's tools parse a YAML source of any size: it is the
// hand-editing format that `manifest sign` renders as JSON by default.
const MaxYAMLPayload = 256 << 10

// ErrYAMLTooLarge is a signed YAML payload over MaxYAMLPayload. It wraps
// ErrTooLarge: a host treats it as any manifest it refuses.
var ErrYAMLTooLarge = fmt.Errorf("%w: YAML payload over %d KiB", ErrTooLarge, MaxYAMLPayload>>10)

// IsJSONPayload reports whether a payload takes the JSON path: its first
// non-blank byte opens an object. Anything else is parsed as YAML.
func IsJSONPayload(payload []byte) bool {
	t := bytes.TrimLeft(payload, " \t\r\n")
	return len(t) > 0 && t[0] == '{'
}

// CheckYAMLPayload is the hosts' bound on a signed payload: a YAML one
// over MaxYAMLPayload is ErrYAMLTooLarge, naming the fix. One over half
// of it comes back with a warning for the publisher's tools (the manifest
// grows one entry per kernel and level; JSON has no such bound).
func CheckYAMLPayload(payload []byte) (warning string, err error) {
	if IsJSONPayload(payload) {
		return "", nil
	}
	switch n := len(payload); {
	case n > MaxYAMLPayload:
		return "", fmt.Errorf("%w: %d bytes, hosts parse at most %d as YAML; sign it as JSON ('manifest sign' without --format yaml), which every agent reads",
			ErrYAMLTooLarge, n, MaxYAMLPayload)
	case n > MaxYAMLPayload/2:
		return fmt.Sprintf("YAML payload of %d bytes: hosts refuse one over %d (%d KiB); sign it as JSON ('manifest sign' without --format yaml) before it grows past that",
			n, MaxYAMLPayload, MaxYAMLPayload>>10), nil
	}
	return "", nil
}

// Parse decodes a payload strictly and validates it. The payload is YAML;
// JSON is accepted as the YAML subset it is. Unknown keys, duplicate keys,
// an empty document and trailing documents are errors.
func Parse(payload []byte) (*Manifest, error) { return ParseMax(payload, DefaultMaxSize) }

// ParseMax is Parse with a size limit other than DefaultMaxSize (a fleet
// with many kernel releases raises manifest.max_size).
func ParseMax(payload []byte, max int) (*Manifest, error) { return ParseFor(payload, max, "") }

// ParseFor parses what a host running kernel needs. With kernel "" it is
// ParseMax. Otherwise, in a JSON payload, entries for other kernel
// releases are checked as JSON and counted (Manifest.Skipped) but neither
// decoded nor validated: a host pays for its own kernel's entries, not the
// fleet's. The publisher's tools (`manifest sign`, `lint`, `verify`) parse
// everything. A YAML payload is parsed whole and then filtered; a host
// verifying an envelope bounds it first (CheckYAMLPayload).
func ParseFor(payload []byte, max int, kernel string) (*Manifest, error) {
	if len(payload) > max {
		return nil, fmt.Errorf("%w: payload is %d bytes (limit %d)", ErrTooLarge, len(payload), max)
	}
	var m Manifest
	if IsJSONPayload(payload) {
		// JSON (the YAML subset `manifest sign` writes by default): the
		// same strictness, an order of magnitude faster than the YAML
		// parser on a fleet-sized manifest.
		var err error
		if kernel == "" {
			err = json.Unmarshal(payload, &m, json.RejectUnknownMembers(true))
		} else {
			err = decodeJSONFor(payload, kernel, &m)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	} else if err := DecodeStrict(payload, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	} else if kernel != "" {
		mine := m.Patches[:0]
		for _, p := range m.Patches {
			if p.Kernel == kernel {
				mine = append(mine, p)
			} else {
				m.Skipped++
			}
		}
		m.Patches = mine
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// decodeJSONFor decodes a JSON payload member by member, materialising
// only the patches for kernel. A patch that may be for kernel (its raw
// text holds the release, or an escape that could spell it) is decoded
// and checked; the others are counted.
func decodeJSONFor(payload []byte, kernel string, m *Manifest) error {
	// Duplicate names are checked here for the top level and by Unmarshal
	// inside every decoded patch; the scanner skips that bookkeeping for
	// the entries it only counts.
	dec := jsontext.NewDecoder(bytes.NewBuffer(payload), jsontext.AllowDuplicateNames(true))
	opts := json.RejectUnknownMembers(true)
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
		return fmt.Errorf("payload is not a JSON object: %v", err)
	}
	needle := []byte(kernel)
	seen := map[string]bool{}
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if err != nil {
			return err
		}
		name := tok.String()
		if seen[name] {
			return fmt.Errorf("duplicate member %q", name)
		}
		seen[name] = true
		switch name {
		case "schema":
			err = json.UnmarshalDecode(dec, &m.Schema, opts)
		case "version":
			err = json.UnmarshalDecode(dec, &m.Version, opts)
		case "expires":
			err = json.UnmarshalDecode(dec, &m.Expires, opts)
		case "signed_at":
			err = json.UnmarshalDecode(dec, &m.SignedAt, opts)
		case "shard":
			err = json.UnmarshalDecode(dec, &m.Shard, opts)
		case "revoked":
			err = json.UnmarshalDecode(dec, &m.Revoked, opts)
		case "patches":
			err = decodePatchesFor(dec, needle, m, opts)
		case "annotations":
			// Read whole and decoded apart: this decoder lets duplicate
			// names through, Unmarshal does not.
			var raw jsontext.Value
			if raw, err = dec.ReadValue(); err == nil {
				err = json.Unmarshal(raw, &m.Annotations, opts)
			}
		default:
			err = fmt.Errorf("unknown member %q", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if _, err := dec.ReadToken(); err != nil { // the closing brace
		return err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// canonicalKernel is how a canonical patch object (MarshalJSON) starts.
var canonicalKernel = []byte(`{"kernel":"`)

// mayBeFor reports whether the raw patch object could be for the kernel
// release in needle. In the canonical form the release is read in place;
// otherwise a patch is skipped only if its text cannot spell the release
// (does not contain it and has no escape).
func mayBeFor(raw, needle []byte) bool {
	if v, ok := bytes.CutPrefix(raw, canonicalKernel); ok {
		end := bytes.IndexByte(v, '"')
		if end >= 0 && bytes.IndexByte(v[:end], '\\') < 0 {
			return bytes.Equal(v[:end], needle)
		}
	}
	return bytes.Contains(raw, needle) || bytes.IndexByte(raw, '\\') >= 0
}

func decodePatchesFor(dec *jsontext.Decoder, needle []byte, m *Manifest, opts json.Options) error {
	if dec.PeekKind() == 'n' {
		_, err := dec.ReadToken()
		return err
	}
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '[' {
		return fmt.Errorf("not an array: %v", err)
	}
	for dec.PeekKind() != ']' {
		raw, err := dec.ReadValue()
		if err != nil {
			return err
		}
		if raw.Kind() != '{' {
			return errors.New("a patch is not a JSON object")
		}
		if !mayBeFor(raw, needle) {
			m.Skipped++
			continue
		}
		var p Patch
		if err := json.Unmarshal(raw, &p, opts); err != nil {
			return err
		}
		if p.Kernel != string(needle) {
			m.Skipped++
			continue
		}
		m.Patches = append(m.Patches, p)
	}
	_, err := dec.ReadToken()
	return err
}

// DecodeStrict decodes exactly one YAML document into out, refusing unknown
// fields. yaml.v3 already refuses duplicate mapping keys; it silently
// ignores a second document and returns io.EOF for an empty one, which is
// why both are checked here.
func DecodeStrict(b []byte, out any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		if errors.Is(err, io.EOF) {
			return ErrEmptyDocument
		}
		return err
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return fmt.Errorf("after first document: %w", err)
	default:
		return fmt.Errorf("line %d: a second YAML document is not allowed", extra.Line)
	}
}

// MarshalJSON renders a manifest as the canonical JSON payload: compact,
// fields in schema order, one patch per line so a diff of two versions
// reads well.
func MarshalJSON(m *Manifest) ([]byte, error) {
	b, err := json.Marshal(m, json.Deterministic(true))
	if err != nil {
		return nil, fmt.Errorf("marshal manifest: %w", err)
	}
	b = bytes.ReplaceAll(b, []byte(`},{"kernel":`), []byte("},\n{\"kernel\":"))
	b = bytes.ReplaceAll(b, []byte(`},{"name":`), []byte("},\n{\"name\":"))
	return append(b, '\n'), nil
}

// Marshal renders a manifest as the canonical YAML payload.
func Marshal(m *Manifest) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("marshal manifest: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("marshal manifest: %w", err)
	}
	return buf.Bytes(), nil
}
