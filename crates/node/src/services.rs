//! Leaderless services: the replicated desired state, its anti-entropy, and this peer's
//! reconciliation loop.
//!
//! - **Desired state** is a [`ServiceMap`] CRDT (last-writer-wins per service under a hybrid
//!   logical clock, tombstones for removals). A change made here is merged locally, written to
//!   `services.bin` (atomically, fsynced), and pushed to every live peer over
//!   `/shoal/state/1`. Every second this peer also exchanges its whole map with one random live
//!   peer (push-pull), so a peer that was away, or missed a push, catches up.
//! - **Placement** is computed by every peer from the same inputs (the map, the live peers,
//!   their capacities and labels) with [`shoal_scheduler::place`]; each peer starts only the
//!   replicas assigned to itself and stops the ones that are not (any more). Once membership
//!   views agree, every replica has exactly one owner; see crates/scheduler/DESIGN.md.
//! - **Reports**: each peer publishes the replicas it runs in its signed peer record (`ext`
//!   key `replicas`), which the overlay gossips; `service ls/ps` read them from every member.
//!
//! One task owns the loop; the API talks to it through [`Services`] (the map behind a mutex
//! that is never held across an await).

use crate::{Node, NodeError};
use shoal_overlay::libp2p::{PeerId, StreamProtocol};
use shoal_scheduler::{Action, Clock, PeerView, Running, ServiceMap};
use shoal_types::{ContainerSpec, ContainerState, ReplicaInfo, RestartPolicy, ServiceInfo, ServiceSpec};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

/// The desired-state protocol.
pub(crate) const STATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/state/1");
/// Largest encoded service map accepted from a peer.
pub(crate) const MAX_MAP: usize = 4 << 20;
/// Labels that mark a container as a service replica.
const LABEL_SERVICE: &str = "shoal.service";
/// Longest one inbound `/shoal/state/1` exchange may take (the asker gives up after 8 s).
const STATE_SERVE_LIMIT: Duration = Duration::from_secs(15);
const LABEL_INDEX: &str = "shoal.replica";
const LABEL_VERSION: &str = "shoal.version";

/// Messages of `/shoal/state/1`: one request, one answer per stream.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum StateMsg {
    /// The sender's whole map ([`ServiceMap::encode`]); the receiver merges it and answers with its own map
    /// if the two still differ after the merge, else with `Same`.
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
}

/// Why a replica failed to start here, when, how many times in a row, at which version.
pub(crate) type StartFailure = (String, std::time::Instant, u32, String);

/// The services subsystem's shared state.
pub(crate) struct Services {
    map: Mutex<ServiceMap>,
    clock: Mutex<Clock>,
    path: PathBuf,
    /// Wakes the reconciler early (after a change).
    kick: tokio::sync::Notify,
    /// Replicas being started now (service, index), so a slow start is not started twice.
    starting: Mutex<HashSet<(String, u32)>>,
    /// Why a replica assigned here failed to start, when, and how many times in a row
    /// (the next attempt waits 1 s doubling to 30 s).
    pub(crate) failures: Mutex<BTreeMap<(String, u32), StartFailure>>,
    /// Last CPU sample of the local replicas (when, container → millicores).
    cpu: Mutex<(Option<std::time::Instant>, BTreeMap<String, u64>)>,
    /// Serialises writes of `services.bin`.
    saving: Mutex<()>,
    /// When this peer last changed each service's replica count by autoscaling.
    pub(crate) scaled: Mutex<BTreeMap<String, std::time::Instant>>,
    /// Health of local replica containers, by container id.
    pub(crate) health: Mutex<BTreeMap<String, crate::rollout::Health>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Services {
    /// Loads `services.json` (or starts empty).
    pub(crate) fn open(dir: &std::path::Path, node_id: &str) -> Services {
        let path = dir.join("services.bin");
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| match ServiceMap::decode(&b, MAX_MAP) {
                Ok(m) => Some(m),
                Err(e) => {
                    warn!(err = %e, path = %path.display(), "cannot read the saved services; starting from the cluster's copy");
                    None
                }
            })
            .unwrap_or_default();
        Services {
            map: Mutex::new(map),
            clock: Mutex::new(Clock::new(node_id.to_string())),
            path,
            kick: tokio::sync::Notify::new(),
            starting: Mutex::new(HashSet::new()),
            failures: Mutex::new(BTreeMap::new()),
            health: Mutex::new(BTreeMap::new()),
            scaled: Mutex::new(BTreeMap::new()),
            saving: Mutex::new(()),
            cpu: Mutex::new((None, BTreeMap::new())),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, ServiceMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self) {
        // One writer at a time, encoding under the lock: the file always holds a whole map,
        // and never an older one than the last save.
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = self.map().encode();
        let tmp = self.path.with_extension("tmp");
        let result = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            warn!(err = %e, "cannot save the services");
        }
    }

    /// Merges a peer's map; returns whether ours changed.
    fn merge(&self, other: &ServiceMap) -> bool {
        if let Some(v) = other.max_version() {
            self.clock.lock().unwrap_or_else(|e| e.into_inner()).observe(v);
        }
        let changed = self.map().merge(other);
        if changed {
            self.save();
            self.kick.notify_one();
        }
        changed
    }
}

fn check_spec(spec: &ServiceSpec) -> Result<(), NodeError> {
    shoal_types::container::check_name(&spec.name).map_err(|e| NodeError::Invalid(e.to_string()))?;
    if spec.image.is_empty() {
        return Err(NodeError::Invalid("a service needs an image".into()));
    }
    if spec.replicas > 10_000 {
        return Err(NodeError::Invalid("at most 10000 replicas per service".into()));
    }
    for e in &spec.env {
        shoal_types::container::check_env(e).map_err(|e| NodeError::Invalid(e.to_string()))?;
    }
    if let Some(a) = spec.autoscale
        && (a.min == 0 || a.min > a.max || a.max > 10_000 || a.target_cpu_percent == 0)
    {
        return Err(NodeError::Invalid("--autoscale needs 1 <= MIN <= MAX <= 10000 and a target above 0".into()));
    }
    if spec.memory_bytes != 0 && spec.memory_bytes < 6 << 20 {
        return Err(NodeError::Invalid("--memory is below the minimum of 6 MiB".into()));
    }
    Ok(())
}

impl Node {
    fn services(&self) -> &Arc<Services> {
        self.services_cell()
    }

    /// Starts the services subsystem: the state protocol, anti-entropy and the reconciler.
    pub(crate) fn start_services(&self) -> Result<(), NodeError> {
        let mut incoming = self
            .overlay()
            .streams()
            .accept(STATE_PROTOCOL)
            .map_err(|_| NodeError::Invalid("the state protocol is already registered".into()))?;
        let node = self.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            while let Some((peer, stream)) = incoming.next().await {
                let node = node.clone();
                tokio::spawn(async move {
                    // A peer that opens a stream and goes quiet does not hold it for ever.
                    match tokio::time::timeout(STATE_SERVE_LIMIT, node.serve_state(stream)).await {
                        Ok(Err(e)) => debug!(%peer, err = %e, "state exchange failed"),
                        Err(_) => debug!(%peer, "state exchange timed out"),
                        Ok(Ok(())) => {}
                    }
                });
            }
        });
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                node.anti_entropy().await;
            }
        });
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = node.reconcile().await {
                    debug!(err = %e, "reconcile failed");
                }
                let _ = tokio::time::timeout(Duration::from_millis(250), node.services().kick.notified()).await;
            }
        });
        Ok(())
    }

    async fn serve_state(
        &self,
        mut stream: shoal_overlay::libp2p::Stream,
    ) -> Result<(), shoal_blobs::proto::ProtoError> {
        use shoal_blobs::proto::{read_msg, write_msg};
        let msg: StateMsg = read_msg(&mut stream, MAX_MAP + 64).await?;
        if let StateMsg::Logs { container, since_nanos, tail } = &msg {
            // Only service replicas' logs are for other peers; a plain `shoal run` container's
            // are not (its owner reads them through this peer's API).
            let replica = self.container(container).await.is_ok_and(|c| c.spec.labels.contains_key(LABEL_SERVICE));
            let lines = if replica { self.local_log_lines(container, *since_nanos, *tail).await } else { Vec::new() };
            write_msg(&mut stream, &StateMsg::LogLines(lines)).await?;
            return Ok(());
        }
        if let StateMsg::Sync(bytes) = msg {
            match ServiceMap::decode(&bytes, MAX_MAP) {
                Ok(theirs) => {
                    self.services().merge(&theirs);
                    let same = theirs.digest() == self.services().map().digest();
                    let answer = if same { StateMsg::Same } else { StateMsg::Sync(self.encoded_map()) };
                    write_msg(&mut stream, &answer).await?;
                }
                Err(e) => debug!(err = %e, "a peer sent a service map that does not decode"),
            }
        }
        Ok(())
    }

    fn encoded_map(&self) -> Vec<u8> {
        self.services().map().encode()
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
            read_msg::<_, StateMsg>(&mut stream, MAX_MAP + 64).await
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())
    }

    /// Sends our map to `peer` and merges its answer.
    async fn sync_with(&self, peer: PeerId) -> Result<(), String> {
        if let StateMsg::Sync(bytes) = self.ask_state(peer, &StateMsg::Sync(self.encoded_map())).await? {
            let theirs = ServiceMap::decode(&bytes, MAX_MAP).map_err(|e| e.to_string())?;
            self.services().merge(&theirs);
        }
        Ok(())
    }

    async fn anti_entropy(&self) {
        let Ok(members) = self.overlay().members().await else { return };
        if members.is_empty() {
            return;
        }
        let pick = (rand_u64() as usize) % members.len();
        let _ = self.sync_with(members[pick].peer).await;
    }

    /// Pushes our map to every live peer without making the caller wait (the change is on
    /// disk already; a peer that misses the push gets it from anti-entropy).
    fn push_in_background(&self) {
        let node = self.clone();
        tokio::spawn(async move { node.push_all().await });
    }

    /// Pushes our map to every live peer (after a local change).
    async fn push_all(&self) {
        let Ok(members) = self.overlay().members().await else { return };
        let pushes = members.into_iter().map(|m| {
            let node = self.clone();
            async move {
                let _ = node.sync_with(m.peer).await;
            }
        });
        futures::future::join_all(pushes).await;
    }

    /// Creates (or with `replace`, updates) a service.
    pub async fn put_service(&self, spec: ServiceSpec, replace: bool) -> Result<ServiceInfo, NodeError> {
        check_spec(&spec)?;
        let old = self.services().map().get(&spec.name).cloned();
        let spec = Self::with_previous(old.as_ref(), spec);
        {
            let svc = self.services();
            let exists = old.is_some();
            if exists && !replace {
                return Err(NodeError::Conflict(format!(
                    "service {} exists; change it with `shoal service update` or `shoal service scale`",
                    spec.name
                )));
            }
            if !exists && replace {
                return Err(NodeError::NotFound { what: format!("service {}", spec.name) });
            }
            let hlc = svc.clock.lock().unwrap_or_else(|e| e.into_inner()).tick(now_ms());
            svc.map().put(spec.clone(), hlc);
            svc.save();
            svc.kick.notify_one();
        }
        info!(service = %spec.name, replicas = spec.replicas, image = %spec.image, "service declared");
        self.push_in_background();
        self.service(&spec.name).await
    }

    /// Writes `spec` as the service's new version (no existence checks): used by rollback.
    pub(crate) async fn put_service_internal(&self, spec: ServiceSpec) -> Result<(), NodeError> {
        {
            let svc = self.services();
            let hlc = svc.clock.lock().unwrap_or_else(|e| e.into_inner()).tick(now_ms());
            svc.map().put(spec, hlc);
            svc.save();
            svc.kick.notify_one();
        }
        self.push_in_background();
        Ok(())
    }

    /// Changes the replica count.
    pub async fn scale_service(&self, name: &str, replicas: u32) -> Result<ServiceInfo, NodeError> {
        let mut spec = self.service_spec(name)?;
        spec.replicas = replicas;
        self.put_service(spec, true).await
    }

    /// The spec of a live service.
    pub fn service_spec(&self, name: &str) -> Result<ServiceSpec, NodeError> {
        self.services().map().get(name).cloned().ok_or_else(|| NodeError::NotFound { what: format!("service {name}") })
    }

    /// Removes a service everywhere (its replicas are stopped by their peers).
    pub async fn remove_service(&self, name: &str) -> Result<(), NodeError> {
        {
            let svc = self.services();
            if svc.map().get(name).is_none() {
                return Err(NodeError::NotFound { what: format!("service {name}") });
            }
            let hlc = svc.clock.lock().unwrap_or_else(|e| e.into_inner()).tick(now_ms());
            svc.map().remove(name, hlc);
            svc.save();
            svc.kick.notify_one();
        }
        self.push_in_background();
        Ok(())
    }

    /// Every replica every live peer reports, plus this peer's own.
    pub async fn replicas(&self) -> Result<Vec<ReplicaInfo>, NodeError> {
        let mut out = self.local_replicas().await.unwrap_or_default();
        for m in self.overlay().members().await? {
            if let Some(v) = m.ext.get("replicas") {
                out.extend(decode_reports(v, &m.peer.to_string(), &m.name));
            }
        }
        out.sort_by(|a, b| a.service.cmp(&b.service).then(a.index.cmp(&b.index)).then(a.peer.cmp(&b.peer)));
        Ok(out)
    }

    /// Every service with its running count.
    pub async fn service_list(&self) -> Result<Vec<ServiceInfo>, NodeError> {
        let replicas = self.replicas().await?;
        let (assignment, _) = self.assignment().await?;
        let map = self.services().map().clone();
        Ok(map
            .live()
            .map(|(name, spec, version)| {
                let running = replicas.iter().filter(|r| r.service == name && r.state == "running").count() as u32;
                let unplaced: Vec<String> = assignment
                    .unplaced
                    .iter()
                    .filter(|((s, _), _)| s == name)
                    .map(|((_, i), why)| format!("replica {i}: {why}"))
                    .collect();
                let state = if running >= spec.replicas {
                    "running"
                } else if !unplaced.is_empty() {
                    "unplaceable"
                } else if running == 0 {
                    "starting"
                } else {
                    "degraded"
                };
                ServiceInfo { spec: spec.clone(), version: version.to_string(), running, state: state.into(), unplaced }
            })
            .collect())
    }

    /// One service.
    pub async fn service(&self, name: &str) -> Result<ServiceInfo, NodeError> {
        self.service_list()
            .await?
            .into_iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| NodeError::NotFound { what: format!("service {name}") })
    }

    /// The placement this peer computes now, and its own id.
    async fn assignment(&self) -> Result<(shoal_scheduler::Assignment, String), NodeError> {
        let peers = self.overlay().peers().await?;
        let members = self.overlay().members().await?;
        let draining: HashSet<String> = members
            .iter()
            .filter(|m| m.ext.get("draining").and_then(|v| v.as_bool()).unwrap_or(false))
            .map(|m| m.peer.to_string())
            .collect();
        let me = self.overlay().peer_id().to_string();
        let views: Vec<PeerView> = peers
            .iter()
            .filter(|p| p.state.is_active())
            .map(|p| PeerView {
                id: p.id.clone(),
                capacity: p.capacity,
                labels: p.labels.clone(),
                draining: draining.contains(&p.id) || (p.id == me && self.is_draining()),
            })
            .collect();
        let map = self.services().map().clone();
        let assignment = shoal_scheduler::place(map.live().map(|(n, s, _)| (n, s)), &views);
        Ok((assignment, me))
    }

    /// This peer's service replicas, as reported to the cluster.
    async fn local_replicas(&self) -> Result<Vec<ReplicaInfo>, NodeError> {
        let me = self.overlay().peer_id().to_string();
        let name = self.config().name.clone();
        // CPU is sampled every 2 s at most (a fair window for the percentage), rounded to
        // 50 millicores so the record does not change on every round.
        let stale = self
            .services()
            .cpu
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
        if stale {
            let fresh: BTreeMap<String, u64> = self
                .container_stats()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|s| (s.id, ((s.cpu_percent * 10.0) / 50.0).round() as u64 * 50))
                .collect();
            *self.services().cpu.lock().unwrap_or_else(|e| e.into_inner()) = (Some(std::time::Instant::now()), fresh);
        }
        let cpu: BTreeMap<String, u64> = self.services().cpu.lock().unwrap_or_else(|e| e.into_inner()).1.clone();
        Ok(self
            .containers(true)
            .await?
            .into_iter()
            .filter_map(|c| {
                let service = c.spec.labels.get(LABEL_SERVICE)?.clone();
                let index = c.spec.labels.get(LABEL_INDEX)?.parse().ok()?;
                Some(ReplicaInfo {
                    service,
                    index,
                    peer: me.clone(),
                    peer_name: name.clone(),
                    container: c.id.clone(),
                    state: if self
                        .services()
                        .health
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&c.id)
                        .is_some_and(|h| h.unhealthy())
                    {
                        "unhealthy".to_string()
                    } else {
                        c.state.to_string()
                    },
                    started_unix: c.started_unix,
                    restarts: c.restarts,
                    ip: c.ip.clone(),
                    version: c.spec.labels.get(LABEL_VERSION).cloned().unwrap_or_default(),
                    cpu_milli: cpu.get(&c.id).copied().unwrap_or(0),
                })
            })
            .collect())
    }

    /// One round: place, compare with what runs here, start and stop; publish the result.
    async fn reconcile(&self) -> Result<(), NodeError> {
        // Nothing declared, ever: nothing to place or stop (keeps an idle agent idle).
        if self.services().map().is_empty() {
            return Ok(());
        }
        let (assignment, me) = self.assignment().await?;
        let map = self.services().map().clone();
        let local = self.containers(true).await?;
        // Forget start failures and autoscale marks of replicas that no longer exist.
        self.services()
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(svc, i), _| map.get(svc).is_some_and(|spec| *i < spec.replicas));
        self.services().scaled.lock().unwrap_or_else(|e| e.into_inner()).retain(|svc, _| map.get(svc).is_some());
        // Health checks start 10 s after a replica starts (time to come up).
        let now_unix = now_ms() / 1000;
        let checked: Vec<(String, ServiceSpec)> = local
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .filter(|c| c.started_unix.is_some_and(|t| now_unix >= t + 10))
            .filter_map(|c| Some((c.id.clone(), map.get(c.spec.labels.get(LABEL_SERVICE)?)?.clone())))
            .collect();
        let unhealthy = self.run_health_checks(&checked);
        let running: Vec<Running> = local
            .iter()
            .filter_map(|c| {
                Some(Running {
                    service: c.spec.labels.get(LABEL_SERVICE)?.clone(),
                    index: c.spec.labels.get(LABEL_INDEX)?.parse().ok()?,
                    version: c.spec.labels.get(LABEL_VERSION).cloned().unwrap_or_default(),
                    container_id: c.id.clone(),
                    healthy: matches!(
                        c.state,
                        ContainerState::Running | ContainerState::Restarting | ContainerState::Created
                    ) && !unhealthy.contains(&c.id),
                })
            })
            .collect();
        let versions: BTreeMap<String, String> =
            map.live().map(|(n, s, _)| (n.to_string(), shoal_scheduler::spec_version(s))).collect();
        // Cluster-wide gates, from every peer's reports: which outdated replicas may go now,
        // and whether a new version is failing (then roll back).
        let reports = self.replicas().await.unwrap_or_default();
        let mut allowed: BTreeMap<String, std::collections::BTreeSet<u32>> = BTreeMap::new();
        for (name, spec, _) in map.live() {
            let current = versions.get(name).cloned().unwrap_or_default();
            allowed.insert(name.to_string(), crate::rollout::replaceable(spec, &current, &reports));
            match self.maybe_roll_back(spec, &current, &me, &reports).await {
                Ok(true) => continue, // the spec just changed: decide the rest next round
                Ok(false) => {}
                Err(e) => warn!(service = %name, err = %e, "cannot roll back"),
            }
            if let Err(e) = self.maybe_autoscale(spec, &me, &reports).await {
                warn!(service = %name, err = %e, "cannot autoscale");
            }
        }
        let index_of: BTreeMap<&str, (&str, u32)> =
            running.iter().map(|r| (r.container_id.as_str(), (r.service.as_str(), r.index))).collect();
        let mut held: std::collections::BTreeSet<(String, u32)> = Default::default();
        let mut actions = shoal_scheduler::reconcile(&assignment, &map, &me, &running);
        actions.retain(|a| match a {
            Action::Stop { container_id, reason: shoal_scheduler::StopReason::Outdated { .. } } => {
                let Some(&(service, index)) = index_of.get(container_id.as_str()) else { return true };
                let ok = allowed.get(service).is_some_and(|s| s.contains(&index));
                if !ok {
                    held.insert((service.to_string(), index));
                }
                ok
            }
            Action::Start { service, index } => !held.contains(&(service.clone(), *index)),
            // A draining peer keeps its replicas until others run them (drain_services stops them).
            Action::Stop {
                reason: shoal_scheduler::StopReason::Moved { .. } | shoal_scheduler::StopReason::Unplaced { .. },
                ..
            } => !self.is_draining(),
            Action::Stop { .. } => true,
        });
        // A replica that exited for good (its supervisor gave up or a user stopped it) is
        // removed; the next round starts it again.
        for c in local.iter().filter(|c| c.state == ContainerState::Exited && c.spec.labels.contains_key(LABEL_SERVICE))
        {
            if !actions.iter().any(|a| matches!(a, Action::Stop { container_id, .. } if *container_id == c.id)) {
                actions
                    .push(Action::Stop { container_id: c.id.clone(), reason: shoal_scheduler::StopReason::Unhealthy });
            }
        }
        // Unhealthy replicas are replaced (the next round starts them again).
        for r in running.iter().filter(|r| unhealthy.contains(&r.container_id)) {
            actions.push(Action::Stop {
                container_id: r.container_id.clone(),
                reason: shoal_scheduler::StopReason::Unhealthy,
            });
        }
        for action in actions {
            match action {
                Action::Stop { container_id, reason } => {
                    info!(container = %container_id, reason = ?reason, "stopping a replica");
                    if let Err(e) = self.remove_container(&container_id, true).await {
                        warn!(err = %e, "cannot stop a replica");
                    }
                }
                Action::Start { service, index } => {
                    let Some(spec) = map.get(&service).cloned() else { continue };
                    let version = versions.get(&service).cloned().unwrap_or_default();
                    self.start_replica(spec, index, version);
                }
            }
        }
        // Publish what runs here (only when it changed: records are gossiped).
        let mine = self.local_replicas().await.unwrap_or_default();
        let value = encode_reports(&mine);
        let changed = {
            let mut last = self.published_replicas().lock().unwrap_or_else(|e| e.into_inner());
            let changed = last.as_ref() != Some(&value);
            *last = Some(value.clone());
            changed
        };
        if changed {
            let _ = self.overlay().set_ext("replicas", Some(value)).await;
        }
        Ok(())
    }

    fn start_replica(&self, spec: ServiceSpec, index: u32, version: String) {
        let key = (spec.name.clone(), index);
        if let Some((_, when, n, v)) = self.services().failures.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && *v == version
        {
            let wait = Duration::from_secs(1u64 << (*n).min(5)).min(Duration::from_secs(30));
            if when.elapsed() < wait {
                return;
            }
        }
        if !self.services().starting.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            let name = format!("{}.{index}", spec.name);
            // A round that looked before an earlier start finished may ask again: keep a replica
            // of this version that runs; an exited or older one may still hold the name.
            match node.container(&name).await {
                Ok(c) if c.state != ContainerState::Exited && c.spec.labels.get(LABEL_VERSION) == Some(&version) => {
                    node.services().starting.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                    return;
                }
                Ok(_) => {
                    let _ = node.remove_container(&name, true).await;
                }
                Err(_) => {}
            }
            let mut labels = BTreeMap::new();
            labels.insert(LABEL_SERVICE.to_string(), spec.name.clone());
            labels.insert(LABEL_INDEX.to_string(), index.to_string());
            labels.insert(LABEL_VERSION.to_string(), version.clone());
            let cspec = ContainerSpec {
                name: Some(name),
                image: spec.image.clone(),
                cmd: spec.cmd.clone(),
                env: spec.env.clone(),
                cpus_milli: spec.cpus_milli,
                memory_bytes: spec.memory_bytes,
                ports: spec.ports.clone(),
                restart: RestartPolicy::Always,
                labels,
                ..Default::default()
            };
            info!(service = %spec.name, index, "starting a replica");
            let result = node.run_container(cspec).await;
            let svc = node.services();
            match result {
                Ok(_) => {
                    svc.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                }
                Err(e) => {
                    warn!(service = %spec.name, index, err = %e, "cannot start a replica");
                    let mut f = svc.failures.lock().unwrap_or_else(|e| e.into_inner());
                    let n = f.get(&key).filter(|(_, _, _, v)| *v == version).map_or(0, |(_, _, n, _)| n + 1);
                    f.insert(key.clone(), (e.to_string(), std::time::Instant::now(), n, version));
                }
            }
            svc.starting.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            svc.kick.notify_one();
        });
    }

    /// Graceful leave: stop taking work, let the others start this peer's replicas, then stop
    /// them here (bounded by `limit`).
    pub async fn drain_services(&self, limit: Duration) {
        let mine = self.local_replicas().await.unwrap_or_default();
        if mine.is_empty() {
            return;
        }
        self.set_draining();
        let _ = self.overlay().set_ext("draining", Some(serde_json::Value::Bool(true))).await;
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let others = self.replicas().await.unwrap_or_default();
            let me = self.overlay().peer_id().to_string();
            let covered = mine.iter().all(|r| {
                others
                    .iter()
                    .any(|o| o.peer != me && o.service == r.service && o.index == r.index && o.state == "running")
            });
            if covered {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for r in mine {
            let _ = self.remove_container(&r.container, true).await;
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish()
}

/// Replica reports as they ride in the peer record: one compact array per replica
/// (`[service, index, state, version, restarts, cpu_milli, ip, container, started]`), the peer
/// implied by the record. Capped at 10 KiB (about 100 replicas); beyond that the rest are
/// left out (and logged), as the record itself is bounded.
fn encode_reports(list: &[ReplicaInfo]) -> serde_json::Value {
    let mut out = Vec::new();
    let mut size = 2;
    for r in list {
        let item = serde_json::json!([
            r.service,
            r.index,
            r.state,
            r.version,
            r.restarts,
            r.cpu_milli,
            r.ip,
            r.container,
            r.started_unix
        ]);
        size += item.to_string().len() + 1;
        if size > 10 << 10 {
            warn!(total = list.len(), published = out.len(), "too many replicas on this peer to report them all");
            break;
        }
        out.push(item);
    }
    serde_json::Value::Array(out)
}

/// The inverse of [`encode_reports`]; entries that do not parse are skipped.
fn decode_reports(v: &serde_json::Value, peer: &str, peer_name: &str) -> Vec<ReplicaInfo> {
    let Some(items) = v.as_array() else { return Vec::new() };
    items
        .iter()
        .filter_map(|i| {
            let a = i.as_array()?;
            Some(ReplicaInfo {
                service: a.first()?.as_str()?.to_string(),
                index: u32::try_from(a.get(1)?.as_u64()?).ok()?,
                peer: peer.to_string(),
                peer_name: peer_name.to_string(),
                state: a.get(2)?.as_str()?.to_string(),
                version: a.get(3)?.as_str()?.to_string(),
                restarts: u32::try_from(a.get(4)?.as_u64()?).ok()?,
                cpu_milli: a.get(5)?.as_u64()?,
                ip: a.get(6)?.as_str().map(str::to_string),
                container: a.get(7)?.as_str()?.to_string(),
                started_unix: a.get(8)?.as_u64(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_are_bounded() {
        let r = ReplicaInfo {
            service: "web".into(),
            index: 3,
            peer: "p".into(),
            peer_name: "n".into(),
            container: "c".repeat(64),
            state: "running".into(),
            started_unix: Some(7),
            restarts: 1,
            ip: Some("198.19.0.2".into()),
            version: "0123456789abcdef".into(),
            cpu_milli: 250,
        };
        let back = decode_reports(&encode_reports(std::slice::from_ref(&r)), "p", "n");
        assert_eq!(back, vec![r.clone()]);
        let many = vec![r; 1000];
        let v = encode_reports(&many);
        assert!(v.to_string().len() <= 10 << 10);
        assert!(!decode_reports(&v, "p", "n").is_empty());
        assert!(decode_reports(&serde_json::json!([["x"], 5, "junk"]), "p", "n").is_empty());
    }
}
