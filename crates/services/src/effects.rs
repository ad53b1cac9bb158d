//! The actor's edges: this peer's containers ([`Containers`]) and the cluster ([`Cluster`]:
//! membership, records, the desired-state protocol). The agent implements them over its
//! runtime and overlay; [`crate::fake`] implements them in memory for tests.

use crate::error::EffectError;
use shoal_scheduler::{Fault, PeerView};
use shoal_types::{ContainerInfo, ContainerSpec};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// This peer's containers.
pub trait Containers: Send + Sync + 'static {
    /// Every container of a service replica here (any state), recognised by its labels.
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerInfo>, EffectError>> + Send;
    /// Creates and starts a container, pulling its image if this peer lacks it. A failure says
    /// whether another peer may do better ([`Fault::local`]).
    fn start(&self, spec: ContainerSpec) -> impl Future<Output = Result<(), Fault>> + Send;
    /// Stops (at once) and removes a container.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Runs `cmd` in the container as an exec would; whether it exited 0 within `timeout`
    /// (a command still running then is killed, with everything it started).
    fn check(&self, id: &str, cmd: Vec<String>, timeout: Duration) -> impl Future<Output = bool> + Send;
    /// CPU use per running container, millicores, over the time since the last call.
    fn cpu(&self) -> impl Future<Output = BTreeMap<String, u64>> + Send;
    /// Changes whenever a container exits, if the runtime can tell.
    fn exits(&self) -> Option<watch::Receiver<u64>>;
}

/// One live member as the actor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// What placement needs (id, capacity, labels, draining).
    pub view: PeerView,
    /// Its name, for `service ps`.
    pub name: String,
    /// The replica reports in its record (`ext.replicas`), if it published any.
    pub reports: Option<serde_json::Value>,
    /// Whether its record has arrived (without it, its replicas are unknown).
    pub has_record: bool,
    /// Its writer key, when its record carries an operator grant that checks out (it may write
    /// desired state unless that key is revoked, and automatic rewrites fall to such peers).
    pub operator: Option<[u8; 32]>,
}

/// The cluster as this peer sees it now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterView {
    /// Alive and suspect members, this peer included.
    pub members: Vec<Member>,
    /// Peers this one knows of in any state, itself excluded (0: it has never met another).
    pub known: usize,
}

/// Membership, records and the desired-state protocol.
pub trait Cluster: Send + Sync + 'static {
    /// This peer's id.
    fn me(&self) -> String;
    /// The members and their records.
    fn view(&self) -> impl Future<Output = Result<ClusterView, EffectError>> + Send;
    /// Publishes this peer's reports and draining flag in its record, and sends the record to
    /// the members now (not only by gossip).
    fn publish(
        &self,
        reports: serde_json::Value,
        draining: bool,
    ) -> impl Future<Output = Result<(), EffectError>> + Send;
    /// Changes whenever membership or a record changes.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Sends this peer's encoded service map to `peer`, which merges it; its map back if the
    /// two still differ.
    fn sync(&self, peer: &str, map: Vec<u8>) -> impl Future<Output = Result<Option<Vec<u8>>, EffectError>> + Send;
}
