//! Services: replicated workloads the cluster places on peers without a leader.
//!
//! `ServiceSpec` is what the user declares (`shoal service create`, `shoal deploy`); the
//! cluster replicates it to every peer. `ReplicaInfo` is what a peer reports about the replicas
//! it runs; `ServiceInfo` is the summary `service ls` prints.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A service as declared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Published ports (each replica on its peer).
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
    /// Replica index, 0-based.
    pub index: u32,
    /// Peer id running it.
    pub peer: String,
    /// Peer name.
    pub peer_name: String,
    /// Container id.
    pub container: String,
    /// Container state (`running`, `exited`, ...).
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
    /// `running`, `starting`, `degraded` or `unplaceable`.
    pub state: String,
    /// Why replicas cannot be placed, when they cannot.
    #[serde(default)]
    pub unplaced: Vec<String>,
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
