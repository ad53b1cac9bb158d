//! What a peer says about the replicas it runs (or failed to start): the planner's view of
//! where work is, and the reason a user sees when a replica is not running.
//!
//! Every peer publishes its [`Report`]s in its signed peer record; every peer plans from the
//! reports of all live peers. Reports are what makes placement *sticky*: a replica that a live,
//! fitting peer reports keeps that peer (see [`crate::place`]).

use shoal_types::Slot;
use std::fmt;

/// Consecutive failed starts, for a reason of the peer's own, after which the peer is avoided
/// for that replica (another peer gets it).
pub const AVOID_AFTER: u32 = 3;

/// The state of one replica on the peer that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplicaState {
    /// Being started (image pulled, container created), not running yet.
    Starting,
    /// Running (and, if it has a health check, not failing it).
    Running,
    /// Between crashes; its supervisor restarts it.
    Restarting,
    /// Failing its health check; its peer replaces it.
    Unhealthy,
    /// Exited for good; its peer replaces it.
    Exited,
    /// The last start failed (see [`Report::fault`]).
    Failed,
}

impl ReplicaState {
    /// The word `service ps` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Starting => "starting",
            ReplicaState::Running => "running",
            ReplicaState::Restarting => "restarting",
            ReplicaState::Unhealthy => "unhealthy",
            ReplicaState::Exited => "exited",
            ReplicaState::Failed => "failed",
        }
    }

    /// The inverse of [`ReplicaState::as_str`].
    pub fn parse(s: &str) -> Option<ReplicaState> {
        Some(match s {
            "starting" => ReplicaState::Starting,
            "running" => ReplicaState::Running,
            "restarting" => ReplicaState::Restarting,
            "unhealthy" => ReplicaState::Unhealthy,
            "exited" => ReplicaState::Exited,
            "failed" => ReplicaState::Failed,
            _ => return None,
        })
    }

    /// Running, starting or between restarts: serving or about to.
    pub fn is_live(self) -> bool {
        matches!(self, ReplicaState::Starting | ReplicaState::Running | ReplicaState::Restarting)
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a start failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fault {
    /// The cause is this peer's own (a port taken here, a broken disk): another peer may do
    /// better. `false` when no peer would (no peer has the image, the spec cannot run).
    pub local: bool,
    /// What went wrong, in words for the user.
    pub message: String,
}

/// One replica as the peer that has it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Report {
    /// The reporting peer's id.
    pub peer: String,
    /// Service name.
    pub service: String,
    /// Which replica.
    pub slot: Slot,
    /// The version of the spec it runs ([`crate::spec_version`]).
    pub version: String,
    /// How it is doing.
    pub state: ReplicaState,
    /// Restarts by its supervisor so far.
    pub restarts: u32,
    /// CPU it used lately, millicores.
    pub cpu_milli: u64,
    /// Consecutive failed starts at `version` (with `state == Failed`).
    pub failures: u32,
    /// Why the last start failed, when it did.
    pub fault: Option<Fault>,
    /// Its container's id (empty before one exists).
    pub container: String,
    /// Its address on its peer's bridge.
    pub ip: Option<String>,
    /// When it started, seconds since the epoch.
    pub started_unix: Option<u64>,
}

impl Report {
    /// Whether the replica stays on this peer (placement is sticky): everything but a start
    /// that keeps failing for a reason of the peer's own.
    pub fn holds(&self) -> bool {
        !self.avoids()
    }

    /// Whether the peer should be avoided for this replica: its starts failed
    /// [`AVOID_AFTER`] times in a row at this version, for a reason another peer may not have.
    pub fn avoids(&self) -> bool {
        self.state == ReplicaState::Failed
            && self.failures >= AVOID_AFTER
            && self.fault.as_ref().is_some_and(|f| f.local)
    }

    /// A claim not yet backed by a container that ran: a start in progress, or one that failed.
    pub fn is_tentative(&self) -> bool {
        matches!(self.state, ReplicaState::Starting | ReplicaState::Failed)
    }

    /// Running at `version`: what rolling updates and handoffs wait for.
    pub fn serves(&self, version: &str) -> bool {
        self.state == ReplicaState::Running && self.version == version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_avoidance_needs_a_local_fault() {
        for s in [
            ReplicaState::Starting,
            ReplicaState::Running,
            ReplicaState::Restarting,
            ReplicaState::Unhealthy,
            ReplicaState::Exited,
            ReplicaState::Failed,
        ] {
            assert_eq!(ReplicaState::parse(s.as_str()), Some(s));
        }
        let mut r = Report {
            peer: "p".into(),
            service: "web".into(),
            slot: Slot::Index(0),
            version: "v".into(),
            state: ReplicaState::Failed,
            restarts: 0,
            cpu_milli: 0,
            failures: AVOID_AFTER,
            fault: Some(Fault { local: false, message: "no peer has the image".into() }),
            container: String::new(),
            ip: None,
            started_unix: None,
        };
        assert!(r.holds(), "a cluster-wide cause does not move the replica");
        r.fault = Some(Fault { local: true, message: "port 80 in use".into() });
        assert!(r.avoids());
        r.failures = AVOID_AFTER - 1;
        assert!(r.holds());
    }
}
