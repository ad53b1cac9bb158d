//! Shoal's scheduler: pure logic that turns the replicated desired state into what one peer runs.
//!
//! Three steps, each a pure function of its inputs (no I/O, no clock reads, no randomness):
//!
//! 1. [`crdt`]: the desired state is a [`ServiceMap`], a CRDT every peer holds a copy of. Local
//!    edits are stamped by a hybrid logical [`Clock`]; copies from peers are merged, and copies
//!    that saw the same edits are equal.
//! 2. [`place`]: every peer computes the same [`Assignment`] of replicas to peers from the live
//!    services and the alive peers it knows, with rendezvous hashing so that membership changes
//!    move few replicas.
//! 3. [`reconcile`]: each peer compares its share of the assignment with the containers it runs
//!    and gets the [`Action`]s to start and stop.
//!
//! The node crate owns the state, the clock and the membership view, and feeds them in; `DESIGN.md`
//! beside this crate argues why the peers converge. [`synth`] builds random clusters for the
//! simulation tests and the benchmark suite.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod autoscale;
pub mod crdt;
pub mod hlc;
pub mod place;
pub mod reconcile;
pub mod synth;

pub use crdt::{DecodeError, Entry, ServiceMap, WIRE_FORMAT};
pub use hlc::{Clock, ClockError, Hlc, HlcParseError};
pub use place::{Assignment, MAX_REPLICAS_PER_SERVICE, PeerView, ReplicaKey, Unplaced, place};
pub use reconcile::{Action, Running, StopReason, reconcile, spec_version};
