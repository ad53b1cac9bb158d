//! One round of the actor: gather the view and the containers, plan, act, publish.
//!
//! **When it acts.** A round always plans and publishes this peer's reports, but it carries out
//! stops, starts and rewrites only when the view is complete (every live member's record has
//! arrived: without it, that member's replicas look unheld and would be started twice) and
//! settled: after the agent starts, once the set of members has been the same for
//! [`SETTLE_FOR`] with at least one other member (the rest of the cluster is still being
//! learnt), or after [`SETTLE_MAX`] ([`SETTLE_ALONE`] while it hears from no other peer but
//! remembers some: a restarted peer acting alone would start every replica a second time),
//! or at once when this peer has never met another and has nothing declared.

use crate::actor::{Actor, Done, wall_ms};
use crate::effects::{Cluster, ClusterView, Containers};
use crate::view::Snapshot;
use crate::{LABEL_SERVICE, LABEL_SLOT, LABEL_VERSION, reports};
use shoal_scheduler::plan::{self, Check, Input, LocalReplica, Start, Stop};
use shoal_scheduler::{PeerView, Report, WriteReason};
use shoal_types::{ContainerInfo, ContainerSpec, RestartPolicy, ServiceSpec, Slot};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// A (re)started peer acts once its membership has been stable this long ...
pub(crate) const SETTLE_FOR: Duration = Duration::from_secs(1);
/// ... or after this long in any case ...
pub(crate) const SETTLE_MAX: Duration = Duration::from_secs(5);
/// ... or this long when it remembers peers but has heard from none of them yet (a slow
/// rejoin must not make it run the whole cluster's replicas alone).
pub(crate) const SETTLE_ALONE: Duration = Duration::from_secs(15);
/// How long after its peer went a replica started here counts as a failover.
pub(crate) const FAILOVER_WINDOW: Duration = Duration::from_secs(60);
/// A health check that takes longer fails.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// CPU use is sampled over this window (a fair window for the percentage).
const CPU_EVERY: Duration = Duration::from_secs(2);

/// A container's replica identity, from its labels.
pub(crate) fn replica_of(c: &ContainerInfo, cpu: &BTreeMap<String, u64>) -> Option<LocalReplica> {
    let service = c.spec.labels.get(LABEL_SERVICE)?.clone();
    let label = c.spec.labels.get(LABEL_SLOT)?;
    let slot = label.parse::<u32>().map_or_else(|_| Slot::Peer(label.clone()), Slot::Index);
    Some(LocalReplica {
        container: c.id.clone(),
        service,
        slot,
        version: c.spec.labels.get(LABEL_VERSION).cloned().unwrap_or_default(),
        state: c.state,
        restarts: c.restarts,
        started_unix: c.started_unix,
        ip: c.ip.clone(),
        cpu_milli: cpu.get(&c.id).copied().unwrap_or(0),
    })
}

/// The container that runs `slot` of `spec` at `version`.
pub(crate) fn container_spec(spec: &ServiceSpec, slot: &Slot, version: &str) -> ContainerSpec {
    let labels = [
        (LABEL_SERVICE.to_string(), spec.name.clone()),
        (LABEL_SLOT.to_string(), slot.to_string()),
        (LABEL_VERSION.to_string(), version.to_string()),
    ]
    .into();
    ContainerSpec {
        name: Some(format!("{}.{}", spec.name, slot.short())),
        image: spec.image.clone(),
        cmd: spec.cmd.clone(),
        env: spec.env.clone(),
        cpus_milli: spec.cpus_milli,
        memory_bytes: spec.memory_bytes,
        // Published ports are the routing mesh's (every peer, kernel NAT), not the replica's.
        ports: Vec::new(),
        restart: RestartPolicy::Always,
        labels,
        ..Default::default()
    }
}

impl<C: Containers, K: Cluster> Actor<C, K> {
    pub(crate) async fn round(&mut self) {
        let containers = match self.containers.list().await {
            Ok(c) => c,
            Err(e) => return debug!(err = %e, "cannot list containers; next round"),
        };
        // Nothing declared, nothing running, nothing (left) to publish: keep an idle agent idle.
        let nothing_published = self.published.as_ref().is_none_or(|v| *v == serde_json::json!([[], false]));
        if self.map.is_empty() && containers.is_empty() && nothing_published && self.drain.is_none() {
            self.publish_endpoints();
            return;
        }
        let view = match self.cluster.view().await {
            Ok(v) => v,
            Err(e) => return debug!(err = %e, "cannot read the cluster view; next round"),
        };
        if self.cpu_at.is_none_or(|t| t.elapsed() >= CPU_EVERY) {
            self.cpu_at = Some(Instant::now());
            // Rounded to 50 millicores so the record does not change on every sample.
            self.cpu = self.containers.cpu().await.into_iter().map(|(id, m)| (id, (m + 25) / 50 * 50)).collect();
        }
        let local: Vec<LocalReplica> = containers.iter().filter_map(|c| replica_of(c, &self.cpu)).collect();
        let peers: Vec<PeerView> = view
            .members
            .iter()
            .map(|m| PeerView {
                draining: if m.view.id == self.me { self.draining } else { m.view.draining },
                ..m.view.clone()
            })
            .collect();
        let theirs: Vec<Report> = view
            .members
            .iter()
            .filter(|m| m.view.id != self.me)
            .flat_map(|m| m.reports.as_ref().map(|v| reports::decode(v, &m.view.id)).unwrap_or_default())
            .collect();
        self.members = view.members.iter().map(|m| m.view.id.clone()).filter(|id| *id != self.me).collect();
        self.writers = match &self.cfg.trust {
            shoal_scheduler::Trust::Open => None,
            _ => Some(
                view.members
                    .iter()
                    .filter(|m| {
                        if m.view.id == self.me {
                            self.may_write()
                        } else {
                            m.operator.is_some_and(|k| !self.map.is_writer_revoked(&k))
                        }
                    })
                    .map(|m| m.view.id.clone())
                    .collect(),
            ),
        };
        self.forget(&local, &theirs);
        self.note_departed(&view);
        let acting = self.settled(&view);
        let refs: Vec<&Report> = theirs.iter().collect();
        let plan = plan::plan(&self.input(&peers, &refs, &local));
        if acting {
            self.act(&plan.stops, &plan.starts, &plan.checks);
            for w in plan.writes {
                let name = w.spec.name.clone();
                match &w.why {
                    WriteReason::RollBack { from, to } => {
                        warn!(ev = "rollout.rolled_back", service = %name, %from, %to, reason = "failing", "new replicas are failing: rolling back")
                    }
                    WriteReason::Settled => info!(ev = "rollout.done", service = %name, "update or rebalance complete"),
                    WriteReason::Autoscale { from, to } => {
                        info!(ev = "service.scaled", service = %name, from, to, "autoscaling");
                        self.scaled.insert(name.clone(), self.now_ms());
                    }
                }
                if let Err(e) = self.write(w.spec).await {
                    warn!(service = %name, err = %e, "cannot write the service");
                }
            }
        }
        // This peer's reports after what it just did (starts in progress included).
        let mine = plan::own_reports_for(&self.input(&peers, &[], &local));
        self.publish(&mine).await;
        let mut all = theirs;
        all.extend(mine);
        self.snapshot = Snapshot {
            assignment: plan.assignment,
            names: view.members.iter().map(|m| (m.view.id.clone(), m.name.clone())).collect(),
            reports: all,
        };
        self.publish_endpoints();
        self.finish_drain(&local).await;
    }

    /// Remembers the replicas that peers gone since the last round ran (see `departed`), and
    /// forgets those older than [`FAILOVER_WINDOW`].
    fn note_departed(&mut self, view: &ClusterView) {
        let now = tokio::time::Instant::now();
        self.departed.retain(|_, (_, at)| now.duration_since(*at) < FAILOVER_WINDOW);
        let live: BTreeSet<&str> = view.members.iter().map(|m| m.view.id.as_str()).collect();
        for r in &self.snapshot.reports {
            if r.peer != self.me && !live.contains(r.peer.as_str()) {
                let name = self.snapshot.names.get(&r.peer).cloned().unwrap_or_else(|| r.peer.clone());
                self.departed.entry((r.service.clone(), r.slot.clone())).or_insert((name, now));
            }
        }
    }

    /// Tells the network each service's running replicas (only when something changed).
    pub(crate) fn publish_endpoints(&self) {
        let mut by_service: BTreeMap<&str, Vec<std::net::Ipv4Addr>> = BTreeMap::new();
        for r in &self.snapshot.reports {
            if r.state == shoal_scheduler::ReplicaState::Running
                && let Some(ip) = r.ip.as_deref().and_then(|ip| ip.parse().ok())
            {
                by_service.entry(r.service.as_str()).or_default().push(ip);
            }
        }
        let all: Vec<crate::Endpoints> = self
            .map
            .live()
            .map(|(name, spec, _)| {
                let mut backends = by_service.remove(name).unwrap_or_default();
                backends.sort();
                backends.dedup();
                crate::Endpoints { name: name.to_string(), vip: spec.vip, ports: spec.ports.clone(), backends }
            })
            .collect();
        self.endpoints.send_if_modified(|old| {
            if **old == all {
                return false;
            }
            *old = std::sync::Arc::new(all);
            true
        });
    }

    /// What the planner knows now, from this actor's state and a round's view.
    fn input<'a>(&'a self, peers: &'a [PeerView], reports: &'a [&'a Report], local: &'a [LocalReplica]) -> Input<'a> {
        Input {
            me: &self.me,
            now_ms: self.now_ms(),
            now_unix: wall_ms() / 1000,
            services: &self.map,
            peers,
            reports,
            local,
            health: &self.health,
            failures: &self.failures,
            starting: &self.starting,
            scaled: &self.scaled,
            writers: self.writers.as_ref(),
        }
    }

    /// Whether to act now (see the module docs).
    fn settled(&mut self, view: &ClusterView) -> bool {
        let complete = view.members.iter().all(|m| m.has_record);
        if self.settle.settled {
            return complete;
        }
        let now = Instant::now();
        if complete && view.members.len() != self.settle.count {
            self.settle.count = view.members.len();
            self.settle.since = Some(now);
        }
        let stable = self.settle.since.is_some_and(|t| now - t >= SETTLE_FOR);
        // Alone and with nothing declared: a new cluster, nothing to wait for. A peer that
        // restarts with services on disk but remembers no other peer (the first peer of a
        // cluster, say) waits for the others to find it, up to SETTLE_MAX.
        let lonely = view.known == 0 && self.map.is_empty();
        let max = if view.members.len() <= 1 && view.known > 0 { SETTLE_ALONE } else { SETTLE_MAX };
        if lonely || (complete && stable && view.members.len() > 1) || self.started.elapsed() >= max {
            info!(members = view.members.len(), "services: the cluster view has settled; acting on it");
            self.settle.settled = true;
        }
        self.settle.settled && complete
    }

    /// Forgets health, failures and autoscale marks of what no longer exists, and the failed
    /// starts of replicas that another peer runs now (their reason no longer applies).
    fn forget(&mut self, local: &[LocalReplica], theirs: &[Report]) {
        let live: BTreeSet<&str> = local.iter().map(|c| c.container.as_str()).collect();
        self.health.retain(|c, _| live.contains(c.as_str()));
        let map = &self.map;
        let served =
            |s: &str, slot: &Slot, v: &str| theirs.iter().any(|r| r.service == s && &r.slot == slot && r.serves(v));
        self.failures.retain(|(s, slot), f| {
            map.get(s).is_some_and(|spec| plan::spec_version(spec) == f.version) && !served(s, slot, &f.version)
        });
        self.scaled.retain(|s, _| map.get(s).is_some());
    }

    fn act(&mut self, stops: &[Stop], starts: &[Start], checks: &[Check]) {
        // The starts that go ahead (not already in progress, service still there).
        let launch: Vec<&Start> = starts
            .iter()
            .filter(|s| {
                self.map.get(&s.service).is_some() && !self.starting.contains(&(s.service.clone(), s.slot.clone()))
            })
            .collect();
        // A stop and a start of the same replica are one task: the new container takes the
        // old one's name.
        let mut replaced: BTreeMap<(&str, &Slot), Vec<String>> = BTreeMap::new();
        for stop in stops {
            if self.stopping.contains(&stop.container) {
                continue;
            }
            info!(ev = "replica.stopped", service = %stop.service, slot = %stop.slot, on = %self.cfg.name, container = %stop.container, reason = %stop.reason, "stopping a replica");
            self.stopping.insert(stop.container.clone());
            if launch.iter().any(|s| s.service == stop.service && s.slot == stop.slot) {
                replaced.entry((stop.service.as_str(), &stop.slot)).or_default().push(stop.container.clone());
                continue;
            }
            let (containers, cancel, container) =
                (self.containers.clone(), self.cancel.clone(), stop.container.clone());
            self.tasks.spawn(async move {
                tokio::select! {
                    result = containers.remove(&container) => Done::Removed { container, result },
                    () = cancel.cancelled() => Done::Cancelled,
                }
            });
        }
        for start in launch {
            let Some(spec) = self.map.get(&start.service) else { continue };
            let key = (start.service.clone(), start.slot.clone());
            self.starting.insert(key.clone());
            info!(service = %start.service, slot = %start.slot, "starting a replica");
            let cspec = container_spec(spec, &start.slot, &start.version);
            let old = replaced.remove(&(start.service.as_str(), &start.slot)).unwrap_or_default();
            let (containers, cancel, version) = (self.containers.clone(), self.cancel.clone(), start.version.clone());
            self.tasks.spawn(async move {
                let work = async {
                    for id in &old {
                        if let Err(e) = containers.remove(id).await {
                            warn!(container = %id, err = %e, "cannot stop a replica");
                        }
                    }
                    containers.start(cspec).await
                };
                tokio::select! {
                    result = work => Done::Started { key, version, result, replaced: old },
                    () = cancel.cancelled() => Done::Cancelled,
                }
            });
        }
        let now = self.now_ms();
        for check in checks {
            let h = self.health.entry(check.container.clone()).or_default();
            h.running = true;
            h.last_ms = Some(now);
            let (containers, cancel) = (self.containers.clone(), self.cancel.clone());
            let (container, cmd) = (check.container.clone(), check.cmd.clone());
            self.tasks.spawn(async move {
                tokio::select! {
                    ok = containers.check(&container, cmd, CHECK_TIMEOUT) => Done::Checked { container, ok },
                    () = cancel.cancelled() => Done::Cancelled,
                }
            });
        }
    }

    /// Publishes this peer's reports when they (or the draining flag) changed.
    async fn publish(&mut self, mine: &[Report]) {
        let value = serde_json::json!([reports::encode(mine), self.draining]);
        if self.published.as_ref() == Some(&value) {
            return;
        }
        match self.cluster.publish(value[0].clone(), self.draining).await {
            Ok(()) => self.published = Some(value),
            Err(e) => debug!(err = %e, "cannot publish this peer's replicas"),
        }
    }

    /// Ends a drain once every local replica runs elsewhere (or its time is up): stops them.
    async fn finish_drain(&mut self, local: &[LocalReplica]) {
        let Some(drain) = &self.drain else { return };
        let covered = local.iter().all(|c| {
            self.snapshot.reports.iter().any(|r| {
                r.peer != self.me
                    && r.service == c.service
                    && r.slot == c.slot
                    && r.state == shoal_scheduler::ReplicaState::Running
            }) || self.map.get(&c.service).is_none()
        });
        if !covered && Instant::now() < drain.deadline {
            return;
        }
        for c in local {
            if let Err(e) = self.containers.remove(&c.container).await {
                warn!(container = %c.container, err = %e, "cannot stop a replica while draining");
            }
        }
        if let Some(drain) = self.drain.take() {
            info!(handed_off = covered, "drain complete");
            let _ = drain.reply.send(());
        }
    }
}
