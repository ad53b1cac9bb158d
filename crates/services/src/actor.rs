//! The actor: its state, its loop, and the commands and task results it takes (rounds are in
//! [`crate::round`]).

use crate::effects::{Cluster, Containers};
use crate::error::{EffectError, ServiceError, check_spec};
use crate::store::{MAX_MAP, Store};
use crate::view::Snapshot;
use crate::{Config, view};
use shoal_scheduler::{
    Clock, DecodeError, Entry, Fault, Health, ReplicaKey, Revocation, ServiceMap, StartFailure, Trust,
};
use shoal_types::{ReplicaInfo, ServiceInfo, ServiceSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Shortest time between an event and the round it causes (events come in bursts).
const DEBOUNCE: Duration = Duration::from_millis(15);
/// Time between two anti-entropy exchanges.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Most desired-state pushes in flight.
const MAX_SYNCS: usize = 64;
/// How long shutdown waits for the actor's tasks after cancelling them.
const TASKS_GRACE: Duration = Duration::from_secs(5);

pub(crate) enum Command {
    Put { spec: Box<ServiceSpec>, create: bool, reply: oneshot::Sender<Result<(), ServiceError>> },
    Rebalance { name: String, reply: oneshot::Sender<Result<(), ServiceError>> },
    Remove { name: String, reply: oneshot::Sender<Result<(), ServiceError>> },
    Revoke { revocation: Revocation, reply: oneshot::Sender<Result<(), ServiceError>> },
    IsRevoked { key: [u8; 32], reply: oneshot::Sender<bool> },
    MayWrite { reply: oneshot::Sender<bool> },
    Spec { name: String, reply: oneshot::Sender<Option<ServiceSpec>> },
    List { reply: oneshot::Sender<Vec<ServiceInfo>> },
    Replicas { name: Option<String>, reply: oneshot::Sender<Vec<ReplicaInfo>> },
    Merge { bytes: Vec<u8>, reply: oneshot::Sender<Result<Option<Vec<u8>>, DecodeError>> },
    Drain { limit: Duration, reply: oneshot::Sender<()> },
    Shutdown { reply: oneshot::Sender<()> },
}

/// What a task reports when it ends.
pub(crate) enum Done {
    Started { key: ReplicaKey, version: String, result: Result<(), Fault>, replaced: Vec<String> },
    Removed { container: String, result: Result<(), EffectError> },
    Checked { container: String, ok: bool },
    Synced { peer: String, answer: Result<Option<Vec<u8>>, EffectError> },
    Cancelled,
}

/// A drain in progress.
pub(crate) struct Drain {
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<()>,
}

/// When the view is trustworthy enough to act on (see [`crate::round`]).
#[derive(Default)]
pub(crate) struct Settle {
    /// Acting.
    pub(crate) settled: bool,
    /// Members in the last complete view, and since when that count holds.
    pub(crate) count: usize,
    pub(crate) since: Option<Instant>,
}

pub(crate) struct Actor<C, K> {
    pub(crate) cfg: Config,
    pub(crate) me: String,
    pub(crate) containers: Arc<C>,
    pub(crate) cluster: Arc<K>,
    pub(crate) map: ServiceMap,
    pub(crate) clock: Clock,
    pub(crate) store: Store,
    /// Monotonic base of `now_ms`.
    pub(crate) epoch: Instant,
    pub(crate) started: Instant,
    pub(crate) health: BTreeMap<String, Health>,
    pub(crate) failures: BTreeMap<ReplicaKey, StartFailure>,
    pub(crate) starting: BTreeSet<ReplicaKey>,
    /// Replicas whose peer died or left lately: that peer's name, and when it went. A start of
    /// one of them here within [`crate::round::FAILOVER_WINDOW`] is a failover.
    pub(crate) departed: BTreeMap<ReplicaKey, (String, tokio::time::Instant)>,
    pub(crate) stopping: BTreeSet<String>,
    pub(crate) scaled: BTreeMap<String, u64>,
    pub(crate) cpu: BTreeMap<String, u64>,
    pub(crate) cpu_at: Option<Instant>,
    pub(crate) published: Option<serde_json::Value>,
    pub(crate) snapshot: Snapshot,
    /// Other members at the last round (pushes and anti-entropy go to them).
    pub(crate) members: Vec<String>,
    /// Live peers that may write desired state at the last round (`None`: every peer may).
    pub(crate) writers: Option<BTreeSet<String>>,
    pub(crate) settle: Settle,
    pub(crate) draining: bool,
    pub(crate) drain: Option<Drain>,
    pub(crate) tasks: JoinSet<Done>,
    pub(crate) syncs: usize,
    /// Cancels every task the actor started.
    pub(crate) cancel: CancellationToken,
    /// The next round, when one is due.
    pub(crate) next_round: Option<Instant>,
    pub(crate) last_sync: Instant,
    pub(crate) rng: u64,
    /// Every service's address, ports and running replicas, for the network.
    pub(crate) endpoints: tokio::sync::watch::Sender<std::sync::Arc<Vec<crate::Endpoints>>>,
}

impl<C: Containers, K: Cluster> Actor<C, K> {
    pub(crate) fn new(
        cfg: Config,
        containers: C,
        cluster: K,
        endpoints: tokio::sync::watch::Sender<std::sync::Arc<Vec<crate::Endpoints>>>,
    ) -> Actor<C, K> {
        let store = Store::new(&cfg.dir);
        let me = cluster.me();
        let now = Instant::now();
        let (saved, unsealed_format) = store.load();
        let map = trusted_from_disk(saved, unsealed_format, &cfg.trust);
        Actor {
            map,
            clock: Clock::new(me.clone()),
            me,
            store,
            cfg,
            containers: Arc::new(containers),
            cluster: Arc::new(cluster),
            epoch: now,
            started: now,
            health: BTreeMap::new(),
            failures: BTreeMap::new(),
            starting: BTreeSet::new(),
            departed: BTreeMap::new(),
            stopping: BTreeSet::new(),
            scaled: BTreeMap::new(),
            cpu: BTreeMap::new(),
            cpu_at: None,
            published: None,
            snapshot: Snapshot::default(),
            members: Vec::new(),
            writers: None,
            settle: Settle::default(),
            draining: false,
            drain: None,
            tasks: JoinSet::new(),
            syncs: 0,
            endpoints,
            cancel: CancellationToken::new(),
            next_round: Some(Instant::now()),
            last_sync: now,
            rng: seed(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Asks for a round soon (after a short debounce).
    pub(crate) fn wake(&mut self) {
        let at = Instant::now() + DEBOUNCE;
        self.next_round = Some(self.next_round.map_or(at, |t| t.min(at)));
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut changes = self.cluster.changes();
        let mut exits = self.containers.exits();
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown_reply = loop {
            let due = self.next_round;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(cmd) => self.command(cmd).await,
                    None => break None,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match done {
                        Ok(done) => self.done(done).await,
                        Err(e) => warn!(err = %e, "a services task failed"),
                    }
                }
                Ok(()) = changes.changed() => self.wake(),
                Some(()) = exited(&mut exits) => self.wake(),
                _ = tick.tick() => {
                    self.next_round = Some(Instant::now());
                    self.anti_entropy().await;
                }
                () = sleep_until(due) => {
                    self.next_round = None;
                    self.round().await;
                }
            }
        };
        // In order: no more commands, cancel the tasks, wait for them (bounded).
        drop(rx);
        self.cancel.cancel();
        let _ = tokio::time::timeout(TASKS_GRACE, async { while self.tasks.join_next().await.is_some() {} }).await;
        self.tasks.abort_all();
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Put { spec, create, reply } => {
                let _ = reply.send(self.put(*spec, create).await);
            }
            Command::Rebalance { name, reply } => {
                let result = match self.map.get(&name).cloned() {
                    _ if !self.may_write() => Err(ServiceError::NotOperator),
                    None => Err(ServiceError::NotFound(name)),
                    Some(mut spec) => {
                        spec.rebalance = Some(self.now_ms().max(1));
                        info!(service = %spec.name, "rebalance requested");
                        self.write(spec).await
                    }
                };
                let _ = reply.send(result);
            }
            Command::Remove { name, reply } => {
                let result = if !self.may_write() {
                    Err(ServiceError::NotOperator)
                } else if self.map.get(&name).is_none() {
                    Err(ServiceError::NotFound(name))
                } else {
                    let version = self.clock.tick(wall_ms());
                    let seal = self.cfg.trust.seal(&name, &version, None);
                    self.map.insert_entry(&name, Entry { version, spec: None, seal });
                    info!(ev = "service.removed", service = %name, "service removed");
                    self.changed().await
                };
                let _ = reply.send(result);
            }
            Command::Revoke { revocation, reply } => {
                let result = match &self.cfg.trust {
                    _ if !self.may_write() => Err(ServiceError::NotOperator),
                    _ if self.cfg.trust.writer_key() == Some(revocation.writer) => Err(ServiceError::BadRevocation),
                    Trust::Keyed { authority, .. } if authority.check_revocation(&revocation) => {
                        // Keep what the retired writer wrote as this peer sees it now: the same
                        // entries, at the same versions, under this peer's seal.
                        let keep: Vec<(String, Entry)> = self
                            .map
                            .entries()
                            .filter(|(_, e)| e.seal.as_ref().is_some_and(|s| s.writer == revocation.writer))
                            .map(|(n, e)| (n.to_string(), e.clone()))
                            .collect();
                        self.map.revoke(revocation);
                        for (name, mut e) in keep {
                            e.seal = self.cfg.trust.seal(&name, &e.version, e.spec.as_ref());
                            self.map.insert_entry(&name, e);
                        }
                        info!("operator grant revoked; its entries re-sealed by this peer");
                        self.changed().await
                    }
                    _ => Err(ServiceError::BadRevocation),
                };
                let _ = reply.send(result);
            }
            Command::Spec { name, reply } => {
                let _ = reply.send(self.map.get(&name).cloned());
            }
            Command::IsRevoked { key, reply } => {
                let _ = reply.send(self.map.is_writer_revoked(&key));
            }
            Command::MayWrite { reply } => {
                let _ = reply.send(self.may_write());
            }
            Command::List { reply } => {
                let _ = reply.send(view::services(&self.map, &self.snapshot));
            }
            Command::Replicas { name, reply } => {
                let _ = reply.send(view::replicas(&self.map, &self.snapshot, name.as_deref()));
            }
            Command::Merge { bytes, reply } => {
                let answer = match ServiceMap::decode(&bytes, MAX_MAP) {
                    Ok(theirs) => {
                        // Compared as merged: entries this peer refuses do not make it send its
                        // map back on every exchange.
                        let theirs = self.merge(&theirs).await;
                        Ok((theirs != self.map.digest()).then(|| self.map.encode()))
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
            Command::Drain { limit, reply } => {
                info!(limit = ?limit, "draining: handing replicas to other peers");
                self.draining = true;
                self.drain = Some(Drain { deadline: Instant::now() + limit, reply });
                self.wake();
            }
            Command::Shutdown { .. } => {}
        }
    }

    async fn put(&mut self, spec: ServiceSpec, create: bool) -> Result<(), ServiceError> {
        if !self.may_write() {
            return Err(ServiceError::NotOperator);
        }
        check_spec(&spec)?;
        let old = self.map.get(&spec.name).cloned();
        match (&old, create) {
            (Some(_), true) => return Err(ServiceError::Exists(spec.name)),
            (None, false) => return Err(ServiceError::NotFound(spec.name)),
            _ => {}
        }
        for port in &spec.ports {
            let taken = self.map.live().find(|(name, other, _)| {
                *name != spec.name
                    && other.ports.iter().any(|q| (q.protocol, q.host_port) == (port.protocol, port.host_port))
            });
            if let Some((name, _, _)) = taken {
                return Err(ServiceError::PortTaken {
                    port: format!("{}/{}", port.host_port, port.protocol),
                    by: name.to_string(),
                });
            }
        }
        let spec = with_previous(old.as_ref(), spec);
        let (name, mode, replicas, image) =
            (spec.name.clone(), spec.mode.to_string(), spec.replicas, spec.image.clone());
        self.write(spec).await?;
        if create {
            info!(ev = "service.created", service = %name, mode, replicas, image, "service declared");
        } else {
            info!(ev = "service.updated", service = %name, mode, replicas, image, "service changed");
        }
        Ok(())
    }

    /// Whether this peer may write desired state: it holds the operator key (or the cluster is
    /// open) and its grant has not been revoked.
    pub(crate) fn may_write(&self) -> bool {
        self.cfg.trust.can_write() && self.cfg.trust.writer_key().is_none_or(|k| !self.map.is_writer_revoked(&k))
    }

    /// Writes `spec` as the service's newest version, saves and pushes it.
    pub(crate) async fn write(&mut self, spec: ServiceSpec) -> Result<(), ServiceError> {
        if !self.may_write() {
            return Err(ServiceError::NotOperator);
        }
        let version = self.clock.tick(wall_ms());
        let name = spec.name.clone();
        let seal = self.cfg.trust.seal(&name, &version, Some(&spec));
        self.map.insert_entry(&name, Entry { version, spec: Some(spec), seal });
        self.changed().await
    }

    /// After a local change: save (before anyone hears of it), push, plan.
    async fn changed(&mut self) -> Result<(), ServiceError> {
        let saved = self.store.save(self.map.encode()).await;
        if let Err(e) = &saved {
            warn!(err = %e, "cannot save the services");
        }
        self.refresh_members().await;
        self.push_all();
        self.wake();
        saved
    }

    /// Learns the current members (rounds do it too, but an idle agent skips its rounds).
    async fn refresh_members(&mut self) {
        match self.cluster.view().await {
            Ok(view) => {
                self.members = view.members.into_iter().map(|m| m.view.id).filter(|id| *id != self.me).collect();
            }
            Err(e) => debug!(err = %e, "cannot read the cluster view"),
        }
    }

    /// Merges what is admissible of `theirs`; returns the digest of that admissible part.
    async fn merge(&mut self, theirs: &ServiceMap) -> [u8; 32] {
        let theirs = &admissible(theirs, wall_ms(), &self.cfg.trust);
        if let Some(v) = theirs.max_version() {
            self.clock.observe(v);
        }
        if self.map.merge(theirs) {
            if let Err(e) = self.store.save(self.map.encode()).await {
                warn!(err = %e, "cannot save the services");
            }
            self.wake();
        }
        theirs.digest()
    }

    /// Sends the map to every member we know of (bounded; anti-entropy covers the rest).
    fn push_all(&mut self) {
        let members = self.members.clone();
        for peer in members {
            self.sync_with(peer);
        }
    }

    /// Every [`SYNC_EVERY`], a push-pull with one random member.
    async fn anti_entropy(&mut self) {
        if self.last_sync.elapsed() < SYNC_EVERY {
            return;
        }
        self.last_sync = Instant::now();
        let collected = collect_tombstones(&mut self.map, wall_ms());
        if collected > 0 {
            info!(collected, "collected tombstones of services removed over a week ago");
            if let Err(e) = self.store.save(self.map.encode()).await {
                warn!(err = %e, "cannot save the services");
            }
        }
        self.refresh_members().await;
        if self.members.is_empty() {
            return;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let peer = self.members[(self.rng % self.members.len() as u64) as usize].clone();
        self.sync_with(peer);
    }

    fn sync_with(&mut self, peer: String) {
        if self.syncs >= MAX_SYNCS {
            return;
        }
        self.syncs += 1;
        let (cluster, map, cancel) = (self.cluster.clone(), self.map.encode(), self.cancel.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                answer = cluster.sync(&peer, map) => Done::Synced { peer, answer },
                () = cancel.cancelled() => Done::Cancelled,
            }
        });
    }

    async fn done(&mut self, done: Done) {
        match done {
            Done::Started { key, version, result, replaced } => {
                self.starting.remove(&key);
                for id in replaced {
                    self.stopping.remove(&id);
                }
                match result {
                    Ok(()) => {
                        match self.departed.remove(&key) {
                            Some((from, _)) => {
                                shoal_metrics::get().replica_failovers.inc();
                                info!(ev = "replica.started", service = %key.0, slot = %key.1, on = %self.cfg.name, took_over_from = %from, "replica started in place of a peer that is gone");
                            }
                            None => {
                                info!(ev = "replica.started", service = %key.0, slot = %key.1, on = %self.cfg.name, "replica started")
                            }
                        }
                        self.failures.remove(&key);
                    }
                    Err(fault) => {
                        warn!(ev = "replica.failed", service = %key.0, slot = %key.1, on = %self.cfg.name, err = %fault.message, "cannot start a replica");
                        let count = self.failures.get(&key).filter(|f| f.version == version).map_or(1, |f| f.count + 1);
                        let at_ms = self.now_ms();
                        self.failures.insert(key, StartFailure { version, count, at_ms, fault });
                    }
                }
            }
            Done::Removed { container, result } => {
                self.stopping.remove(&container);
                if let Err(e) = result {
                    warn!(%container, err = %e, "cannot stop a replica");
                }
            }
            Done::Checked { container, ok } => {
                if let Some(h) = self.health.get_mut(&container) {
                    h.running = false;
                    h.passed |= ok;
                    h.fails = if ok { 0 } else { h.fails + 1 };
                    if h.fails == shoal_scheduler::plan::UNHEALTHY_AFTER {
                        warn!(ev = "replica.failed", %container, on = %self.cfg.name, reason = "health check", "replica failed its health check {} times in a row", h.fails);
                    }
                }
            }
            Done::Synced { peer, answer } => {
                self.syncs = self.syncs.saturating_sub(1);
                match answer {
                    Ok(Some(bytes)) => match ServiceMap::decode(&bytes, MAX_MAP) {
                        Ok(theirs) => {
                            self.merge(&theirs).await;
                        }
                        Err(e) => debug!(%peer, err = %e, "a peer answered with a service map that does not decode"),
                    },
                    Ok(None) => {}
                    Err(e) => debug!(%peer, err = %e, "desired-state exchange failed"),
                }
                return;
            }
            Done::Cancelled => return,
        }
        self.wake();
    }
}

/// For `update`: remembers the image being replaced so a failing update can roll back (and
/// `shoal service rollback` can, later), and keeps a rebalance in progress.
fn with_previous(old: Option<&ServiceSpec>, mut new: ServiceSpec) -> ServiceSpec {
    if let Some(old) = old {
        if old.image != new.image {
            info!(ev = "rollout.started", service = %new.name, from = %old.image, to = %new.image, "rolling update");
            new.previous_image = Some(old.image.clone());
            new.rollback_image = Some(old.image.clone());
        } else {
            new.previous_image = old.previous_image.clone();
            new.rollback_image = old.rollback_image.clone();
        }
        new.rebalance = new.rebalance.or(old.rebalance);
        // The address is the service's for life: a changed spec keeps it.
        new.vip = old.vip.or(new.vip);
    }
    new
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Resolves when a container exits (never when the runtime cannot tell).
async fn exited(exits: &mut Option<watch::Receiver<u64>>) -> Option<()> {
    match exits {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// How far ahead of this peer's clock a peer's stamp may be.
pub(crate) const MAX_CLOCK_DRIFT: Duration = Duration::from_secs(60);

/// How long a removed service's tombstone is kept. Every live peer has it within seconds
/// (anti-entropy every second); keeping it a week covers a peer that was switched off or
/// partitioned for that long. The trade-off: a peer away for longer that comes back holding
/// the removed service's older entry brings the service back (`shoal service rm` it again).
/// Without collection the map only grows, and replication stops once it passes 4 MiB.
pub(crate) const TOMBSTONE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Drops tombstones older than [`TOMBSTONE_RETENTION`]; returns how many.
pub(crate) fn collect_tombstones(map: &mut ServiceMap, now_ms: u64) -> usize {
    map.gc_tombstones(now_ms.saturating_sub(TOMBSTONE_RETENTION.as_millis() as u64))
}

/// What of a peer's map may be merged: in a keyed cluster, entries sealed by a writer the
/// cluster's authority granted (and revocations the authority signed); entries whose spec
/// passes the same checks as the API's; and whose stamp is at most [`MAX_CLOCK_DRIFT`] ahead of
/// `now_ms`. The rest is dropped: a worker or a forger cannot write, a spec with a bad name or
/// a huge replica count cannot reach the planner, and an entry (or a tombstone) stamped far in
/// the future cannot take a name for good or drag this peer's clock there.
pub(crate) fn admissible(theirs: &ServiceMap, now_ms: u64, trust: &Trust) -> ServiceMap {
    let max_ahead = MAX_CLOCK_DRIFT.as_millis() as u64;
    let mut kept = BTreeMap::new();
    for (name, entry) in theirs.entries() {
        let ahead = entry.version.millis.saturating_sub(now_ms);
        let invalid = entry.spec.as_ref().map(check_spec).transpose().err();
        let untrusted = match trust {
            Trust::Keyed { authority, .. } => authority.check_entry(name, entry).err(),
            Trust::Open => None,
        };
        match (ahead > max_ahead, invalid, untrusted) {
            (_, _, Some(e)) => {
                warn!(service = name, writer = %entry.version.node, err = %e, "a peer's entry is not an operator's; ignored")
            }
            (true, _, _) => {
                warn!(service = name, writer = %entry.version.node, ahead_ms = ahead, "a peer's entry is stamped too far ahead; ignored")
            }
            (_, Some(e), _) => {
                warn!(service = name, writer = %entry.version.node, err = %e, "a peer's entry is not a valid spec; ignored")
            }
            (false, None, None) => {
                kept.insert(name.to_string(), entry.clone());
            }
        }
    }
    let mut out = ServiceMap::try_from(kept).unwrap_or_default();
    if let Trust::Keyed { authority, .. } = trust {
        for r in theirs.revocations() {
            if authority.check_revocation(r) {
                out.revoke(r.clone());
            } else {
                warn!("a peer's revocation is not signed by the operator key; ignored");
            }
        }
    }
    out
}

/// The map saved on disk, checked as a peer's would be (seals and revocations, not the clock):
/// a map saved under another key (a cluster that was given a new key after a leak) or while
/// the cluster was open keeps nothing it cannot prove. Only a map saved before entries were
/// sealed (`unsealed_format`) is adopted: an operator peer seals its entries as its own, since
/// it ran them.
fn trusted_from_disk(saved: ServiceMap, unsealed_format: bool, trust: &Trust) -> ServiceMap {
    let mut saved = saved;
    if unsealed_format && matches!(trust, Trust::Keyed { writer: Some(_), .. }) {
        let n = saved.seal_unsealed(|name, e| trust.seal(name, &e.version, e.spec.as_ref()));
        if n > 0 {
            info!(entries = n, "sealed the saved services from before entries were sealed");
        }
    }
    let Trust::Keyed { authority, .. } = trust else { return saved };
    let mut out = ServiceMap::new();
    for r in saved.revocations() {
        if authority.check_revocation(r) {
            out.revoke(r.clone());
        }
    }
    let mut dropped = 0;
    for (name, e) in saved.entries() {
        if authority.check_entry(name, e).is_ok() && !out.is_revoked(e) {
            out.insert_entry(name, e.clone());
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        warn!(dropped, "saved services that no operator of this cluster sealed were dropped");
    }
    out
}

pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(wall_ms());
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_scheduler::Hlc;

    #[test]
    fn a_saved_map_keeps_only_what_this_clusters_operators_sealed() {
        use shoal_scheduler::{Authority, Writer};
        let op = [1u8; 32];
        let trust = Trust::Keyed { authority: Authority::from_secret(&op), writer: Some(Writer::new(&[2; 32], &op)) };
        let spec =
            |name: &str| ServiceSpec { name: name.into(), image: "app".into(), replicas: 1, ..Default::default() };
        let mine = Writer::new(&[2; 32], &op);
        let stranger = Writer::new(&[3; 32], &[9; 32]);
        let v = Hlc::new(5, 0, "a");
        let mut saved = ServiceMap::new();
        saved.insert_entry(
            "ok",
            Entry { seal: Some(mine.seal("ok", &v, Some(&spec("ok")))), version: v.clone(), spec: Some(spec("ok")) },
        );
        saved.insert_entry(
            "old-key",
            Entry {
                seal: Some(stranger.seal("old-key", &v, Some(&spec("old-key")))),
                version: v.clone(),
                spec: Some(spec("old-key")),
            },
        );
        saved.put(spec("open"), v.clone());
        let kept = trusted_from_disk(saved.clone(), false, &trust);
        assert_eq!(
            kept.live().map(|(n, _, _)| n).collect::<Vec<_>>(),
            ["ok"],
            "another key's and an open cluster's entries go"
        );
        let adopted = trusted_from_disk(saved, true, &trust);
        assert_eq!(
            adopted.live().map(|(n, _, _)| n).collect::<Vec<_>>(),
            ["ok", "open"],
            "a map from before seals is adopted"
        );
    }

    #[test]
    fn tombstones_go_after_a_week_and_live_services_stay() {
        let now = 1_800_000_000_000u64;
        let week = TOMBSTONE_RETENTION.as_millis() as u64;
        let mut m = ServiceMap::new();
        let spec = ServiceSpec { name: "old".into(), image: "app".into(), replicas: 1, ..Default::default() };
        m.put(spec.clone(), Hlc::new(now - 2 * week, 0, "a"));
        m.remove("gone", Hlc::new(now - week - 1, 0, "a"));
        m.remove("recent", Hlc::new(now - week + 1_000, 0, "a"));
        assert_eq!(collect_tombstones(&mut m, now), 1);
        assert!(m.get("old").is_some(), "a live service is never collected, however old");
        assert!(m.entry("gone").is_none() && m.entry("recent").is_some());
    }

    /// A peer's map is merged only as far as it is valid and stamped near now: a huge replica
    /// count, a bad name, an entry and a tombstone from the far future are dropped.
    #[test]
    fn only_valid_entries_stamped_near_now_are_merged() {
        let now = 1_800_000_000_000;
        let spec = |name: &str, replicas| ServiceSpec {
            name: name.into(),
            image: "app".into(),
            replicas,
            ..Default::default()
        };
        let mut theirs = ServiceMap::new();
        theirs.put(spec("web", 3), Hlc::new(now - 5_000, 0, "a"));
        theirs.put(spec("soon", 1), Hlc::new(now + 30_000, 0, "a"));
        theirs.put(spec("huge", 5_000_000), Hlc::new(now, 0, "evil"));
        theirs.put(spec("bad.name", 1), Hlc::new(now, 0, "evil"));
        theirs.put(spec("later", 1), Hlc::new(now + 3_600_000, 0, "evil"));
        theirs.remove("forever", Hlc::new(u64::MAX, u32::MAX, "evil"));
        let kept = admissible(&theirs, now, &Trust::Open);
        let names: Vec<&str> = kept.entries().map(|(n, _)| n).collect();
        assert_eq!(names, ["soon", "web"]);
        assert!(kept.max_version().is_some_and(|v| v.millis == now + 30_000), "the clock sees only kept stamps");
    }
}
