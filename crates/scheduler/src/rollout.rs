//! Cluster-wide decisions that every peer takes from the same reports: which outdated replicas
//! may be replaced now (rolling updates), whether a new version is failing (roll back), when an
//! update or a rebalance is done, and autoscaling.
//!
//! - **Rolling update**: a replica running an older version (a different image, command, env,
//!   resources or ports) is replaced only if its slot is among the `max_unavailable` first slots
//!   of the service (in slot order) that do not yet run at the current version, as the reports
//!   say. All peers apply the same rule to the same reports, so the wave moves through the slots
//!   and no more than `max_unavailable` replicas are down at once (once views agree).
//! - **Rollback**: when a replica of the current version is unhealthy, has crashed
//!   [`ROLLBACK_RESTARTS`] times, or failed to start twice, and the service records the image it
//!   was updated from, the peer that reports the failure writes the service back to that image
//!   (a new version in the replicated map; if several peers do it at once, the last-writer-wins
//!   map keeps one, and they all wrote the same spec).
//! - **Done**: once every placed replica runs the current version at its owner (and has for
//!   [`MONITOR_SECS`]), the owner of the first slot clears `previous_image` (so later crashes never revert a finished update) and
//!   `rebalance` (the spread is as good as it gets).
//! - **Autoscaling**: the peer running the first running slot decides from the CPU use every
//!   replica reports ([`crate::autoscale::decide`]), at most every [`GROW_COOLDOWN_MS`] up and
//!   [`SHRINK_COOLDOWN_MS`] down.

use crate::place::Assignment;
use crate::report::{ReplicaState, Report};
use shoal_types::{ServiceMode, ServiceSpec, Slot};
use std::collections::BTreeSet;

/// Crashes of a current-version replica that trigger a rollback.
pub const ROLLBACK_RESTARTS: u32 = 3;
/// Failed starts of a current-version replica that trigger a rollback.
pub const ROLLBACK_START_FAILURES: u32 = 2;
/// Least time between two autoscaling steps up.
pub const GROW_COOLDOWN_MS: u64 = 10_000;
/// Least time between two autoscaling steps down.
pub const SHRINK_COOLDOWN_MS: u64 = 30_000;
/// An update counts as done only once every new replica has run this long (a new version
/// that crashes or fails its health checks soon after starting still rolls back).
pub const MONITOR_SECS: u64 = 5;

/// The time, both ways: monotonic milliseconds (cool-downs) and wall-clock seconds (compared
/// with the start times peers report).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic milliseconds.
    pub ms: u64,
    /// Seconds since the epoch.
    pub unix: u64,
}

/// A change of desired state that a peer decided on by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Why.
    pub why: WriteReason,
    /// The service's new spec.
    pub spec: ServiceSpec,
}

/// Why a peer rewrites a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteReason {
    /// Replicas of the new image fail: back to the image before.
    RollBack {
        /// The failing image.
        from: String,
        /// The image restored.
        to: String,
    },
    /// Every replica runs the current version: the update can no longer roll back and a
    /// requested rebalance is over.
    Settled,
    /// Autoscaling changes the replica count.
    Autoscale {
        /// Replicas before.
        from: u32,
        /// Replicas after.
        to: u32,
    },
}

/// The slots of `name` whose outdated replicas may be replaced now: the first
/// `max_unavailable` placed slots that no report shows serving `current`.
pub fn replaceable(spec: &ServiceSpec, current: &str, assignment: &Assignment, reports: &[&Report]) -> BTreeSet<Slot> {
    let done: BTreeSet<&Slot> = reports.iter().filter(|r| r.serves(current)).map(|r| &r.slot).collect();
    assignment
        .of_service(&spec.name)
        .map(|(slot, _)| slot)
        .filter(|slot| !done.contains(slot))
        .take(spec.max_unavailable.max(1) as usize)
        .cloned()
        .collect()
}

/// Whether `report` shows the current version failing.
fn failing(report: &Report, current: &str) -> bool {
    report.version == current
        && (report.state == ReplicaState::Unhealthy
            || report.restarts >= ROLLBACK_RESTARTS
            || (report.state == ReplicaState::Failed && report.failures >= ROLLBACK_START_FAILURES))
}

/// The rewrite peer `me` should make to `spec`, if any (see the module docs). `reports` are
/// every peer's reports of this service (`me`'s included); `last_scaled_ms` is when `me` last
/// autoscaled it.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    me: &str,
    writers: Option<&BTreeSet<String>>,
    spec: &ServiceSpec,
    assignment: &Assignment,
    reports: &[&Report],
    now: Now,
    last_scaled_ms: Option<u64>,
) -> Option<Write> {
    let current = crate::spec_version(spec);
    // A report counts only from the peer the placement gives its replica to: reports are
    // self-declared, so a peer cannot make a service roll back with a replica it does not run.
    let owners: std::collections::BTreeMap<&Slot, &str> = assignment.of_service(&spec.name).collect();
    let failing_peers: Vec<&str> = reports
        .iter()
        .filter(|r| failing(r, &current) && owners.get(&r.slot) == Some(&r.peer.as_str()))
        .map(|r| r.peer.as_str())
        .collect();
    if let Some(previous) = &spec.previous_image
        && !failing_peers.is_empty()
        && acts(me, &failing_peers, writers)
    {
        let mut back = spec.clone();
        back.image = previous.clone();
        back.previous_image = None;
        // Nothing to roll back to: the image it came from is the one that failed.
        back.rollback_image = None;
        return Some(Write {
            why: WriteReason::RollBack { from: spec.image.clone(), to: previous.clone() },
            spec: back,
        });
    }
    let mut placed = assignment.of_service(&spec.name).peekable();
    let first_owner = placed.peek().map(|(_, p)| *p);
    if (spec.previous_image.is_some() || spec.rebalance.is_some())
        && first_owner.is_some_and(|o| acts(me, &[o], writers))
    {
        let settled = placed.all(|(slot, owner)| {
            let copies: Vec<&&Report> =
                reports.iter().filter(|r| &r.slot == slot && r.state != ReplicaState::Failed).collect();
            // Only an update needs its replicas to have run a while (to roll back a new version
            // that crashes soon after starting); a rebalance is over once the copies are there.
            let monitor = if spec.previous_image.is_some() { MONITOR_SECS } else { 0 };
            let old_enough = copies.first().is_some_and(|c| c.started_unix.unwrap_or(0) + monitor <= now.unix);
            copies.len() == 1 && copies[0].peer == owner && copies[0].serves(&current) && old_enough
        });
        if settled {
            let mut s = spec.clone();
            s.previous_image = None;
            s.rebalance = None;
            return Some(Write { why: WriteReason::Settled, spec: s });
        }
        return None;
    }
    autoscale(me, writers, spec, reports, now.ms, last_scaled_ms)
}

/// Whether `me` makes a write that the `natural` peers would make: with no `writers` set
/// (every peer may write), when `me` is one of them; otherwise only a writer does, and when
/// none of the natural peers is a writer, the least writer (by id) makes it for them, so a
/// decision that falls to a worker peer is still taken.
fn acts(me: &str, natural: &[&str], writers: Option<&BTreeSet<String>>) -> bool {
    match writers {
        None => natural.contains(&me),
        Some(w) if !w.contains(me) => false,
        Some(w) => {
            natural.contains(&me)
                || (!natural.iter().any(|p| w.contains(*p)) && w.first().map(String::as_str) == Some(me))
        }
    }
}

fn autoscale(
    me: &str,
    writers: Option<&BTreeSet<String>>,
    spec: &ServiceSpec,
    reports: &[&Report],
    now_ms: u64,
    last_scaled_ms: Option<u64>,
) -> Option<Write> {
    let a = spec.autoscale?;
    if spec.mode == ServiceMode::Global {
        return None;
    }
    let running: Vec<&&Report> = reports
        .iter()
        .filter(|r| r.state == ReplicaState::Running && r.slot.index().is_some_and(|i| i < spec.replicas))
        .collect();
    let first = running.iter().min_by_key(|r| &r.slot)?;
    if !acts(me, &[first.peer.as_str()], writers) {
        return None;
    }
    let usage: Vec<u64> = running.iter().map(|r| r.cpu_milli).collect();
    let next = crate::autoscale::decide(spec.replicas, &a, spec.cpus_milli, &usage)?;
    let cool = if next > spec.replicas { GROW_COOLDOWN_MS } else { SHRINK_COOLDOWN_MS };
    if last_scaled_ms.is_some_and(|t| now_ms.saturating_sub(t) < cool) {
        return None;
    }
    let mut s = spec.clone();
    s.replicas = next;
    Some(Write { why: WriteReason::Autoscale { from: spec.replicas, to: next }, spec: s })
}

#[cfg(test)]
mod tests {
    use super::acts;
    use std::collections::BTreeSet;

    #[test]
    fn a_decision_that_falls_to_a_worker_is_taken_by_the_least_writer() {
        let w: BTreeSet<String> = ["op-a", "op-b"].map(String::from).into();
        assert!(acts("x", &["x"], None), "open: the natural peer");
        assert!(!acts("y", &["x"], None));
        assert!(acts("op-b", &["op-b"], Some(&w)), "a writer that is the natural peer");
        assert!(!acts("op-a", &["op-b"], Some(&w)), "... alone");
        assert!(!acts("worker", &["worker"], Some(&w)), "a worker never writes");
        assert!(acts("op-a", &["worker"], Some(&w)), "the least writer stands in");
        assert!(!acts("op-b", &["worker"], Some(&w)));
        assert!(!acts("op-a", &["worker"], Some(&BTreeSet::new())), "no writer: nobody");
    }
}
