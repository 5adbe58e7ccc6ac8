package agent

// MessageID is one kind of journal entry, for klp-agent(8).
type MessageID struct{ ID, Event string }

// MessageIDs lists every MESSAGE_ID the agent and its daemon log, each
// explained in packaging/klp-agent.catalog.
var MessageIDs = []MessageID{
	{MsgApplied, "a level installed and enabled; it soaks"},
	{MsgGood, "a level passed its soak and is the good level"},
	{MsgReapplied, "the recorded level re-applied after a boot"},
	{MsgRolledBack, "a rollback, with KLP_CAUSE and KLP_ROLLBACK_REASON"},
	{MsgBlocked, "a level blocked on this host, with KLP_CAUSE and EVIDENCE"},
	{MsgStalled, "a stalled transition, reversed; retried at the next poll"},
	{MsgModuleRefused, "a kept module copy not loaded: tampered or unsafe; installed from the verified RPM instead"},
	{MsgManifestRejected, "a manifest that failed a trust check"},
	{MsgHealthEvent, "a health event (KLP_EVENT_KIND, KLP_EVENT_SOURCE, KLP_ATTRIBUTED, KLP_ROLLBACK)"},
	{MsgControl, "a host control (KLP_CONTROL, KLP_OPERATOR, KLP_CONTROL_REASON)"},
	{MsgKillSwitch, "a boot with the kill switch on: nothing applied"},
	{MsgRootUpdated, "the root of trust updated"},
	{MsgRootFloorReset, "a root rotation changed the manifest keys: version floor reset"},
	{MsgRootReprovisioned, "a re-provisioned trust.root: the root chain restarted from it"},
	{MsgGuardDecision, "the guard (klp-agent guard): a decision on an alert (KLP_GUARD_ACTION, the alert's labels, fingerprint, KLP_PROMETHEUS_VALUE)"},
	{MsgGuardUnauthorized, "the guard: a webhook request without valid credentials, refused (401)"},
}
