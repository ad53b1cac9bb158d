//! What `service ls` and `service ps` show, from the latest round's [`Snapshot`]: every
//! replica wherever it runs, the replicas that do not run yet (assigned, or unplaced with the
//! reason), and why starts fail.

use shoal_scheduler::{Assignment, ReplicaState, Report, ServiceMap, spec_version};
use shoal_types::{ReplicaInfo, ServiceInfo, ServiceMode, ServiceSpec, Slot};
use std::collections::{BTreeMap, BTreeSet};

/// The latest round's picture of the cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// The placement of every replica.
    pub(crate) assignment: Assignment,
    /// Every member's reports, this peer's included.
    pub(crate) reports: Vec<Report>,
    /// Member id → name.
    pub(crate) names: BTreeMap<String, String>,
}

fn info(r: &Report, names: &BTreeMap<String, String>) -> ReplicaInfo {
    ReplicaInfo {
        service: r.service.clone(),
        slot: r.slot.clone(),
        peer: r.peer.clone(),
        peer_name: names.get(&r.peer).cloned().unwrap_or_default(),
        container: r.container.clone(),
        state: r.state.as_str().to_string(),
        started_unix: r.started_unix,
        restarts: r.restarts,
        ip: r.ip.clone(),
        version: r.version.clone(),
        cpu_milli: r.cpu_milli,
        error: r.fault.as_ref().map(|f| f.message.clone()),
    }
}

/// Every replica of `name` (or of every service): reported ones, then the assigned ones not
/// reported yet (`pending`) and the unplaced ones with the reason; by slot, then peer.
pub(crate) fn replicas(map: &ServiceMap, snap: &Snapshot, name: Option<&str>) -> Vec<ReplicaInfo> {
    let wanted = |s: &str| name.is_none_or(|n| n == s) && map.get(s).is_some();
    let mut out: Vec<ReplicaInfo> =
        snap.reports.iter().filter(|r| wanted(&r.service)).map(|r| info(r, &snap.names)).collect();
    let reported: BTreeSet<(&str, &Slot, &str)> =
        snap.reports.iter().map(|r| (r.service.as_str(), &r.slot, r.peer.as_str())).collect();
    let blank = |service: &str, slot: &Slot, peer: &str, state: &str, error: Option<String>| ReplicaInfo {
        service: service.to_string(),
        slot: slot.clone(),
        peer: peer.to_string(),
        peer_name: snap.names.get(peer).cloned().unwrap_or_default(),
        container: String::new(),
        state: state.to_string(),
        started_unix: None,
        restarts: 0,
        ip: None,
        version: map.get(service).map(spec_version).unwrap_or_default(),
        cpu_milli: 0,
        error,
    };
    for ((service, slot), peer) in &snap.assignment.placed {
        if wanted(service) && !reported.contains(&(service.as_str(), slot, peer.as_str())) {
            out.push(blank(service, slot, peer, "pending", None));
        }
    }
    for ((service, slot), why) in &snap.assignment.unplaced {
        if wanted(service) {
            out.push(blank(service, slot, "", "unplaced", Some(why.to_string())));
        }
    }
    out.sort_by(|a, b| (&a.service, &a.slot, &a.peer).cmp(&(&b.service, &b.slot, &b.peer)));
    out
}

/// Replicas `spec` wants now: its count, or for a global service the peers it matches.
fn desired(spec: &ServiceSpec, a: &Assignment) -> u32 {
    match spec.mode {
        ServiceMode::Replicated => spec.replicas.min(shoal_scheduler::MAX_REPLICAS_PER_SERVICE),
        ServiceMode::Global => {
            let placed = a.of_service(&spec.name).count();
            let unplaced =
                a.unplaced.keys().filter(|(s, slot)| *s == spec.name && matches!(slot, Slot::Peer(_))).count();
            (placed + unplaced) as u32
        }
    }
}

/// Every service with how it is doing.
pub(crate) fn services(map: &ServiceMap, snap: &Snapshot) -> Vec<ServiceInfo> {
    map.live()
        .map(|(name, spec, version)| {
            let desired = desired(spec, &snap.assignment);
            let mine: Vec<&Report> = snap.reports.iter().filter(|r| r.service == name).collect();
            let running_slots: BTreeSet<&Slot> = mine
                .iter()
                .filter(|r| r.state == ReplicaState::Running)
                .filter(|r| spec.mode == ServiceMode::Global || r.slot.index().is_some_and(|i| i < spec.replicas))
                .map(|r| &r.slot)
                .collect();
            let running = running_slots.len() as u32;
            let current = spec_version(spec);
            let mut errors: Vec<String> = Vec::new();
            for r in mine.iter().filter(|r| r.state == ReplicaState::Failed && r.version == current) {
                if let Some(f) = &r.fault
                    && !errors.contains(&f.message)
                {
                    errors.push(f.message.clone());
                }
            }
            let unplaced = snap.assignment.reasons(name);
            let state = if desired == 0 && unplaced.is_empty() {
                "empty"
            } else if running >= desired && unplaced.is_empty() {
                "running"
            } else if !unplaced.is_empty() {
                "unplaceable"
            } else if !errors.is_empty() {
                "failing"
            } else if running == 0 {
                "starting"
            } else {
                "degraded"
            };
            ServiceInfo {
                spec: spec.clone(),
                version: version.to_string(),
                desired,
                running,
                state: state.to_string(),
                unplaced,
                errors,
                rollback_image: spec.rollback_image.clone(),
            }
        })
        .collect()
}
