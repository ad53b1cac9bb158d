//! Cluster events: what peers saw happen, as `shoal events` and the dashboard show them.

use std::collections::BTreeMap;

/// One thing that happened, as the peers that saw it recorded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterEvent {
    /// Hybrid-clock time, in milliseconds since the Unix epoch: the wall clock of the peer
    /// that saw it first, never behind an event that peer had seen before.
    pub at_ms: u64,
    /// The hybrid clock's counter within that millisecond.
    pub seq: u32,
    /// What happened: see [`EVENT_KINDS`].
    pub kind: String,
    /// What it is about (`peer`, `service`, `slot`, `image`, …).
    pub fields: BTreeMap<String, String>,
    /// In words.
    pub message: String,
    /// The peers that saw it (names), the first one's clock giving the time.
    pub seen_by: Vec<String>,
}

/// Every kind of event, and what it means.
pub const EVENT_KINDS: &[(&str, &str)] = &[
    ("peer.joined", "a peer was seen alive for the first time (or again after it was dead)"),
    ("peer.restarted", "a peer came back with a new generation"),
    ("peer.suspect", "a peer missed its probes: the failure detector suspects it (it may still refute)"),
    ("peer.dead", "the failure detector declared a peer dead"),
    ("peer.left", "a peer left the cluster cleanly"),
    ("service.created", "a service was declared"),
    ("service.updated", "a service was changed (update, scale)"),
    ("service.removed", "a service was removed"),
    ("service.scaled", "autoscaling changed a service's replica count"),
    ("rollout.started", "a rolling update began"),
    (
        "rollout.rolled_back",
        "a service went back to its image before the last update (reason: its new replicas failed, or asked)",
    ),
    ("rollout.done", "an update or rebalance completed"),
    (
        "replica.started",
        "a peer started a replica of a service (`took_over_from`: in place of a peer that died or left)",
    ),
    ("replica.stopped", "a peer stopped a replica (the reason says why)"),
    ("replica.failed", "a replica exited or failed its health check"),
    ("replica.restarted", "a replica was restarted as an operator asked (`shoal service restart`)"),
    ("image.pulled", "an image was pulled from a registry or from peers"),
    ("transfer.done", "a download of shared content completed"),
];
