//! What the cluster knows about a peer, as `shoal peers` and `shoal status` show it.

use crate::{Labels, Resources};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A peer's liveness as this agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PeerState {
    /// Answering probes.
    Alive,
    /// Missed its probes; declared dead unless it refutes in time.
    Suspect,
    /// Declared failed by the cluster.
    Dead,
    /// Announced that it left (graceful shutdown).
    Left,
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Dead => "dead",
            PeerState::Left => "left",
        })
    }
}

impl PeerState {
    /// Alive or suspect: still counted as a member.
    pub fn is_active(self) -> bool {
        matches!(self, PeerState::Alive | PeerState::Suspect)
    }
}

/// One row of `shoal peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PeerInfo {
    /// The peer id (libp2p, base58).
    pub id: String,
    /// The name the peer was started with (`--name`, default: host name).
    pub name: String,
    /// Addresses the peer listens on, as multiaddrs.
    pub addrs: Vec<String>,
    /// alive, suspect, dead or left.
    pub state: PeerState,
    /// What the peer offers to workloads.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::resources::ResourcesJson))]
    pub capacity: Resources,
    /// What is still unreserved.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::resources::ResourcesJson))]
    pub free: Resources,
    /// `--label` pairs.
    pub labels: Labels,
    /// Shoal version the peer runs (empty until its record arrives).
    pub version: String,
    /// Which run of the peer this is; grows every time the peer restarts or rejoins.
    pub generation: u64,
    /// Whether this row is the agent answering the request.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Milliseconds since the state last changed, as seen by the answering agent.
    pub since_ms: u64,
}

/// `shoal status`: this agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentStatus {
    /// This peer's id.
    pub id: String,
    /// This peer's name.
    pub name: String,
    /// Shoal version.
    pub version: String,
    /// Addresses the overlay listens on, as multiaddrs ending in `/p2p/<id>`.
    pub listen_addrs: Vec<String>,
    /// Peers alive or suspect, this one included.
    pub cluster_size: usize,
    /// Peers in every state, this one included.
    pub known_peers: usize,
    /// Whether a cluster key (private network) is in use.
    pub private_network: bool,
    /// This run's generation.
    pub generation: u64,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// The agent's data directory.
    pub data_dir: String,
    /// Messages from peers dropped as malformed, oversized or forged since start.
    pub dropped_messages: u64,
    /// Content bytes uploaded to other peers since start.
    pub uploaded_bytes: u64,
}
