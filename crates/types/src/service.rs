//! Services: replicated workloads the cluster places on peers without a leader.
//!
//! `ServiceSpec` is what the user declares (`shoal service create`, `shoal deploy`); the
//! cluster replicates it to every peer. `ReplicaInfo` is what a peer reports about the replicas
//! it runs; `ServiceInfo` is the summary `service ls` prints.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A service as declared. It has no host volumes: a bind mount of a peer's files comes only
/// from a local `shoal run` on that peer, never through the cluster. Unknown fields are
/// refused, so a spec that asks for one (`volumes`, a typo) is an error, not silently less.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name in the cluster.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Desired replicas.
    pub replicas: u32,
    /// Replaces the image's Cmd when non-empty.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// CPU per replica in millicpus (also its cgroup limit); 0 = none reserved.
    #[serde(default)]
    pub cpus_milli: u64,
    /// Memory per replica in bytes (also its cgroup limit); 0 = none reserved.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Published ports: every peer answers on `host_port` (the routing mesh) and balances
    /// over the replicas' `container_port`.
    #[serde(default)]
    pub ports: Vec<crate::PortMapping>,
    /// Only peers whose labels have all these `key=value` pairs.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// Spread replicas over distinct values of this peer label (e.g. `zone`).
    #[serde(default)]
    pub spread: Option<String>,
    /// Health check command run inside each replica.
    #[serde(default)]
    pub health_cmd: Option<Vec<String>>,
    /// Most replicas replaced at once during an update.
    #[serde(default = "one")]
    pub max_unavailable: u32,
    /// Autoscaling bounds and target.
    #[serde(default)]
    pub autoscale: Option<Autoscale>,
    /// The image before the last update: replicas of the new image that fail their health
    /// check (or keep crashing) roll the service back to it.
    #[serde(default)]
    pub previous_image: Option<String>,
    /// `replicated` (`replicas` copies wherever they fit) or `global` (one on every peer that
    /// matches the constraints; `replicas` is ignored).
    #[serde(default)]
    pub mode: ServiceMode,
    /// Set by `shoal service rebalance`: while set, replicas move (rolling, within
    /// `max_unavailable`) toward an even spread; cleared once they are there. (Never skipped
    /// when serialising: the service map's binary form is positional.)
    #[serde(default)]
    pub rebalance: Option<u64>,
    /// The service's virtual address (chosen when it is created, kept by updates; `NAME`
    /// resolves to it in every container).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "198.18.240.7"))]
    pub vip: Option<std::net::Ipv4Addr>,
    /// The image before the last update, kept after the update settles (unlike
    /// `previous_image`): `shoal service rollback` returns to it. The cluster keeps it: a spec
    /// sent to the API does not set it and JSON does not carry it (see
    /// [`ServiceInfo::rollback_image`]); the service map's binary form carries it beside the
    /// spec, so specs of the format before it encode (and are signed) as they were.
    #[serde(skip)]
    pub rollback_image: Option<String>,
}

/// How many replicas a service runs and where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// `replicas` copies, placed by the scheduler.
    #[default]
    Replicated,
    /// One copy on every peer that matches the constraints (Swarm's `--mode global`, Nomad's
    /// system jobs, Kubernetes' DaemonSets).
    Global,
}

impl std::fmt::Display for ServiceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceMode::Replicated => "replicated",
            ServiceMode::Global => "global",
        })
    }
}

impl std::str::FromStr for ServiceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "replicated" => Ok(ServiceMode::Replicated),
            "global" => Ok(ServiceMode::Global),
            other => Err(format!("unknown mode {other:?}: use replicated or global")),
        }
    }
}

/// Which replica of a service: its index (replicated services) or the id of the peer it
/// belongs to (global services). In JSON a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Slot {
    /// Replica `i` of a replicated service, 0-based.
    Index(u32),
    /// The replica of a global service on this peer (its full id).
    Peer(String),
}

impl Slot {
    /// The index, for a replicated service's slot.
    pub fn index(&self) -> Option<u32> {
        match self {
            Slot::Index(i) => Some(*i),
            Slot::Peer(_) => None,
        }
    }

    /// The text a container name and label use: the index, or the peer id's last 8 characters
    /// (libp2p ids share their first characters).
    pub fn short(&self) -> String {
        match self {
            Slot::Index(i) => i.to_string(),
            Slot::Peer(p) => p.chars().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect(),
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Index(i) => write!(f, "{i}"),
            Slot::Peer(p) => f.write_str(p),
        }
    }
}

fn one() -> u32 {
    1
}

/// `--autoscale MIN:MAX --target-cpu PCT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Autoscale {
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Target mean CPU use per replica, percent of its CPU limit.
    pub target_cpu_percent: u32,
}

/// One replica as the peer running it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaInfo {
    /// Service name.
    pub service: String,
    /// Which replica: an index, or for a global service the peer it belongs to.
    pub slot: Slot,
    /// Peer id running it (or assigned to run it); empty when no peer can.
    pub peer: String,
    /// Peer name.
    pub peer_name: String,
    /// Container id (empty before a container exists).
    pub container: String,
    /// `starting`, `running`, `unhealthy`, `exited`, `failed` (its last start failed),
    /// `pending` (assigned, not reported yet) or `unplaced` (no peer can run it).
    pub state: String,
    /// Start time, seconds since the epoch.
    pub started_unix: Option<u64>,
    /// Restarts so far.
    pub restarts: u32,
    /// Container address on its peer's bridge.
    pub ip: Option<String>,
    /// Version of the service spec it runs.
    pub version: String,
    /// CPU it used lately, millicores (for autoscaling).
    #[serde(default)]
    pub cpu_milli: u64,
    /// Why it is not running, when it is not: the last start's failure, or why no peer can
    /// run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ReplicaInfo {
    /// `web.0`, `agent.Ab3dEfGh`: what `service ps` and container names call it.
    pub fn name(&self) -> String {
        format!("{}.{}", self.service, self.slot.short())
    }
}

/// A service and how it is doing, for `service ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceInfo {
    /// The spec.
    pub spec: ServiceSpec,
    /// Version of the spec (hybrid logical clock, comparable as text).
    pub version: String,
    /// Replicas seen running anywhere.
    pub running: u32,
    /// Replicas wanted: the replica count, or for a global service the matching peers.
    #[serde(default)]
    pub desired: u32,
    /// `running` (all desired run), `starting`, `degraded` (some run), `failing` (starts fail),
    /// `unplaceable` (no peer can run some) or `empty` (nothing desired).
    pub state: String,
    /// Why replicas cannot be placed, when they cannot.
    #[serde(default)]
    pub unplaced: Vec<String>,
    /// Why replicas fail to start, when they do (distinct messages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The image `shoal service rollback` would return to: the one before the last update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_image: Option<String>,
}

/// One line of a service's output, with the replica it came from (`service logs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceLogLine {
    /// `web.0`.
    pub replica: String,
    /// Name of the peer running it.
    pub peer_name: String,
    /// Container id.
    pub container: String,
    /// The line.
    #[serde(flatten)]
    pub entry: crate::LogEntry,
}

#[cfg(test)]
mod spec_tests {
    use super::ServiceSpec;

    #[test]
    fn a_spec_with_host_volumes_or_unknown_fields_is_refused() {
        let ok = serde_json::from_str::<ServiceSpec>(r#"{"name":"web","image":"app:v1","replicas":1}"#);
        assert!(ok.is_ok(), "{ok:?}");
        let err = serde_json::from_str::<ServiceSpec>(
            r#"{"name":"web","image":"app:v1","replicas":1,"volumes":[{"host":"/","container":"/host"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("volumes"), "{err}");
    }
}
