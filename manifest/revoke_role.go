package manifest

import (
	"fmt"
	"slices"
)

// The revoke role (TUF's delegated role, narrowed): keys that may sign
// revocations.json and nothing else. A manifest envelope is verified with
// the manifest role only, so a revoke key can never sign one; and what a
// revocations document may say is fixed by its schema (revocations.go), so
// a stolen revoke key can pull patches back and pause ramps, never push a
// patch, a URL or a rollout, never lift a revocation.

// RevokeTrust is the revoke role's keys and threshold; ok is false for a
// root without the role (roots before it existed keep working: only the
// release keys sign revocations then).
func (r *Root) RevokeTrust() (keys Keyring, threshold int, ok bool) {
	if r.Roles.Revoke == nil {
		return nil, 0, false
	}
	return r.keyring(*r.Roles.Revoke), r.Roles.Revoke.Threshold, true
}

// validateRevokeRole refuses a revoke key that is also a root or manifest
// key: it would sign manifests or roots too, and the role's promise (it can
// only pull back) would not hold.
func (r *Root) validateRevokeRole() error {
	if r.Roles.Revoke == nil {
		return nil
	}
	for _, id := range r.Roles.Revoke.KeyIDs {
		for name, other := range map[string]Role{"root": r.Roles.Root, "manifest": r.Roles.Manifest} {
			if slices.Contains(other.KeyIDs, id) {
				return fmt.Errorf("%w: key %s is in both the revoke and the %s role: a revoke key must sign nothing else", ErrRootInvalid, id, name)
			}
		}
	}
	return nil
}
