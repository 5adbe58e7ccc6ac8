// Package redact hides credentials in URLs and in text that quotes them
// (error messages, log lines, configuration dumps), so a mirror's password
// or a presigned URL's token never reaches the journal, the terminal, a
// status file or a metrics label.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// Mask replaces every hidden value.
const Mask = "xxxxx"

// URL returns raw with its credentials hidden: the password (user:pass@),
// a user name standing alone (a token as user, as in https://TOKEN@host/),
// and the value of every query parameter (?token=, presigned X-Amz-*;
// a bare ?TOKEN whole).
// The scheme, host, path and parameter names stay, so the message still
// says where. Text that does not parse as a URL is hidden whole.
func URL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.User == nil && u.RawQuery == "" && u.Opaque == "" {
		// Nothing to mask: shown as written, not as url.String() would
		// re-encode it.
		return raw
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), Mask)
		} else {
			u.User = url.User(Mask)
		}
	}
	if u.RawQuery != "" {
		u.RawQuery = query(u.RawQuery)
	}
	if u.Opaque != "" {
		// mailto:-like or scheme:secret forms have no structure to keep.
		u.Opaque = Mask
	}
	return u.String()
}

// query masks each value of a raw query, keeping names and their order;
// a bare element (?TOKEN) may itself be the secret and is masked whole.
func query(raw string) string {
	parts := strings.Split(raw, "&")
	for i, p := range parts {
		if name, _, ok := strings.Cut(p, "="); ok {
			parts[i] = name + "=" + Mask
		} else if p != "" {
			parts[i] = Mask
		}
	}
	return strings.Join(parts, "&")
}

// inText finds URLs with a scheme in free text, up to a space, a quote or
// an angle bracket (how net/http, retryablehttp and our messages quote them).
var inText = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>` + "`" + `]+`)

// Text returns s with every URL in it passed through URL.
func Text(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	return inText.ReplaceAllStringFunc(s, func(m string) string {
		// Keep punctuation that ends a sentence out of the URL.
		trail := ""
		for len(m) > 0 && strings.ContainsRune(",;:.)]}", rune(m[len(m)-1])) {
			trail = m[len(m)-1:] + trail
			m = m[:len(m)-1]
		}
		return URL(m) + trail
	})
}

// Error wraps err so that its message is Text(err.Error()); errors.Is and
// errors.As still see err. Nil stays nil.
func Error(err error) error {
	if err == nil {
		return nil
	}
	return redacted{err}
}

type redacted struct{ err error }

func (r redacted) Error() string { return Text(r.err.Error()) }
func (r redacted) Unwrap() error { return r.err }

// secretArg matches a command-line argument that carries a secret-like
// value: --password=..., token=..., API_KEY=...
var secretArg = regexp.MustCompile(`(?i)^(-{0,2}[a-z0-9_.-]*(pass|secret|token|key|auth|cred)[a-z0-9_.-]*=).+$`)

// Arg hides the value of a secret-like NAME=VALUE argument and the
// credentials of URLs in any other.
func Arg(s string) string {
	if m := secretArg.FindStringSubmatch(s); m != nil {
		return m[1] + Mask
	}
	return Text(s)
}
