//! Reconciliation: what this peer must start and stop so that it runs exactly its share.
//!
//! [`reconcile`] compares the replicas an [`Assignment`] gives to this peer with the replicas
//! this peer actually runs ([`Running`], reported by the runtime) and returns [`Action`]s:
//!
//! * a replica assigned here that is not running is started (at the service's current version);
//! * a container of a removed service, of a replica beyond the service's replica count, or of a
//!   replica assigned to another peer (or to none) is stopped;
//! * of two containers for the same replica, the better one (current version, healthy, then the
//!   smaller container id) is kept and the other stopped;
//! * a replica running an older version of the spec is replaced (stop, then start), at most
//!   `max_unavailable` replicas of a service at a time *on this peer* (a cluster-wide budget
//!   needs coordination between peers and comes with rolling updates): replicas that are missing
//!   or unhealthy already count against the budget, so the next replacement waits until the new
//!   replica reports healthy. An outdated replica that is unhealthy anyway is replaced at once.
//!   A `max_unavailable` of 0 counts as 1, since replacing without a surge needs one slot.
//!
//! A version is the text form of the service entry's [`crate::Hlc`]. The function is pure: the
//! caller runs the actions in order (all stops come before all starts) and calls it again with
//! the new state; it never remembers anything between calls.

use crate::crdt::ServiceMap;
use crate::place::{Assignment, Unplaced};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A replica container running on this peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Service name.
    pub service: String,
    /// Replica index.
    pub index: u32,
    /// Text form of the service version it was started from.
    pub version: String,
    /// The container's id.
    pub container_id: String,
    /// Whether it is running and passes its health check.
    pub healthy: bool,
}

/// One step for this peer's runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start replica `index` of `service` at the service's current version.
    Start {
        /// Service name.
        service: String,
        /// Replica index.
        index: u32,
    },
    /// Stop and remove a container.
    Stop {
        /// The container's id.
        container_id: String,
        /// Why.
        reason: StopReason,
    },
}

/// Why a container is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The service was removed (or was never declared).
    ServiceRemoved,
    /// The service now has fewer replicas than this one's index.
    ScaledDown {
        /// The service's replica count.
        replicas: u32,
    },
    /// The replica is assigned to another peer.
    Moved {
        /// That peer's id.
        to: String,
    },
    /// No peer can run the replica any more, this one included (it may be draining).
    Unplaced {
        /// Why not, if placement said.
        why: Option<Unplaced>,
    },
    /// Another container of the same replica is kept.
    Duplicate {
        /// The container kept.
        kept: String,
    },
    /// The replica failed its health check and is replaced.
    Unhealthy,
    /// The replica runs an older version of the service and is replaced.
    Outdated {
        /// The version it runs.
        running: String,
        /// The current version.
        current: String,
    },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::ServiceRemoved => write!(f, "the service was removed"),
            StopReason::ScaledDown { replicas } => write!(f, "the service was scaled down to {replicas} replicas"),
            StopReason::Moved { to } => write!(f, "the replica moved to peer {to}"),
            StopReason::Unplaced { why: Some(why) } => write!(f, "no peer can run the replica: {why}"),
            StopReason::Unplaced { why: None } => write!(f, "no peer can run the replica"),
            StopReason::Duplicate { kept } => write!(f, "container {kept} already runs this replica"),
            StopReason::Unhealthy => write!(f, "it failed its health check; a fresh one replaces it"),
            StopReason::Outdated { running, current } => {
                write!(f, "replaced by version {current} (it runs version {running})")
            }
        }
    }
}

/// The version of what a replica runs: a digest of the fields that go into its container
/// (image, command, environment, resources, ports). Scaling, constraints or spread changes
/// leave it alone, so they never restart running replicas; changing the image does.
pub fn spec_version(spec: &shoal_types::ServiceSpec) -> String {
    let mut h = blake3::Hasher::new();
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(spec.image.as_bytes());
    for c in &spec.cmd {
        field(c.as_bytes());
    }
    field(b"--env--");
    for e in &spec.env {
        field(e.as_bytes());
    }
    field(&spec.cpus_milli.to_le_bytes());
    field(&spec.memory_bytes.to_le_bytes());
    for p in &spec.ports {
        field(&[p.host_port.to_le_bytes(), p.container_port.to_le_bytes()].concat());
    }
    h.finalize().to_hex()[..16].to_string()
}

/// The actions that make peer `me` run exactly the replicas `assignment` gives it, at the
/// versions in `services` (see the module docs). Stops come first, then starts, each in
/// (service, index) order.
pub fn reconcile(assignment: &Assignment, services: &ServiceMap, me: &str, running: &[Running]) -> Vec<Action> {
    let mine: BTreeSet<(&str, u32)> = assignment.on_peer(me).collect();
    let mut by_replica: BTreeMap<(&str, u32), Vec<&Running>> = BTreeMap::new();
    for r in running {
        by_replica.entry((r.service.as_str(), r.index)).or_default().push(r);
    }

    let mut stops: Vec<Action> = Vec::new();
    let mut starts: Vec<Action> = Vec::new();
    let stop = |r: &Running, reason| Action::Stop { container_id: r.container_id.clone(), reason };
    // Per service: replicas here that are missing or unhealthy, and healthy/unhealthy outdated ones.
    let mut unavailable: BTreeMap<&str, u32> = BTreeMap::new();
    let mut outdated: BTreeMap<&str, Vec<&Running>> = BTreeMap::new();

    for (&(service, index), containers) in &by_replica {
        let Some(entry) = services.entry(service) else {
            stops.extend(containers.iter().map(|r| stop(r, StopReason::ServiceRemoved)));
            continue;
        };
        let Some(spec) = &entry.spec else {
            stops.extend(containers.iter().map(|r| stop(r, StopReason::ServiceRemoved)));
            continue;
        };
        if !mine.contains(&(service, index)) {
            let reason = if index >= spec.replicas {
                StopReason::ScaledDown { replicas: spec.replicas }
            } else if let Some(to) = assignment.owner(service, index) {
                StopReason::Moved { to: to.to_string() }
            } else {
                StopReason::Unplaced { why: assignment.unplaced.get(&(service.to_string(), index)).cloned() }
            };
            stops.extend(containers.iter().map(|r| stop(r, reason.clone())));
            continue;
        }
        let current = spec_version(spec);
        // Keep the best container: current version, then healthy, then the smallest id.
        let Some(keep) = containers.iter().copied().min_by(|a, b| {
            (a.version != current, !a.healthy, &a.container_id).cmp(&(
                b.version != current,
                !b.healthy,
                &b.container_id,
            ))
        }) else {
            continue;
        };
        for r in containers.iter().filter(|r| r.container_id != keep.container_id) {
            stops.push(stop(r, StopReason::Duplicate { kept: keep.container_id.clone() }));
        }
        if !keep.healthy {
            *unavailable.entry(service).or_default() += 1;
        }
        if keep.version != current {
            outdated.entry(service).or_default().push(keep);
        }
    }

    for &(service, index) in &mine {
        if !by_replica.contains_key(&(service, index)) && services.get(service).is_some() {
            *unavailable.entry(service).or_default() += 1;
            starts.push(Action::Start { service: service.to_string(), index });
        }
    }

    for (service, old) in outdated {
        let Some(spec) = services.get(service) else { continue };
        let current = spec_version(spec);
        let mut budget = spec.max_unavailable.max(1).saturating_sub(unavailable.get(service).copied().unwrap_or(0));
        for r in old {
            // An unhealthy replica is unavailable already: replacing it costs nothing.
            if !r.healthy || budget > 0 {
                if r.healthy {
                    budget -= 1;
                }
                stops.push(stop(r, StopReason::Outdated { running: r.version.clone(), current: current.clone() }));
                starts.push(Action::Start { service: service.to_string(), index: r.index });
            }
        }
    }

    stops.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
    starts.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
    stops.extend(starts);
    stops
}

/// Stops are sorted by container id (their replica is not in the action), starts by replica.
fn order_key(a: &Action) -> (&str, u32) {
    match a {
        Action::Start { service, index } => (service.as_str(), *index),
        Action::Stop { container_id, .. } => (container_id.as_str(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::place::{PeerView, place};
    use shoal_types::{Resources, ServiceSpec};

    fn setup(replicas: u32, max_unavailable: u32) -> (ServiceMap, Assignment, String) {
        let mut map = ServiceMap::new();
        let spec =
            ServiceSpec { name: "web".into(), image: "nginx".into(), replicas, max_unavailable, ..Default::default() };
        map.put(spec, Hlc::new(10, 0, "a"));
        let peers = [PeerView {
            id: "me".into(),
            capacity: Resources::new(1000, 1 << 30),
            labels: Default::default(),
            draining: false,
        }];
        let a = place(map.live().map(|(n, s, _)| (n, s)), &peers);
        let v = map.get("web").map(spec_version).unwrap();
        (map, a, v)
    }

    fn run(index: u32, version: &str, id: &str, healthy: bool) -> Running {
        Running { service: "web".into(), index, version: version.into(), container_id: id.into(), healthy }
    }

    fn starts(actions: &[Action]) -> Vec<u32> {
        actions.iter().filter_map(|a| if let Action::Start { index, .. } = a { Some(*index) } else { None }).collect()
    }

    fn stopped(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| if let Action::Stop { container_id, .. } = a { Some(container_id.as_str()) } else { None })
            .collect()
    }

    #[test]
    fn version_follows_what_the_container_runs_not_the_replica_count() {
        let a = ServiceSpec { name: "web".into(), image: "app:v1".into(), replicas: 2, ..Default::default() };
        let scaled = ServiceSpec { replicas: 5, spread: Some("zone".into()), ..a.clone() };
        let updated = ServiceSpec { image: "app:v2".into(), ..a.clone() };
        assert_eq!(spec_version(&a), spec_version(&scaled));
        assert_ne!(spec_version(&a), spec_version(&updated));
    }

    #[test]
    fn starts_missing_and_stops_extra() {
        let (map, a, v) = setup(2, 1);
        let acts = reconcile(&a, &map, "me", &[run(1, &v, "c1", true), run(5, &v, "c5", true)]);
        assert_eq!(starts(&acts), [0]);
        assert_eq!(stopped(&acts), ["c5"]);
        assert!(matches!(&acts[0], Action::Stop { reason: StopReason::ScaledDown { replicas: 2 }, .. }));
        assert!(reconcile(&a, &map, "me", &[run(0, &v, "c0", true), run(1, &v, "c1", true)]).is_empty());
    }

    #[test]
    fn stops_removed_services_and_replicas_owned_elsewhere() {
        let (mut map, a, v) = setup(1, 1);
        let acts = reconcile(&a, &map, "other", &[run(0, &v, "c0", true)]);
        assert_eq!(acts, [Action::Stop { container_id: "c0".into(), reason: StopReason::Moved { to: "me".into() } }]);
        map.remove("web", Hlc::new(11, 0, "a"));
        let acts = reconcile(&a, &map, "me", &[run(0, &v, "c0", true)]);
        assert_eq!(acts, [Action::Stop { container_id: "c0".into(), reason: StopReason::ServiceRemoved }]);
    }

    #[test]
    fn keeps_one_container_per_replica() {
        let (map, a, v) = setup(1, 1);
        let acts =
            reconcile(&a, &map, "me", &[run(0, "old", "a", true), run(0, &v, "b", false), run(0, &v, "c", true)]);
        assert_eq!(stopped(&acts), ["a", "b"]);
        assert!(starts(&acts).is_empty());
        assert!(
            acts.iter()
                .all(|x| matches!(x, Action::Stop { reason: StopReason::Duplicate { kept }, .. } if kept == "c"))
        );
    }

    #[test]
    fn rolling_replacement_respects_max_unavailable_on_this_peer() {
        let (map, a, _) = setup(4, 2);
        let old: Vec<_> = (0..4).map(|i| run(i, "old", &format!("c{i}"), true)).collect();
        let acts = reconcile(&a, &map, "me", &old);
        assert_eq!(stopped(&acts), ["c0", "c1"]);
        assert_eq!(starts(&acts), [0, 1]);

        // c0 replaced and still starting (unhealthy): one more slot.
        let v = map.get("web").map(spec_version).unwrap();
        let mut now = old.clone();
        now[0] = run(0, &v, "n0", false);
        now.remove(1);
        let acts = reconcile(&a, &map, "me", &now);
        assert_eq!(starts(&acts), [1], "the missing replica starts, nothing else is replaced");
        assert!(stopped(&acts).is_empty());

        // An unhealthy outdated replica is replaced even when the budget is spent.
        let now = vec![
            run(0, &v, "n0", false),
            run(1, &v, "n1", false),
            run(2, "old", "c2", false),
            run(3, "old", "c3", true),
        ];
        let acts = reconcile(&a, &map, "me", &now);
        assert_eq!(stopped(&acts), ["c2"]);
        let (map0, a0, _) = setup(1, 0);
        assert_eq!(starts(&reconcile(&a0, &map0, "me", &[run(0, "old", "c", true)])), [0], "0 counts as 1");
    }
}
