//! The planner: everything one peer decides in one round, as a pure function.
//!
//! ```text
//!  desired state (ServiceMap) ─┐
//!  membership (PeerView…)  ────┤                       ┌─► Assignment (same on every peer)
//!  others' reports (Report…) ──┼──► plan(Input) ──► Plan ─► this peer's own reports (to publish)
//!  local containers, health,   │                       ├─► stops, starts (this peer's runtime)
//!  start failures, now ────────┘                       ├─► health checks due now
//!                                                      └─► rewrites of desired state
//! ```
//!
//! Every policy lives here, so it is property-tested and simulated (see [`crate::sim`]) without
//! a cluster: the node only gathers the inputs and carries out the plan.
//!
//! For each container of a replica on this peer:
//!
//! * the service is gone → stop; the replica is beyond the replica count → stop;
//! * the replica is assigned to another peer → stop once that peer reports it running at the
//!   current version (make before break: a move never leaves the replica down), unless this
//!   peer drains and nobody can take over (it keeps it until the drain ends);
//! * several containers for one replica here → keep the best (current version, alive, smallest
//!   id), stop the others;
//! * the replica is ours: an exited one and one that failed its health check
//!   [`UNHEALTHY_AFTER`] times in a row are replaced (stop, start); an outdated one is replaced
//!   when the cluster-wide rolling wave reaches its slot ([`crate::rollout::replaceable`]).
//!
//! A replica assigned here with no container and no start in progress is started, unless its
//! last start at this version failed less than a back-off ago (1 s doubling to 30 s).
//! Health checks run every [`CHECK_EVERY_MS`] from [`CHECK_GRACE_SECS`] after a replica starts;
//! a replica with a health check reports `starting` until its first check passes (so rolling
//! updates, and later the service's name, wait for it).

use crate::crdt::ServiceMap;
use crate::place::{Assignment, PeerView, ReplicaKey, Unplaced, place};
use crate::report::{Fault, ReplicaState, Report};
use crate::rollout::{self, Write};
use shoal_types::{ContainerState, ServiceSpec, Slot};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Health-check failures in a row that make a replica unhealthy.
pub const UNHEALTHY_AFTER: u32 = 3;
/// Time between two health checks of one replica.
pub const CHECK_EVERY_MS: u64 = 2_000;
/// A replica's first health check waits this long after it starts (time to come up).
pub const CHECK_GRACE_SECS: u64 = 10;
/// Longest wait between two starts of a replica whose starts fail.
pub const MAX_BACKOFF_MS: u64 = 30_000;

/// A container of a service replica on this peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReplica {
    /// The container's id.
    pub container: String,
    /// Service name.
    pub service: String,
    /// Which replica.
    pub slot: Slot,
    /// The spec version it was started from ([`spec_version`]).
    pub version: String,
    /// Its container's state.
    pub state: ContainerState,
    /// Restarts by its supervisor.
    pub restarts: u32,
    /// When it started, seconds since the epoch.
    pub started_unix: Option<u64>,
    /// Its address on the bridge.
    pub ip: Option<String>,
    /// CPU it used lately, millicores.
    pub cpu_milli: u64,
}

/// Health-check state of one local replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// A check has passed at least once (until then the replica reports `starting`).
    pub passed: bool,
    /// Failures in a row.
    pub fails: u32,
    /// When the last check started (monotonic ms).
    pub last_ms: Option<u64>,
    /// A check runs now.
    pub running: bool,
}

impl Health {
    /// Failed [`UNHEALTHY_AFTER`] times in a row.
    pub fn unhealthy(&self) -> bool {
        self.fails >= UNHEALTHY_AFTER
    }
}

/// The failed starts of one replica here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// The version that failed.
    pub version: String,
    /// Failures in a row at that version.
    pub count: u32,
    /// When the last one failed (monotonic ms).
    pub at_ms: u64,
    /// Why.
    pub fault: Fault,
}

/// What one round knows.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// This peer's id.
    pub me: &'a str,
    /// Monotonic milliseconds (back-offs, health checks, cool-downs).
    pub now_ms: u64,
    /// Wall-clock seconds since the epoch (compared with container start times).
    pub now_unix: u64,
    /// The desired state.
    pub services: &'a ServiceMap,
    /// Alive and suspect peers, this one included (with its draining flag).
    pub peers: &'a [PeerView],
    /// The reports of the other peers in `peers` (this peer's own are built from the rest).
    pub reports: &'a [&'a Report],
    /// This peer's replica containers.
    pub local: &'a [LocalReplica],
    /// Health-check state by container id.
    pub health: &'a BTreeMap<String, Health>,
    /// Failed starts by replica.
    pub failures: &'a BTreeMap<ReplicaKey, StartFailure>,
    /// Replicas whose start is in progress here.
    pub starting: &'a BTreeSet<ReplicaKey>,
    /// When this peer last autoscaled each service (monotonic ms).
    pub scaled: &'a BTreeMap<String, u64>,
    /// The live peers that may write desired state (operator peers), or `None` when every
    /// peer may (an open cluster, or every peer an operator).
    pub writers: Option<&'a BTreeSet<String>>,
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
    /// The service changed between replicated and global.
    ModeChanged,
    /// The replica runs on another peer now (which runs it already).
    Moved {
        /// That peer's id.
        to: String,
    },
    /// No peer can run the replica any more, this one included.
    Unplaced {
        /// Why not.
        why: Option<Unplaced>,
    },
    /// Another copy of the same replica is kept (here or on another peer).
    Duplicate {
        /// Which: a container id, or the peer that runs it.
        kept: String,
    },
    /// The replica failed its health check; a fresh one replaces it.
    Unhealthy,
    /// The replica exited for good; a fresh one replaces it.
    Exited,
    /// The replica runs an older version of the service and is replaced.
    Outdated {
        /// The version it runs.
        running: String,
        /// The current version.
        current: String,
    },
}

impl StopReason {
    /// Whether a running, healthy replica stops although its service still wants it here or
    /// elsewhere: what stickiness keeps at zero (benchmarks count these).
    pub fn is_move(&self) -> bool {
        matches!(self, StopReason::Moved { .. } | StopReason::Duplicate { .. })
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::ServiceRemoved => write!(f, "the service was removed"),
            StopReason::ScaledDown { replicas } => write!(f, "the service was scaled down to {replicas} replicas"),
            StopReason::ModeChanged => write!(f, "the service changed between replicated and global"),
            StopReason::Moved { to } => write!(f, "peer {to} runs the replica now"),
            StopReason::Unplaced { why: Some(why) } => write!(f, "no peer can run the replica: {why}"),
            StopReason::Unplaced { why: None } => write!(f, "no peer can run the replica"),
            StopReason::Duplicate { kept } => write!(f, "another copy of this replica is kept ({kept})"),
            StopReason::Unhealthy => write!(f, "it failed its health check; a fresh one replaces it"),
            StopReason::Exited => write!(f, "it exited; a fresh one replaces it"),
            StopReason::Outdated { running, current } => {
                write!(f, "replaced by version {current} (it runs version {running})")
            }
        }
    }
}

/// Stop and remove a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The container.
    pub container: String,
    /// Its service.
    pub service: String,
    /// Its slot.
    pub slot: Slot,
    /// Why.
    pub reason: StopReason,
}

/// Start a replica at its service's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// Service name.
    pub service: String,
    /// Which replica.
    pub slot: Slot,
    /// The version to start ([`spec_version`] of the current spec).
    pub version: String,
}

/// Run a service's health command in a local replica now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The container.
    pub container: String,
    /// The command.
    pub cmd: Vec<String>,
}

/// What one round decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The placement of every replica (the same on every peer whose views agree).
    pub assignment: Assignment,
    /// This peer's reports, to publish.
    pub reports: Vec<Report>,
    /// Containers to stop, then ...
    pub stops: Vec<Stop>,
    /// ... replicas to start.
    pub starts: Vec<Start>,
    /// Health checks due.
    pub checks: Vec<Check>,
    /// Rewrites of desired state this peer makes.
    pub writes: Vec<Write>,
}

/// The version of what a replica runs: a digest of the fields that go into its container
/// (image, command, environment, resources, ports). Scaling, constraints, spread or rebalance
/// changes leave it alone, so they never restart running replicas; changing the image does.
pub fn spec_version(spec: &ServiceSpec) -> String {
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

/// One round's decisions for peer `input.me` (see the module docs).
pub fn plan(input: &Input<'_>) -> Plan {
    let versions: BTreeMap<&str, String> = input.services.live().map(|(n, s, _)| (n, spec_version(s))).collect();
    let mine = own_reports(input, &versions);
    let mut reports: Vec<&Report> = input.reports.iter().copied().filter(|r| r.peer != input.me).collect();
    reports.extend(mine.iter());
    let assignment = place(input.services.live().map(|(n, s, _)| (n, s)), input.peers, reports.iter().copied());
    let mut by_service: BTreeMap<&str, Vec<&Report>> = BTreeMap::new();
    for r in reports {
        by_service.entry(r.service.as_str()).or_default().push(r);
    }

    let mut out = Plan { assignment, ..Plan::default() };
    local_actions(input, &versions, &by_service, &mut out);
    for (name, spec, _) in input.services.live() {
        let theirs = by_service.get(name).map(Vec::as_slice).unwrap_or_default();
        let last = input.scaled.get(name).copied();
        let now = rollout::Now { ms: input.now_ms, unix: input.now_unix };
        if let Some(w) = rollout::decide(input.me, input.writers, spec, &out.assignment, theirs, now, last) {
            out.writes.push(w);
        }
    }
    drop(by_service);
    out.reports = mine;
    out
}

/// This peer's reports from its local state alone: what [`plan`] would publish.
pub fn own_reports_for(input: &Input<'_>) -> Vec<Report> {
    let versions: BTreeMap<&str, String> = input.services.live().map(|(n, s, _)| (n, spec_version(s))).collect();
    own_reports(input, &versions)
}

/// This peer's reports: its containers, the starts in progress, and the starts that failed.
fn own_reports(input: &Input<'_>, versions: &BTreeMap<&str, String>) -> Vec<Report> {
    let mut out: Vec<Report> = input
        .local
        .iter()
        .filter(|c| !input.starting.contains(&(c.service.clone(), c.slot.clone())))
        .map(|c| {
            let health = input.health.get(&c.container).copied().unwrap_or_default();
            let checked =
                input.services.get(&c.service).and_then(|s| s.health_cmd.as_ref()).is_some_and(|c| !c.is_empty());
            let state = match c.state {
                ContainerState::Created => ReplicaState::Starting,
                ContainerState::Running if health.unhealthy() => ReplicaState::Unhealthy,
                ContainerState::Running if checked && !health.passed => ReplicaState::Starting,
                ContainerState::Running => ReplicaState::Running,
                ContainerState::Restarting => ReplicaState::Restarting,
                ContainerState::Exited => ReplicaState::Exited,
            };
            Report {
                peer: input.me.to_string(),
                service: c.service.clone(),
                slot: c.slot.clone(),
                version: c.version.clone(),
                state,
                restarts: c.restarts,
                cpu_milli: c.cpu_milli,
                failures: 0,
                fault: None,
                container: c.container.clone(),
                ip: c.ip.clone(),
                started_unix: c.started_unix,
            }
        })
        .collect();
    // A slot being started is reported as starting, whatever half-made container it has.
    let has_container: BTreeSet<(&str, &Slot)> = input
        .local
        .iter()
        .filter(|c| !input.starting.contains(&(c.service.clone(), c.slot.clone())))
        .map(|c| (c.service.as_str(), &c.slot))
        .collect();
    let bare = |service: &str, slot: &Slot| !has_container.contains(&(service, slot));
    for (service, slot) in input.starting.iter().filter(|(s, i)| bare(s, i)) {
        let Some(version) = versions.get(service.as_str()) else { continue };
        out.push(bare_report(input.me, service, slot, version, ReplicaState::Starting, None));
    }
    for ((service, slot), f) in input.failures {
        let current = versions.get(service.as_str());
        if current != Some(&f.version)
            || !bare(service, slot)
            || input.starting.contains(&(service.clone(), slot.clone()))
        {
            continue;
        }
        let mut r = bare_report(input.me, service, slot, &f.version, ReplicaState::Failed, Some(f.fault.clone()));
        r.failures = f.count;
        out.push(r);
    }
    out.sort_by(|a, b| (&a.service, &a.slot, &a.container).cmp(&(&b.service, &b.slot, &b.container)));
    out
}

fn bare_report(
    me: &str,
    service: &str,
    slot: &Slot,
    version: &str,
    state: ReplicaState,
    fault: Option<Fault>,
) -> Report {
    Report {
        peer: me.to_string(),
        service: service.to_string(),
        slot: slot.clone(),
        version: version.to_string(),
        state,
        restarts: 0,
        cpu_milli: 0,
        failures: 0,
        fault,
        container: String::new(),
        ip: None,
        started_unix: None,
    }
}

/// Stops, starts and health checks for this peer.
fn local_actions(
    input: &Input<'_>,
    versions: &BTreeMap<&str, String>,
    by_service: &BTreeMap<&str, Vec<&Report>>,
    out: &mut Plan,
) {
    let me = input.me;
    let draining = input.peers.iter().any(|p| p.id == me && p.draining);
    // A replica whose start is in progress belongs to that start: its half-made container is
    // neither judged nor stopped.
    let mut here: BTreeMap<(&str, &Slot), Vec<&LocalReplica>> = BTreeMap::new();
    for c in input.local.iter().filter(|c| !input.starting.contains(&(c.service.clone(), c.slot.clone()))) {
        here.entry((c.service.as_str(), &c.slot)).or_default().push(c);
    }
    let stop = |c: &LocalReplica, reason: StopReason| Stop {
        container: c.container.clone(),
        service: c.service.clone(),
        slot: c.slot.clone(),
        reason,
    };
    let start = |service: &str, slot: &Slot, version: &str| Start {
        service: service.to_string(),
        slot: slot.clone(),
        version: version.to_string(),
    };
    let unhealthy = |c: &LocalReplica| input.health.get(&c.container).is_some_and(Health::unhealthy);
    let mut waves: BTreeMap<&str, BTreeSet<Slot>> = BTreeMap::new();

    for (&(service, slot), containers) in &here {
        let (Some(spec), Some(current)) = (input.services.get(service), versions.get(service)) else {
            out.stops.extend(containers.iter().map(|c| stop(c, StopReason::ServiceRemoved)));
            continue;
        };
        let theirs = by_service.get(service).map(Vec::as_slice).unwrap_or_default();
        if let Some(reason) = unwanted(spec, slot) {
            out.stops.extend(containers.iter().map(|c| stop(c, reason.clone())));
            continue;
        }
        let owner = out.assignment.owner(service, slot);
        if owner != Some(me) {
            // Copies that serve nothing go at once; a live one waits for its new owner.
            let (dead, live): (Vec<&LocalReplica>, Vec<&LocalReplica>) =
                containers.iter().partition(|c| c.state == ContainerState::Exited);
            out.stops.extend(dead.iter().map(|c| stop(c, StopReason::Exited)));
            let containers = live.as_slice();
            if containers.is_empty() {
                continue;
            }
            let key = (service.to_string(), slot.clone());
            let reason = match owner {
                Some(to) if theirs.iter().any(|r| r.peer == to && &r.slot == slot && r.serves(current)) => {
                    if out.assignment.contested.contains(&key) {
                        Some(StopReason::Duplicate { kept: format!("the one on peer {to}") })
                    } else {
                        Some(StopReason::Moved { to: to.to_string() })
                    }
                }
                Some(_) => None, // until the new owner runs it
                None if draining => None,
                None => Some(StopReason::Unplaced { why: out.assignment.unplaced.get(&key).cloned() }),
            };
            match reason {
                Some(reason) => out.stops.extend(containers.iter().map(|c| stop(c, reason.clone()))),
                None => out.stops.extend(duplicates(containers, current).into_iter().map(|(c, kept)| stop(c, kept))),
            }
            continue;
        }
        out.stops.extend(duplicates(containers, current).into_iter().map(|(c, kept)| stop(c, kept)));
        let Some(keep) = best(containers, current) else { continue };
        let replace = if keep.state == ContainerState::Exited {
            Some(StopReason::Exited)
        } else if keep.state == ContainerState::Running && unhealthy(keep) {
            Some(StopReason::Unhealthy)
        } else if &keep.version != current {
            let wave =
                waves.entry(service).or_insert_with(|| rollout::replaceable(spec, current, &out.assignment, theirs));
            wave.contains(slot)
                .then(|| StopReason::Outdated { running: keep.version.clone(), current: current.clone() })
        } else {
            None
        };
        if let Some(reason) = replace {
            out.stops.push(stop(keep, reason));
            out.starts.push(start(service, slot, current));
        } else if keep.state == ContainerState::Running
            && let Some(cmd) = spec.health_cmd.as_ref().filter(|c| !c.is_empty())
            && check_due(input, keep)
        {
            out.checks.push(Check { container: keep.container.clone(), cmd: cmd.clone() });
        }
    }

    for (service, slot) in out.assignment.on_peer(me) {
        let key = (service.to_string(), slot.clone());
        if here.contains_key(&(service, slot)) || input.starting.contains(&key) {
            continue;
        }
        let Some(current) = versions.get(service) else { continue };
        if let Some(f) = input.failures.get(&key)
            && &f.version == current
            && input.now_ms.saturating_sub(f.at_ms) < backoff_ms(f.count)
        {
            continue;
        }
        out.starts.push(start(service, slot, current));
    }
}

/// Why a replica of `spec` at `slot` is not wanted anywhere, if it is not.
fn unwanted(spec: &ServiceSpec, slot: &Slot) -> Option<StopReason> {
    match (spec.mode, slot) {
        (shoal_types::ServiceMode::Replicated, Slot::Index(i)) if *i >= spec.replicas => {
            Some(StopReason::ScaledDown { replicas: spec.replicas })
        }
        (shoal_types::ServiceMode::Replicated, Slot::Peer(_)) | (shoal_types::ServiceMode::Global, Slot::Index(_)) => {
            Some(StopReason::ModeChanged)
        }
        _ => None,
    }
}

/// The container to keep among several for one replica: current version, then not exited,
/// then the smallest id.
fn best<'a>(containers: &[&'a LocalReplica], current: &str) -> Option<&'a LocalReplica> {
    containers
        .iter()
        .copied()
        .min_by_key(|c| (c.version != current, c.state == ContainerState::Exited, c.container.as_str()))
}

/// The containers that duplicate the one [`best`] keeps, with the reason naming it.
fn duplicates<'a>(containers: &[&'a LocalReplica], current: &str) -> Vec<(&'a LocalReplica, StopReason)> {
    let kept = best(containers, current).map(|c| c.container.clone()).unwrap_or_default();
    containers
        .iter()
        .copied()
        .filter(|c| c.container != kept)
        .map(|c| (c, StopReason::Duplicate { kept: kept.clone() }))
        .collect()
}

/// Whether a health check of `c` is due: past the grace period, none running, the last one
/// at least [`CHECK_EVERY_MS`] ago.
fn check_due(input: &Input<'_>, c: &LocalReplica) -> bool {
    let h = input.health.get(&c.container).copied().unwrap_or_default();
    let past_grace = c.started_unix.is_some_and(|t| input.now_unix >= t + CHECK_GRACE_SECS);
    past_grace && !h.running && h.last_ms.is_none_or(|t| input.now_ms.saturating_sub(t) >= CHECK_EVERY_MS)
}

/// Wait before the next start after `count` failures in a row: 1 s doubling to 30 s.
pub fn backoff_ms(count: u32) -> u64 {
    (1000u64 << count.saturating_sub(1).min(5)).min(MAX_BACKOFF_MS)
}

#[cfg(test)]
mod tests;
