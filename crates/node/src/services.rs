//! Services in the agent: the [`shoal_services`] actor wired to this peer's runtime and
//! overlay, and the `/shoal/state/1` protocol.
//!
//! - [`NodeContainers`] implements the actor's container effects over the runtime (images
//!   pulled from peers when missing; health checks through [`crate::exec::ExecSession`]).
//! - [`NodeCluster`] implements its cluster effects over the overlay: members with their
//!   records, this peer's reports published and pushed at once, the change notifications,
//!   and desired-state exchanges over `/shoal/state/1`.
//! - The accept loop of `/shoal/state/1` (one task, each exchange a task of its own bounded to
//!   [`STATE_SERVE_LIMIT`], all tied to the node's cancellation token) hands a peer's map to the
//!   actor (`Sync` → `Sync`/`Same`) and serves log lines of local replicas (`Logs` →
//!   `LogLines`, for `service logs`) and restarts them (`Restart` → `Restarting`, for
//!   `service restart`).

use crate::{ErrorKind, Node, NodeError};
use shoal_overlay::Overlay;
use shoal_overlay::libp2p::{PeerId, StreamProtocol};
use shoal_runtime::state::StartFailure;
use shoal_scheduler::{Fault, PeerView};
use shoal_services::{Cluster, ClusterView, Containers, EffectError, LABEL_SERVICE, Member, reports};
use shoal_types::{ContainerInfo, ContainerSpec, ReplicaInfo, ServiceInfo, ServiceSpec};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The desired-state protocol.
pub(crate) const STATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/state/1");
/// Longest one inbound `/shoal/state/1` exchange may take (the asker gives up after 8 s).
const STATE_SERVE_LIMIT: Duration = Duration::from_secs(15);
/// Most `/shoal/state/1` exchanges served at once (each holds up to two 4 MiB maps).
const MAX_STATE_STREAMS: usize = 32;
/// How long a restarted replica gets to stop before it is killed (as `shoal stop`'s default).
const RESTART_GRACE_SECS: u64 = 10;
/// Largest message of the protocol.
const MAX_STATE_MSG: usize = shoal_services::store::MAX_MAP + 64;

/// Messages of `/shoal/state/1`: one request, one answer per stream (public for the tests that
/// speak it as a hostile peer would).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum StateMsg {
    /// The sender's whole map; the receiver merges it and answers with its own map if the two
    /// still differ after the merge, else with `Same`.
    Sync(Vec<u8>),
    /// The maps agree.
    Same,
    /// Asks for a local container's log lines newer than `since_nanos` (at most the last
    /// `tail`), for `service logs`.
    Logs {
        /// Container id.
        container: String,
        /// Only lines after this time.
        since_nanos: u64,
        /// At most this many (the newest).
        tail: u32,
    },
    /// The answer to `Logs`: (stream, time, text), oldest first.
    LogLines(Vec<(String, u64, String)>),
    /// The request could not be served.
    Refused,
    /// Asks the peer to restart a local service replica (`service restart`): only an operator
    /// peer may, and only a replica's container.
    Restart {
        /// Container id.
        container: String,
    },
    /// The answer to `Restart`: the replica is stopping, and the peer's next round starts a
    /// fresh one.
    Restarting,
}

/// How a failed start reads in the replica's report: whether another peer may do better.
fn fault(e: &NodeError) -> Fault {
    let local = match e {
        // No peer has the image, or the spec cannot run (a bad command, a bad config):
        // moving the replica would not help.
        NodeError::NoImage(_) => false,
        NodeError::Content(shoal_blobs::BlobsError::NoImageHolder(_)) => false,
        NodeError::Runtime(r) if matches!(e.kind(), ErrorKind::BadRequest) => {
            matches!(r, shoal_runtime::RuntimeError::VolumeMissing(_))
        }
        NodeError::Runtime(shoal_runtime::RuntimeError::Start { failure: StartFailure::Port, .. }) => true,
        _ => true,
    };
    Fault { local, message: e.to_string() }
}

/// The actor's container effects over this peer's runtime.
pub(crate) struct NodeContainers {
    pub(crate) node: Node,
}

impl Containers for NodeContainers {
    async fn list(&self) -> Result<Vec<ContainerInfo>, EffectError> {
        let all = self.node.containers(true).await.map_err(|e| EffectError::Runtime(e.to_string()))?;
        Ok(all.into_iter().filter(|c| c.spec.labels.contains_key(LABEL_SERVICE)).collect())
    }

    async fn start(&self, spec: ContainerSpec) -> Result<(), Fault> {
        // A container left with this name (exited, or an older version) gives way.
        if let Some(name) = &spec.name
            && let Ok(old) = self.node.container(name).await
        {
            let _ = self.node.remove_container(&old.id, true).await;
        }
        self.node.run_container(spec).await.map(|_| ()).map_err(|e| fault(&e))
    }

    async fn remove(&self, id: &str) -> Result<(), EffectError> {
        match self.node.remove_container(id, true).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EffectError::Runtime(e.to_string())),
        }
    }

    async fn check(&self, id: &str, cmd: Vec<String>, timeout: Duration) -> bool {
        match self.node.exec_session(id, cmd).await {
            Ok(session) => session.wait(timeout).await == Some(0),
            Err(e) => {
                debug!(container = %id, err = %e, "health check could not run");
                false
            }
        }
    }

    async fn cpu(&self) -> BTreeMap<String, u64> {
        let stats = self.node.container_stats().await.unwrap_or_default();
        stats.into_iter().map(|s| (s.id, (s.cpu_percent * 10.0).max(0.0) as u64)).collect()
    }

    fn exits(&self) -> Option<watch::Receiver<u64>> {
        Some(self.node.exits())
    }
}

/// The actor's cluster effects over the overlay.
pub(crate) struct NodeCluster {
    pub(crate) overlay: Overlay,
    pub(crate) node: Node,
}

impl Cluster for NodeCluster {
    fn me(&self) -> String {
        self.overlay.peer_id().to_string()
    }

    async fn view(&self) -> Result<ClusterView, EffectError> {
        let overlay = |e: shoal_overlay::OverlayError| EffectError::Overlay(e.to_string());
        let members = self.overlay.members().await.map_err(overlay)?;
        let status = self.overlay.status().await.map_err(overlay)?;
        let me = Member {
            view: PeerView {
                id: self.me(),
                capacity: self.node.capacity(),
                labels: self.node.config().labels.clone(),
                draining: false,
            },
            name: self.node.config().name.clone(),
            reports: None,
            has_record: true,
            operator: self.node.trust().writer_key(),
        };
        let mut out = vec![me];
        out.extend(members.into_iter().map(|m| {
            let draining = m.ext.get(reports::DRAINING_KEY).and_then(|v| v.as_bool()).unwrap_or(false);
            Member {
                view: PeerView { id: m.peer.to_string(), capacity: m.capacity, labels: m.labels, draining },
                name: m.name,
                reports: m.ext.get(reports::EXT_KEY).cloned(),
                has_record: m.has_record,
                operator: crate::trust::operator_key(self.node.trust(), &m.peer, &m.ext),
            }
        }));
        let known = status.known_peers.saturating_sub(1).max(status.remembered_peers);
        Ok(ClusterView { members: out, known })
    }

    async fn publish(&self, value: serde_json::Value, draining: bool) -> Result<(), EffectError> {
        let entries = vec![
            (reports::EXT_KEY.to_string(), Some(value)),
            (reports::DRAINING_KEY.to_string(), draining.then_some(serde_json::Value::Bool(true))),
        ];
        self.overlay.publish_ext(entries).await.map_err(|e| EffectError::Overlay(e.to_string()))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.overlay.changes()
    }

    async fn sync(&self, peer: &str, map: Vec<u8>) -> Result<Option<Vec<u8>>, EffectError> {
        let failed = |reason: String| EffectError::Peer { peer: peer.to_string(), reason };
        let id: PeerId = peer.parse().map_err(|_| failed("not a peer id".into()))?;
        match self.node.ask_state(id, &StateMsg::Sync(map)).await.map_err(failed)? {
            StateMsg::Sync(theirs) => Ok(Some(theirs)),
            StateMsg::Same => Ok(None),
            _ => Err(failed("unexpected answer".into())),
        }
    }
}

impl Node {
    /// Serves `/shoal/state/1` until the node shuts down.
    pub(crate) fn serve_state_protocol(&self) -> Result<(), NodeError> {
        let mut incoming =
            self.overlay().streams().accept(STATE_PROTOCOL).map_err(|_| NodeError::ProtocolTaken("/shoal/state/1"))?;
        let node = self.clone();
        let cancel = self.cancel().clone();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_STATE_STREAMS));
        self.tasks().spawn(async move {
            use futures::StreamExt;
            loop {
                let (peer, stream) = tokio::select! {
                    next = incoming.next() => match next { Some(s) => s, None => return },
                    () = cancel.cancelled() => return,
                };
                // Bounded: past MAX_STATE_STREAMS exchanges at once, a new stream is dropped
                // unanswered (the asker's anti-entropy tries again later).
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    debug!(%peer, "state exchanges at their limit; stream dropped");
                    continue;
                };
                let (node2, cancel2) = (node.clone(), cancel.clone());
                node.tasks().spawn(async move {
                    let _slot = slot;
                    // A peer that opens a stream and goes quiet does not hold it for ever.
                    tokio::select! {
                        r = tokio::time::timeout(STATE_SERVE_LIMIT, node2.serve_state(peer, stream)) => match r {
                            Ok(Err(e)) => debug!(%peer, err = %e, "state exchange failed"),
                            Err(_) => debug!(%peer, "state exchange timed out"),
                            Ok(Ok(())) => {}
                        },
                        () = cancel2.cancelled() => {}
                    }
                });
            }
        });
        Ok(())
    }

    async fn serve_state(
        &self,
        peer: PeerId,
        mut stream: shoal_overlay::libp2p::Stream,
    ) -> Result<(), shoal_blobs::proto::ProtoError> {
        use shoal_blobs::proto::{read_msg, write_msg};
        let msg: StateMsg = read_msg(&mut stream, MAX_STATE_MSG).await?;
        let answer = match msg {
            StateMsg::Logs { container, since_nanos, tail } => {
                // Only service replicas' logs are for other peers, and only for operator
                // peers; a plain `shoal run` container's are not (its owner reads them through
                // this peer's API).
                let replica = self.peer_is_operator(&peer).await
                    && self.container(&container).await.is_ok_and(|c| c.spec.labels.contains_key(LABEL_SERVICE));
                let lines =
                    if replica { self.local_log_lines(&container, since_nanos, tail).await } else { Vec::new() };
                StateMsg::LogLines(lines)
            }
            StateMsg::Restart { container } => {
                // Only an operator peer, and only a service replica's container.
                let replica = self.peer_is_operator(&peer).await
                    && self.container(&container).await.is_ok_and(|c| c.spec.labels.contains_key(LABEL_SERVICE));
                if replica {
                    let members = self.overlay().members().await.unwrap_or_default();
                    let by =
                        members.iter().find(|m| m.peer == peer).map_or_else(|| peer.to_string(), |m| m.name_or_id());
                    self.restart_local_replica(&container, &by);
                    StateMsg::Restarting
                } else {
                    StateMsg::Refused
                }
            }
            StateMsg::Sync(bytes) => match self.services().merge(bytes).await {
                Ok(Ok(Some(ours))) => StateMsg::Sync(ours),
                Ok(Ok(None)) => StateMsg::Same,
                Ok(Err(e)) => {
                    debug!(err = %e, "a peer sent a service map that does not decode");
                    StateMsg::Refused
                }
                Err(_) => StateMsg::Refused,
            },
            _ => StateMsg::Refused,
        };
        write_msg(&mut stream, &answer).await?;
        Ok(())
    }

    /// One request and its answer over `/shoal/state/1` (3 s to open, 5 s to answer).
    pub(crate) async fn ask_state(&self, peer: PeerId, msg: &StateMsg) -> Result<StateMsg, String> {
        use shoal_blobs::proto::{read_msg, write_msg};
        let mut control = self.overlay().streams();
        let mut stream = tokio::time::timeout(Duration::from_secs(3), control.open_stream(peer, STATE_PROTOCOL))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        let exchange = async {
            write_msg(&mut stream, msg).await?;
            read_msg::<_, StateMsg>(&mut stream, MAX_STATE_MSG).await
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())
    }

    /// Declares a new service.
    pub async fn create_service(&self, mut spec: ServiceSpec) -> Result<ServiceInfo, NodeError> {
        spec.image = self.pin_image(&spec.image).await?;
        spec.vip = self.pick_vip(&spec.name).await?;
        Ok(self.services().create(spec).await?)
    }

    /// Replaces the spec of service `name` (a rolling update when what runs changes).
    pub async fn update_service(&self, name: &str, mut spec: ServiceSpec) -> Result<ServiceInfo, NodeError> {
        if spec.name != name {
            let e = shoal_services::ServiceError::NameMismatch { body: spec.name, path: name.to_string() };
            return Err(e.into());
        }
        spec.image = self.pin_image(&spec.image).await?;
        Ok(self.services().update(spec).await?)
    }

    /// Rolls service `name` back to the image it ran before its last update (Swarm's `service
    /// rollback`): a rolling update to that image, after which the image it leaves is the one
    /// to roll back to.
    pub async fn rollback_service(&self, name: &str) -> Result<ServiceInfo, NodeError> {
        self.may_write().await?;
        let mut spec = self.service_spec(name).await?;
        let Some(to) = spec.rollback_image.clone() else { return Err(NodeError::NoRollback(name.to_string())) };
        let from = std::mem::replace(&mut spec.image, to.clone());
        // (Read, then written like `scale`: an update landing in between loses to this one.)
        let info = self.services().update(spec).await?;
        info!(ev = "rollout.rolled_back", service = %name, %from, %to, reason = "asked", "rolling back as asked");
        Ok(info)
    }

    /// Restarts one replica of service `name` (`replica`: its index, or for a global service
    /// its peer's id or the id's last 8 characters) wherever it runs: its peer stops the
    /// container and starts a fresh one. Only an operator peer may; the answer is the replica
    /// as it was.
    pub async fn restart_replica(&self, name: &str, replica: &str) -> Result<ReplicaInfo, NodeError> {
        self.may_write().await?;
        let all = self.replicas(Some(name)).await?;
        // During a move or a rollout a slot may have several copies: the running one first.
        let mut copies: Vec<ReplicaInfo> =
            all.into_iter().filter(|r| r.slot.to_string() == replica || r.slot.short() == replica).collect();
        copies.sort_by_key(|r| (r.state != "running", r.container.is_empty()));
        let Some(r) = copies.into_iter().next() else {
            return Err(NodeError::NoReplica { service: name.to_string(), replica: replica.to_string() });
        };
        if r.container.is_empty() {
            return Err(NodeError::ReplicaNotStarted { replica: r.name(), state: r.state.clone() });
        }
        let me = self.overlay().peer_id();
        if r.peer == me.to_string() {
            self.restart_local_replica(&r.container, "this peer");
            return Ok(r);
        }
        let refused = |why: String| NodeError::RestartRefused { replica: r.name(), peer: r.peer_name.clone(), why };
        let peer: PeerId = r.peer.parse().map_err(|_| refused("its peer id does not parse".into()))?;
        match self.ask_state(peer, &StateMsg::Restart { container: r.container.clone() }).await {
            Ok(StateMsg::Restarting) => Ok(r),
            Ok(_) => Err(refused(
                "it refused (it does not run that container any more, or does not take this peer for an operator)"
                    .into(),
            )),
            Err(e) => Err(refused(e)),
        }
    }

    /// Refuses unless this peer may change services (operator key, not revoked).
    async fn may_write(&self) -> Result<(), NodeError> {
        match self.services().may_write().await? {
            true => Ok(()),
            false => Err(shoal_services::ServiceError::NotOperator.into()),
        }
    }

    /// Stops a local replica's container in the background; the services round that its exit
    /// wakes starts a fresh one (the stop is asked for, so it counts as no crash).
    fn restart_local_replica(&self, container: &str, by: &str) {
        let (node, container, by) = (self.clone(), container.to_string(), by.to_string());
        tokio::spawn(async move {
            let (service, replica) = match node.container(&container).await {
                Ok(c) => (c.spec.labels.get(LABEL_SERVICE).cloned().unwrap_or_default(), c.name.clone()),
                Err(_) => return,
            };
            info!(ev = "replica.restarted", %service, %replica, %container, %by, "restarting a replica as asked");
            if let Err(e) = node.stop_container(&container, RESTART_GRACE_SECS).await {
                warn!(%container, err = %e, "cannot stop the replica to restart it");
            }
        });
    }

    /// Changes a replicated service's replica count.
    pub async fn scale_service(&self, name: &str, replicas: u32) -> Result<ServiceInfo, NodeError> {
        Ok(self.services().scale(name, replicas).await?)
    }

    /// Spreads a service's replicas evenly again, one batch at a time.
    pub async fn rebalance_service(&self, name: &str) -> Result<ServiceInfo, NodeError> {
        Ok(self.services().rebalance(name).await?)
    }

    /// Removes a service everywhere.
    pub async fn remove_service(&self, name: &str) -> Result<(), NodeError> {
        Ok(self.services().remove(name).await?)
    }

    /// A live service's spec.
    pub async fn service_spec(&self, name: &str) -> Result<ServiceSpec, NodeError> {
        Ok(self.services().spec(name).await?)
    }

    /// Every service with how it is doing.
    pub async fn service_list(&self) -> Result<Vec<ServiceInfo>, NodeError> {
        Ok(self.services().list().await?)
    }

    /// One service.
    pub async fn service(&self, name: &str) -> Result<ServiceInfo, NodeError> {
        Ok(self.services().get(name).await?)
    }

    /// The replicas of `name` (or of every service): where they run, or why they do not.
    pub async fn replicas(&self, name: Option<&str>) -> Result<Vec<ReplicaInfo>, NodeError> {
        Ok(self.services().replicas(name).await?)
    }
}
