package agent

import "github.com/klp-agent/klp-agent/internal/redact"

// redactURLs masks credentials in what status shows: a patch URL resolved
// against a manifest.url with user:password@ or a token carries them, and
// the state file (root's alone) must keep them to download again. The
// status output, any copy of it and its JSON never do.
func (s *Status) redactURLs() {
	if s.Applied != nil {
		a := *s.Applied
		a.URL = redactURL(a.URL)
		s.Applied = &a
	}
	if s.Wanted != nil {
		w := *s.Wanted
		w.URL = redactURL(w.URL)
		s.Wanted = &w
	}
	for i := range s.Good {
		s.Good[i].URL = redactURL(s.Good[i].URL)
	}
	for i := range s.Blocked {
		s.Blocked[i].URL = redactURL(s.Blocked[i].URL)
		s.Blocked[i].Reason = redact.Text(s.Blocked[i].Reason)
	}
	if s.LastPoll != nil {
		p := *s.LastPoll
		p.Error = redact.Text(p.Error)
		s.LastPoll = &p
	}
	for i, p := range s.Problems {
		s.Problems[i] = redact.Text(p)
	}
}

func redactURL(u string) string {
	if u == "" {
		return ""
	}
	return redact.URL(u)
}
