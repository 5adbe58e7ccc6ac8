package daemon

import (
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/manifest"
)

// logRootRestart journals a re-provisioned trust.root (nil: none), a
// warning: it is the recovery from compromised root keys, or a mistake.
func logRootRestart(log *zap.Logger, r *manifest.RootRestart) {
	if r == nil {
		return
	}
	log.Warn(fmt.Sprintf("trust.root re-provisioned: the root chain restarts from the configured root version %d; the persisted chain (version %d) is no longer trusted", r.To.Version, r.From.Version),
		zap.Uint64("KLP_ROOT_VERSION", r.To.Version), zap.Uint64("KLP_ROOT_PREVIOUS_VERSION", r.From.Version),
		zap.String("KLP_ROOT_CONFIGURED_SHA256", r.ToConfigured), zap.String("KLP_ROOT_PREVIOUS_CONFIGURED_SHA256", r.FromConfigured),
		zap.String("KLP_MANIFEST_KEYS", strings.Join(r.To.Roles.Manifest.KeyIDs, ",")), zap.Bool("KLP_FLOOR_RESET", r.ManifestKeysChanged),
		logging.MessageID(agent.MsgRootReprovisioned))
}

// logRootUpdate puts a newer trusted root in the journal; a floor reset
// is a warning, as an operator must be able to tell it from an attack.
func logRootUpdate(log *zap.Logger, u *manifest.RootUpdate) {
	fields := []zap.Field{zap.Uint64("KLP_ROOT_VERSION", u.To.Version), zap.Uint64("KLP_ROOT_PREVIOUS_VERSION", u.From.Version),
		zap.String("KLP_MANIFEST_KEYS", strings.Join(u.To.Roles.Manifest.KeyIDs, ",")), zap.Int("KLP_MANIFEST_THRESHOLD", u.To.Roles.Manifest.Threshold),
		zap.Time("KLP_ROOT_EXPIRES", u.To.Expires)}
	if u.ManifestKeysChanged {
		log.Warn("root of trust rotated the manifest-signing keys: manifest version floor reset, manifest refetched",
			append(fields, logging.MessageID(agent.MsgRootFloorReset))...)
		return
	}
	log.Info("root of trust updated", append(fields, logging.MessageID(agent.MsgRootUpdated))...)
}
