package guard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/klp-agent/klp-agent/agent"
	"github.com/klp-agent/klp-agent/agent/logging"
	"github.com/klp-agent/klp-agent/internal/atomicfile"
	"github.com/klp-agent/klp-agent/internal/limitfile"
	"github.com/klp-agent/klp-agent/manifest"
)

// Sentinel errors callers branch on.
var (
	// ErrKey is a key the guard must not hold: a release (manifest) or
	// root key of the root, or one outside its revoke role.
	ErrKey = errors.New("guard key refused")
	// ErrPublish is a document written but not published by the command.
	ErrPublish = errors.New("publish command failed")
)

// Actions, as KLP_GUARD_ACTION.
const (
	ActionRevoked     = "revoked"
	ActionPaused      = "paused"
	ActionAlready     = "already"
	ActionUnconfirmed = "unconfirmed"
	ActionRefused     = "refused"
	ActionDryRun      = "dry-run"
	ActionRefreshed   = "refreshed"
)

// Alert is one alert of Alertmanager's webhook (version 4).
type Alert struct {
	Status      string            `json:"status"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	Fingerprint string            `json:"fingerprint"`
}

// Decision is what the guard did with one alert.
type Decision struct {
	Action  string
	Patch   string
	Level   int
	Kernel  string
	Tier    string
	Value   float64 // what Prometheus answered; 0 when not asked
	Version uint64  // the document signed (0: none)
	Why     string
}

// hexFingerprint is Alertmanager's fingerprint (16 hex digits).
var hexFingerprint = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

// Runner runs a publish command's argv (exec, never a shell).
type Runner func(ctx context.Context, argv []string) error

// Deps are the guard's outside world, for tests to point elsewhere.
type Deps struct {
	Now    func() time.Time
	HTTP   *http.Client // Prometheus's
	Run    Runner
	Log    *zap.Logger
	Stdout io.Writer // --dry-run's output
}

// Guard decides on alerts and owns revocations.json. Safe for concurrent
// use: decisions are serialized, each reads the file it revises.
type Guard struct {
	cfg    *Config
	deps   Deps
	prom   prometheus
	signer *manifest.Signer
	trust  manifest.RevocationsTrust
	token  []byte
	dryRun bool

	logMu sync.Mutex // DecisionsFile's

	mu sync.Mutex
	// unpublished: the file was written but the publish command failed;
	// the next decision (even a duplicate) or refresh publishes again.
	unpublished bool
}

// New checks the key against the root and builds a guard. The key must
// be one of the root's revoke role and none of its manifest or root
// roles: the guard never holds a key that can push a patch.
func New(cfg *Config, dryRun bool, d Deps) (*Guard, error) {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Log == nil {
		d.Log = zap.NewNop()
	}
	if d.Stdout == nil {
		d.Stdout = io.Discard
	}
	if d.HTTP == nil {
		d.HTTP = &http.Client{}
	}
	rb, err := limitfile.Read(cfg.Root, manifest.RootMaxSize)
	if err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	rt, err := manifest.LoadRootTrust(rb, "")
	if err != nil {
		return nil, fmt.Errorf("root %s: %w", cfg.Root, err)
	}
	signer, err := manifest.LoadSigner(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	id, err := signer.KeyID()
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	r := rt.Current()
	switch {
	case slices.Contains(r.Roles.Manifest.KeyIDs, id):
		return nil, fmt.Errorf("%w: %s is a release (manifest role) key of root version %d: give the guard a revoke role key (manifest root revoke-role)", ErrKey, id, r.Version)
	case slices.Contains(r.Roles.Root.KeyIDs, id):
		return nil, fmt.Errorf("%w: %s is a root key of root version %d", ErrKey, id, r.Version)
	case r.Roles.Revoke == nil:
		return nil, fmt.Errorf("%w: root version %d has no revoke role", ErrKey, r.Version)
	case !slices.Contains(r.Roles.Revoke.KeyIDs, id):
		return nil, fmt.Errorf("%w: %s is not a key of root version %d's revoke role", ErrKey, id, r.Version)
	}
	g := &Guard{cfg: cfg, deps: d, signer: signer, dryRun: dryRun,
		prom:  prometheus{base: cfg.Prometheus.URL, client: d.HTTP},
		trust: manifest.RevocationsTrust{Root: rt}}
	if cfg.TokenFile != "" {
		if g.token, err = readToken(cfg.TokenFile); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// subst puts the alert's (checked) labels into a query.
func subst(q, patch, kernel, tier string) string {
	return strings.NewReplacer("{patch}", patch, "{kernel}", kernel, "{tier}", tier).Replace(q)
}

// target reads the patch, level, kernel and tier from an alert's labels;
// each is checked against the manifest's rules, so it is safe in PromQL
// and in the signed document.
func target(l map[string]string) (d Decision, err error) {
	d.Patch, d.Kernel, d.Tier = l["patch"], l["kernel"], l["tier"]
	if !manifest.ValidName(d.Patch) {
		return d, fmt.Errorf("label patch %q is not a livepatch name", d.Patch)
	}
	if d.Kernel != "" && !manifest.ValidKernelRelease(d.Kernel) {
		return d, fmt.Errorf("label kernel %q is not a kernel release", d.Kernel)
	}
	if d.Tier != "" && !manifest.ValidTier(d.Tier) {
		return d, fmt.Errorf("label tier %q is not a tier name", d.Tier)
	}
	if s, ok := l["level"]; ok {
		if d.Level, err = strconv.Atoi(s); err != nil || d.Level < 1 {
			return d, fmt.Errorf("label level %q is not a level", s)
		}
	}
	return d, nil
}

// Handle decides on one alert. An error is a decision it could not make
// (Prometheus or the publish failed): the caller has it sent again.
func (g *Guard) Handle(ctx context.Context, a Alert) (Decision, error) {
	d, err := g.decide(ctx, a)
	g.logDecision(a, d, err)
	return d, err
}

func (g *Guard) decide(ctx context.Context, a Alert) (Decision, error) {
	d, err := target(a.Labels)
	if err != nil {
		d.Action, d.Why = ActionRefused, err.Error()
		return d, nil
	}
	qctx, cancel := context.WithTimeout(ctx, g.cfg.timeout)
	defer cancel()
	// The re-check: a forged alert alone pulls nothing back.
	res, err := g.prom.query(qctx, subst(g.cfg.Prometheus.Query, d.Patch, d.Kernel, d.Tier))
	if err != nil {
		return d, err
	}
	if len(res) == 0 {
		d.Action, d.Why = ActionUnconfirmed, "Prometheus's instant query of the budget returned no series: the budget is not exceeded now"
		return d, nil
	}
	d.Value = res[0].Value
	if d.Level == 0 {
		levels, err := g.prom.query(qctx, subst(g.cfg.Prometheus.LevelQuery, d.Patch, d.Kernel, d.Tier))
		if err != nil {
			return d, err
		}
		seen := map[string]bool{}
		for _, s := range levels {
			seen[s.Metric["level"]] = true
		}
		if len(seen) != 1 {
			d.Action, d.Why = ActionRefused, fmt.Sprintf("the alert has no level label and hosts ran %d levels of %s over the query's window: a person decides", len(seen), d.Patch)
			return d, nil
		}
		for s := range seen {
			if d.Level, err = strconv.Atoi(s); err != nil || d.Level < 1 {
				d.Action, d.Why = ActionRefused, fmt.Sprintf("level %q from Prometheus is not a level", s)
				return d, nil
			}
		}
	}
	// The signed reason goes to every host's journal: only what the guard
	// checked goes in (its configured alert name, a hex fingerprint).
	fp := a.Fingerprint
	if !hexFingerprint.MatchString(fp) {
		fp = "-"
	}
	reason := fmt.Sprintf("crash budget: %s at %s per 1000 hosts (alert %s %s)", g.cfg.AlertName, strconv.FormatFloat(d.Value, 'g', 4, 64), fp, a.StartsAt.UTC().Format(time.RFC3339))
	if d.Tier != "" {
		reason = "tier " + d.Tier + " " + reason
	}
	edit := func(doc *manifest.Revocations) error {
		// A canary tier over budget pauses the ramp: the rest of the
		// fleet does not take the patch, and the hosts that crashed have
		// already rolled back and blocked it themselves. The fleet-wide
		// alert revokes: every host running it rolls back.
		if d.Tier != "" {
			return doc.AddPause(manifest.Pause{Name: d.Patch, Level: d.Level, Kernel: d.Kernel, Reason: reason})
		}
		return doc.AddRevoked(manifest.Revoked{Name: d.Patch, Level: d.Level, Kernel: d.Kernel, Reason: reason})
	}
	d.Action = ActionRevoked
	if d.Tier != "" {
		d.Action = ActionPaused
	}
	return g.sign(ctx, &d, edit)
}

// sign writes the next version of the file with edit applied, checks it
// as hosts will, and publishes it.
func (g *Guard) sign(ctx context.Context, d *Decision, edit func(*manifest.Revocations) error) (Decision, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	prev, err := limitfile.Read(g.cfg.File, manifest.RevocationsMaxSize)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return *d, fmt.Errorf("read %s: %w", g.cfg.File, err)
	}
	now := g.deps.Now()
	b, doc, err := manifest.ReviseRevocations(ctx, prev, now, g.cfg.validity, edit, g.signer)
	if errors.Is(err, manifest.ErrDuplicate) {
		d.Action, d.Why = ActionAlready, err.Error()
		return *d, g.publishPending(ctx)
	}
	if err != nil {
		return *d, fmt.Errorf("%s: %w", g.cfg.File, err)
	}
	if _, err := g.trust.Verify(b, now, nil); err != nil {
		return *d, fmt.Errorf("the signed document does not verify as hosts check it: %w", err)
	}
	d.Version = doc.Version
	if g.dryRun {
		d.Why = d.Action + " (dry run: nothing written)"
		d.Action = ActionDryRun
		out, _ := json.MarshalIndent(doc, "", "  ")
		fmt.Fprintf(g.deps.Stdout, "would sign and publish %s version %d:\n%s\n", g.cfg.File, doc.Version, out)
		return *d, nil
	}
	before, statErr := os.Stat(g.cfg.File)
	if err := atomicfile.WriteFile(g.cfg.File, b, 0o644); err != nil {
		return *d, err
	}
	if statErr == nil {
		if err := laterMtime(g.cfg.File, before.ModTime()); err != nil {
			return *d, err
		}
	}
	g.unpublished = len(g.cfg.PublishCommand) > 0
	return *d, g.publishPending(ctx)
}

// laterMtime moves path's mtime past prev's second when the write landed
// in the same one: web servers validate by mtime at second granularity
// (Last-Modified; nginx's ETag is mtime and size), and a host would be
// answered 304 for a new version written in the second of the last.
func laterMtime(path string, prev time.Time) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.ModTime().Unix() > prev.Unix() {
		return nil
	}
	t := prev.Truncate(time.Second).Add(time.Second)
	if err := os.Chtimes(path, t, t); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// publishPending runs the publish command if the file has changed since
// it last succeeded.
func (g *Guard) publishPending(ctx context.Context) error {
	if !g.unpublished || g.dryRun {
		return nil
	}
	argv := make([]string, len(g.cfg.PublishCommand))
	for i, a := range g.cfg.PublishCommand {
		if a == FilePlaceholder {
			a = g.cfg.File
		}
		argv[i] = a
	}
	if err := g.deps.Run(ctx, argv); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrPublish, argv[0], err)
	}
	g.unpublished = false
	return nil
}

// Start publishes the file once when a publish command is configured:
// after a restart the guard cannot know whether its last publish ran.
func (g *Guard) Start(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, err := limitfile.Read(g.cfg.File, manifest.RevocationsMaxSize); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	g.unpublished = len(g.cfg.PublishCommand) > 0
	return g.publishPending(ctx)
}

// Refresh re-signs the document, its entries unchanged, when it expires
// within refresh_before: hosts must never see the channel expire. No
// document yet: nothing to refresh.
func (g *Guard) Refresh(ctx context.Context) (Decision, error) {
	d := Decision{Action: ActionRefreshed}
	g.mu.Lock()
	prev, err := limitfile.Read(g.cfg.File, manifest.RevocationsMaxSize)
	g.mu.Unlock()
	if errors.Is(err, fs.ErrNotExist) {
		return Decision{}, nil
	}
	if err != nil {
		return d, err
	}
	cur, err := manifest.RevocationsPayload(prev)
	if err != nil {
		return d, fmt.Errorf("%s: %w", g.cfg.File, err)
	}
	if cur.Expires.Sub(g.deps.Now()) > g.cfg.refreshBefore {
		return Decision{}, nil
	}
	d, err = g.sign(ctx, &d, func(*manifest.Revocations) error { return nil })
	if d.Action != ActionDryRun {
		d.Action = ActionRefreshed
	}
	g.logDecision(Alert{}, d, err)
	return d, err
}

// MaxDecisions bounds DecisionsFile.
const MaxDecisions = 200

// Record is one entry of DecisionsFile.
type Record struct {
	Time        time.Time         `json:"time"`
	Action      string            `json:"action"`
	Patch       string            `json:"patch,omitempty"`
	Level       int               `json:"level,omitempty"`
	Kernel      string            `json:"kernel,omitempty"`
	Tier        string            `json:"tier,omitempty"`
	Value       float64           `json:"prometheus_value,omitempty"`
	Version     uint64            `json:"revocations_version,omitempty"`
	Why         string            `json:"why,omitempty"`
	Error       string            `json:"error,omitempty"`
	Labels      map[string]string `json:"alert_labels,omitempty"`
	Fingerprint string            `json:"alert_fingerprint,omitempty"`
	StartsAt    time.Time         `json:"alert_starts_at,omitzero"`
}

// ReadDecisions reads a DecisionsFile (none yet: no records).
func ReadDecisions(path string) ([]Record, error) {
	b, err := limitfile.Read(path, 16<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rs []Record
	if err := json.Unmarshal(b, &rs); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rs, nil
}

// record appends a decision to DecisionsFile, the oldest dropped past
// MaxDecisions; a damaged file is started afresh rather than stop the
// guard (the journal has every decision too).
func (g *Guard) record(a Alert, d Decision, err error) error {
	if g.cfg.DecisionsFile == "" {
		return nil
	}
	g.logMu.Lock()
	defer g.logMu.Unlock()
	rs, rerr := ReadDecisions(g.cfg.DecisionsFile)
	if rerr != nil {
		rs = nil
	}
	r := Record{Time: g.deps.Now().UTC(), Action: d.Action, Patch: d.Patch, Level: d.Level, Kernel: d.Kernel, Tier: d.Tier,
		Value: d.Value, Version: d.Version, Why: d.Why, Labels: a.Labels, Fingerprint: a.Fingerprint, StartsAt: a.StartsAt}
	if err != nil {
		r.Error = err.Error()
	}
	rs = append(rs, r)
	if len(rs) > MaxDecisions {
		rs = rs[len(rs)-MaxDecisions:]
	}
	b, merr := json.MarshalIndent(rs, "", " ")
	if merr != nil {
		return merr
	}
	return atomicfile.WriteFile(g.cfg.DecisionsFile, b, 0o600)
}

// logDecision journals a decision with the alert that caused it.
func (g *Guard) logDecision(a Alert, d Decision, err error) {
	if rerr := g.record(a, d, err); rerr != nil {
		g.deps.Log.Error("guard: decisions_file: "+rerr.Error(), zap.Error(rerr))
	}
	labels, _ := json.Marshal(a.Labels)
	fields := []zap.Field{logging.MessageID(agent.MsgGuardDecision),
		zap.String("klp_guard_action", d.Action), zap.String("klp_patch", d.Patch), zap.Int("klp_level", d.Level),
		zap.String("klp_kernel", d.Kernel), zap.String("klp_tier", d.Tier),
		zap.String("klp_alert_name", a.Labels["alertname"]), zap.String("klp_alert_labels", string(labels)),
		zap.String("klp_alert_fingerprint", a.Fingerprint), zap.Time("klp_alert_starts_at", a.StartsAt),
		zap.Float64("klp_prometheus_value", d.Value), zap.Uint64("klp_revocations_version", d.Version)}
	switch {
	case err != nil:
		g.deps.Log.Error("guard: no decision: "+err.Error(), append(fields, zap.Error(err))...)
	case d.Action == ActionRevoked || d.Action == ActionPaused || d.Action == ActionRefreshed:
		g.deps.Log.Warn(fmt.Sprintf("guard: %s %s@%d: revocations.json version %d published", d.Action, d.Patch, d.Level, d.Version), fields...)
	default:
		g.deps.Log.Warn(fmt.Sprintf("guard: %s %s: %s", d.Action, d.Patch, d.Why), fields...)
	}
}
