//! Health checks, cluster-wide rolling updates and automatic rollback for service replicas.
//!
//! - **Health**: a service's `health_cmd` runs inside each local replica every 2 s (through
//!   `exec`, 5 s timeout). Three failures in a row make the replica unhealthy: it is reported
//!   as `unhealthy` in this peer's record and replaced.
//! - **Rolling update**: a replica running an older version (a different image, command, env,
//!   resources or ports) is replaced only if its index is among the `max_unavailable` lowest
//!   indexes of the service that are not yet running healthy at the current version, as every
//!   peer sees it in the gossiped replica reports. All peers apply the same rule to the same
//!   reports, so the wave moves through the indexes and no more than `max_unavailable`
//!   replicas are down at once (once views agree).
//! - **Rollback**: when a replica of the current version is unhealthy or has crashed three
//!   times and the service records the image it was updated from, this peer writes the
//!   service back to that image (a new version in the replicated map; if several peers do it
//!   at once, the last-writer-wins map keeps one).

use crate::{Node, NodeError};
use shoal_types::{ReplicaInfo, ServiceSpec};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Time between health checks of one replica.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// A check that takes longer fails.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Failures in a row that make a replica unhealthy.
const UNHEALTHY_AFTER: u32 = 3;
/// Crashes of a new-version replica that trigger a rollback.
const ROLLBACK_RESTARTS: u32 = 3;

/// Health of one local replica container.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    fails: u32,
    last: Option<Instant>,
    running: bool,
}

impl Health {
    pub(crate) fn unhealthy(&self) -> bool {
        self.fails >= UNHEALTHY_AFTER
    }
}

/// The indexes of `spec` whose outdated replicas may be replaced now.
pub(crate) fn replaceable(spec: &ServiceSpec, current: &str, reports: &[ReplicaInfo]) -> BTreeSet<u32> {
    let done: BTreeSet<u32> = reports
        .iter()
        .filter(|r| r.service == spec.name && r.version == current && r.state == "running")
        .map(|r| r.index)
        .collect();
    (0..spec.replicas).filter(|i| !done.contains(i)).take(spec.max_unavailable.max(1) as usize).collect()
}

impl Node {
    /// Starts due health checks of local replicas; returns the containers now unhealthy.
    pub(crate) fn run_health_checks(&self, local: &[(String, ServiceSpec)]) -> BTreeSet<String> {
        let svc = self.services_cell();
        let mut health = svc.health.lock().unwrap_or_else(|e| e.into_inner());
        let live: BTreeSet<&String> = local.iter().map(|(c, _)| c).collect();
        health.retain(|c, _| live.contains(c));
        let mut unhealthy = BTreeSet::new();
        for (container, spec) in local {
            let Some(cmd) = spec.health_cmd.clone().filter(|c| !c.is_empty()) else { continue };
            let h = health.entry(container.clone()).or_default();
            if h.unhealthy() {
                unhealthy.insert(container.clone());
            }
            if h.running || h.last.is_some_and(|t| t.elapsed() < CHECK_EVERY) {
                continue;
            }
            h.running = true;
            h.last = Some(Instant::now());
            let (node, container) = (self.clone(), container.clone());
            tokio::spawn(async move {
                let ok = node.check_once(&container, cmd).await;
                let svc = node.services_cell();
                let mut health = svc.health.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(h) = health.get_mut(&container) {
                    h.running = false;
                    h.fails = if ok { 0 } else { h.fails + 1 };
                    if h.fails == UNHEALTHY_AFTER {
                        warn!(%container, "replica failed its health check {UNHEALTHY_AFTER} times in a row");
                    }
                }
            });
        }
        unhealthy
    }

    async fn check_once(&self, container: &str, cmd: Vec<String>) -> bool {
        let Ok(mut child) = self.exec_container(container, cmd).await else { return false };
        drop(child.stdin.take());
        match tokio::time::timeout(CHECK_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                Node::end_exec(&mut child).await;
                false
            }
        }
    }

    /// Rolls `spec` back to its previous image if a replica of the current version is failing.
    /// Returns whether it wrote a new version (rollback, or the update declared done).
    pub(crate) async fn maybe_roll_back(
        &self,
        spec: &ServiceSpec,
        current: &str,
        me: &str,
        reports: &[ReplicaInfo],
    ) -> Result<bool, NodeError> {
        let Some(previous) = spec.previous_image.clone() else { return Ok(false) };
        let failing = reports.iter().any(|r| {
            r.service == spec.name
                && r.version == current
                && (r.state == "unhealthy" || r.restarts >= ROLLBACK_RESTARTS)
        }) || self.start_failures(&spec.name, current) >= 2;
        if !failing {
            // Every replica runs the new version: the update is done and can no longer roll
            // back (so later crashes never revert it). The peer of the lowest index says so.
            let done = (0..spec.replicas).all(|i| {
                reports
                    .iter()
                    .any(|r| r.service == spec.name && r.index == i && r.version == current && r.state == "running")
            });
            let decider =
                reports.iter().filter(|r| r.service == spec.name).min_by_key(|r| r.index).map(|r| r.peer.as_str());
            if done && spec.replicas > 0 && decider == Some(me) {
                let mut s = spec.clone();
                s.previous_image = None;
                self.put_service_internal(s).await?;
                return Ok(true);
            }
            return Ok(false);
        }
        warn!(service = %spec.name, from = %spec.image, to = %previous, "new replicas are failing: rolling back");
        let mut back = spec.clone();
        back.image = previous;
        back.previous_image = None;
        self.put_service_internal(back).await?;
        Ok(true)
    }

    /// The most consecutive failed starts of one of this service's replicas here.
    fn start_failures(&self, service: &str, version: &str) -> u32 {
        let svc = self.services_cell();
        let f = svc.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.iter()
            .filter(|((s, _), (_, _, _, v))| s == service && v == version)
            .map(|(_, (_, _, n, _))| n + 1)
            .max()
            .unwrap_or(0)
    }

    /// Autoscaling: the peer running the lowest-indexed replica of the service decides (one
    /// peer, once views agree), from the CPU use every replica reports; grows at most every
    /// 10 s, shrinks at most every 30 s.
    pub(crate) async fn maybe_autoscale(
        &self,
        spec: &ServiceSpec,
        me: &str,
        reports: &[ReplicaInfo],
    ) -> Result<(), NodeError> {
        let Some(a) = spec.autoscale else { return Ok(()) };
        let mine: Vec<&ReplicaInfo> = reports
            .iter()
            .filter(|r| r.service == spec.name && r.state == "running" && r.index < spec.replicas)
            .collect();
        let Some(first) = mine.iter().min_by_key(|r| r.index) else { return Ok(()) };
        if first.peer != me {
            return Ok(());
        }
        let usage: Vec<u64> = mine.iter().map(|r| r.cpu_milli).collect();
        let Some(next) = shoal_scheduler::autoscale::decide(spec.replicas, &a, spec.cpus_milli, &usage) else {
            return Ok(());
        };
        {
            let svc = self.services_cell();
            let mut scaled = svc.scaled.lock().unwrap_or_else(|e| e.into_inner());
            let cool = if next > spec.replicas { Duration::from_secs(10) } else { Duration::from_secs(30) };
            if scaled.get(&spec.name).is_some_and(|t| t.elapsed() < cool) {
                return Ok(());
            }
            scaled.insert(spec.name.clone(), Instant::now());
        }
        info!(service = %spec.name, from = spec.replicas, to = next, "autoscaling");
        let mut s = spec.clone();
        s.replicas = next;
        self.put_service_internal(s).await
    }

    /// For `update`: remembers the image being replaced so a failing update can roll back.
    pub(crate) fn with_previous(old: Option<&ServiceSpec>, mut new: ServiceSpec) -> ServiceSpec {
        if let Some(old) = old
            && old.image != new.image
        {
            info!(service = %new.name, from = %old.image, to = %new.image, "rolling update");
            new.previous_image = Some(old.image.clone());
        } else if let Some(old) = old {
            new.previous_image = old.previous_image.clone();
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(index: u32, version: &str, state: &str) -> ReplicaInfo {
        ReplicaInfo {
            service: "web".into(),
            index,
            peer: "p".into(),
            peer_name: "p".into(),
            container: format!("c{index}"),
            state: state.into(),
            started_unix: None,
            restarts: 0,
            ip: None,
            version: version.into(),
            cpu_milli: 0,
        }
    }

    #[test]
    fn the_wave_moves_max_unavailable_at_a_time() {
        let spec = ServiceSpec { name: "web".into(), replicas: 4, max_unavailable: 1, ..Default::default() };
        let old: Vec<ReplicaInfo> = (0..4).map(|i| rep(i, "v1", "running")).collect();
        assert_eq!(replaceable(&spec, "v2", &old), [0].into());
        let mut r = old.clone();
        r[0] = rep(0, "v2", "created");
        assert_eq!(replaceable(&spec, "v2", &r), [0].into(), "index 0 not yet up: nothing else moves");
        r[0] = rep(0, "v2", "running");
        assert_eq!(replaceable(&spec, "v2", &r), [1].into());
        let two = ServiceSpec { max_unavailable: 2, ..spec.clone() };
        assert_eq!(replaceable(&two, "v2", &r), [1, 2].into());
        let all: Vec<ReplicaInfo> = (0..4).map(|i| rep(i, "v2", "running")).collect();
        assert!(replaceable(&spec, "v2", &all).is_empty());
    }
}
