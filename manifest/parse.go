package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	json "github.com/go-json-experiment/json"

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

// Parse decodes a payload strictly and validates it. The payload is YAML;
// JSON is accepted as the YAML subset it is. Unknown keys, duplicate keys,
// an empty document and trailing documents are errors.
func Parse(payload []byte) (*Manifest, error) { return ParseMax(payload, DefaultMaxSize) }

// ParseMax is Parse with a size limit other than DefaultMaxSize (a fleet
// with many kernel releases raises manifest.max_size).
func ParseMax(payload []byte, max int) (*Manifest, error) {
	if len(payload) > max {
		return nil, fmt.Errorf("%w: payload is %d bytes (limit %d)", ErrTooLarge, len(payload), max)
	}
	var m Manifest
	if t := bytes.TrimLeft(payload, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		// JSON (the YAML subset `manifest sign` writes by default): the
		// same strictness, an order of magnitude faster than the YAML
		// parser on a fleet-sized manifest.
		if err := json.Unmarshal(payload, &m, json.RejectUnknownMembers(true)); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	} else if err := DecodeStrict(payload, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
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
