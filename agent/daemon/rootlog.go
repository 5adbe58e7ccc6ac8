package daemon

import (
	"strings"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/manifest"
)

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
