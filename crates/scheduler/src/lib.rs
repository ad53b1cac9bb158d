//! Shoal's scheduler: pure logic that turns the replicated desired state into what one peer runs.
//!
//! Each step is a pure function of its inputs (no I/O, no clock reads, no randomness):
//!
//! 1. [`crdt`]: the desired state is a [`ServiceMap`], a CRDT every peer holds a copy of. Local
//!    edits are stamped by a hybrid logical [`Clock`]; copies from peers are merged, and copies
//!    that saw the same edits are equal.
//! 2. [`place`]: every peer computes the same [`Assignment`] of replicas to peers from the live
//!    services, the alive peers it knows and the replicas they report ([`report`]): held
//!    replicas stay where they are (sticky), new ones go by rendezvous hashing.
//! 3. [`plan`]: one round of one peer: the assignment, this peer's stops and starts, health
//!    checks due, and the rewrites of desired state it makes ([`rollout`]: rolling updates,
//!    rollback, autoscaling).
//!
//! The services actor (`crates/services`) owns the state, the clock and the effects, and feeds
//! them in; `DESIGN.md` beside this crate argues why the peers converge without a leader.
//! [`sim`] runs many peers, each with its own (possibly stale) view, on a virtual clock, and
//! [`synth`] builds random clusters for it and for the benchmarks.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod autoscale;
pub mod crdt;
pub mod hlc;
pub mod place;
pub mod plan;
pub mod report;
pub mod rollout;
pub mod sim;
pub mod synth;
pub mod trust;

pub use crdt::{DecodeError, Entry, MAX_REVOCATIONS, ServiceMap, WIRE_FORMAT, WIRE_FORMAT_UNSEALED};
pub use hlc::{Clock, ClockError, Hlc, HlcParseError};
pub use place::{
    Assignment, MAX_REPLICAS_PER_PEER, MAX_REPLICAS_PER_SERVICE, MAX_UNPLACED_PER_SERVICE, PeerView, ReplicaKey,
    Unplaced, place,
};
pub use plan::{Check, Health, Input, LocalReplica, Plan, Start, StartFailure, Stop, StopReason, plan, spec_version};
pub use report::{Fault, ReplicaState, Report};
pub use rollout::{Now, Write, WriteReason};
pub use trust::{Authority, Revocation, Seal, Trust, TrustError, Writer};
