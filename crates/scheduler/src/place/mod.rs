//! Deterministic, sticky placement: which peer runs each replica of each service.
//!
//! Every peer runs [`place`] on its own copy of the service map, of the membership view and of
//! the replica reports that ride in peer records, and acts only on the replicas assigned to
//! itself (see [`crate::plan`]). There is no leader and no lock: agreement comes from
//! determinism. `place` is a pure function of the *sets* it is given (services, peers and
//! reports are sorted and de-duplicated first), so peers whose views agree compute the same
//! [`Assignment`], and every replica has exactly one owner.
//!
//! # The rule, in passes
//!
//! 1. **Held replicas stay** (stickiness). A replica that a peer reports ([`Report::holds`]) stays
//!    on that peer if the peer is alive, not draining, matches the service's constraints and
//!    still has room (services by name, replicas by slot). One whose only holder is still
//!    starting it (or failing to) keeps that holder too, but is placed in step 3 at its index,
//!    so that a start cannot change where the other fresh replicas go. A replica reported by several peers
//!    (each side of a healed partition ran one; a rebalance started a new copy) is decided after
//!    all singly-held ones, for the best holder: current version, then a live state, then the
//!    better spread (fewest replicas of the service on the peer and in its spread group), then
//!    the rendezvous weight.
//! 2. **Global services**: every alive, non-draining, matching peer without its replica gets one
//!    if it has room.
//! 3. **Fresh replicas** (nobody holds them: new, scaled up, or their peer died) go to the best
//!    *candidate*: a non-draining peer that matches the constraints, has room left and has not
//!    failed to start this replica [`crate::report::AVOID_AFTER`] times for a reason of its
//!    own (unless every candidate has). Best compares, in order: fewest replicas of this service
//!    on the peer; with `spread: Some(label)` peers with the label first, then the value holding
//!    the fewest replicas, then the value's rendezvous weight; the peer's rendezvous weight; the
//!    peer id.
//! 4. **Rebalance** (only for a service whose spec asks for it): up to `max_unavailable` replicas
//!    at a time (counting replicas whose owner does not run them yet) move from a peer where the
//!    spread would improve without them to the best candidate. The old peer keeps its copy until
//!    the new one runs (see [`crate::plan`]), and step 1 then prefers the better-spread copy.
//!
//! A replica is unplaced only when no candidate exists ([`Unplaced`] says why). Fewer matching
//! peers than replicas does *not* leave replicas unplaced: they share peers as long as the peers
//! have room. Spread is a preference and never leaves a replica unplaced.
//!
//! # Stability
//!
//! Held replicas never move unless a rule forces them (their peer died, drains, no longer
//! matches, or no longer has room), so a dead peer's return or a new peer's arrival moves
//! nothing: they only receive fresh replicas. Fresh replicas use rendezvous weights, so peers
//! whose views differ briefly (one has not heard of a failure yet) mostly still agree.
//!
//! # Cost
//!
//! Weights are `mix64(peer_seed ^ replica_key)`, where both seeds are BLAKE3 hashes computed
//! once per peer and once per replica, so the inner loop over peers does a few multiplications
//! instead of a hash; constraints and spread labels are resolved once per distinct pair. Placing
//! 10,000 fresh replicas on 1,000 peers scans 10 million (replica, peer) pairs; held replicas
//! cost one lookup each.

mod pool;

use crate::report::Report;
use pool::{Placer, Pool, Tally, replica_key};
use serde::{Deserialize, Serialize};
use shoal_types::{Resources, ServiceMode, ServiceSpec, Slot};
use std::collections::BTreeMap;
use std::fmt;

/// The most replicas placed for one service; a spec asking for more gets the excess reported as
/// [`Unplaced::TooManyReplicas`] (this bounds the work a single spec from a peer can cause).
pub const MAX_REPLICAS_PER_SERVICE: u32 = 10_000;
/// Most replicas placed on one peer (Kubernetes' default is 110 pods per node): what the
/// planner places is bounded by the number of peers, whatever the specs ask for.
pub const MAX_REPLICAS_PER_PEER: u32 = 1_000;
/// Most replicas of one service that carry the reason they are not placed (the rest show as
/// pending with no reason of their own).
pub const MAX_UNPLACED_PER_SERVICE: usize = 100;

/// What placement needs to know about a peer that is alive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerView {
    /// The peer's id.
    pub id: String,
    /// What replicas may reserve on the peer in total.
    pub capacity: Resources,
    /// The peer's labels, matched against service constraints and spread keys.
    pub labels: BTreeMap<String, String>,
    /// A draining peer receives no replicas.
    pub draining: bool,
}

/// A replica: service name and slot.
pub type ReplicaKey = (String, Slot);

/// The result of [`place`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Replica → id of the peer that runs it.
    pub placed: BTreeMap<ReplicaKey, String>,
    /// Replica → why no peer can run it.
    pub unplaced: BTreeMap<ReplicaKey, Unplaced>,
    /// Global services that no peer can run at all, and why.
    pub idle: BTreeMap<String, Unplaced>,
    /// Replicas that several peers hold (each side of a healed partition ran one, a crashed
    /// agent's containers outlived it, a rebalance started a new copy): the owner's copy is
    /// kept, the others are duplicates.
    pub contested: std::collections::BTreeSet<ReplicaKey>,
}

/// Why a replica has no peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaced {
    /// Every peer is gone or draining.
    NoPeers {
        /// Alive peers that are draining.
        draining: usize,
    },
    /// No alive, non-draining peer has the labels the service's constraints ask for.
    NoMatchingPeer {
        /// The service's constraints.
        constraints: BTreeMap<String, String>,
        /// Peers that match but are draining.
        draining: usize,
    },
    /// The reservation of one replica is larger than every matching peer's whole capacity.
    TooLarge {
        /// One replica's reservation.
        needs: Resources,
        /// The largest CPU and the largest memory capacity among matching peers (each a maximum
        /// on its own, possibly of different peers).
        largest: Resources,
        /// Number of matching peers.
        matching: usize,
    },
    /// Matching peers are big enough but already full with other replicas.
    Insufficient {
        /// One replica's reservation.
        needs: Resources,
        /// The most free CPU and the most free memory on a matching peer (each a maximum on its
        /// own, possibly of different peers).
        most_free: Resources,
        /// Number of matching peers.
        matching: usize,
    },
    /// Every matching peer already runs as many replicas as one peer may.
    PeersFull {
        /// [`MAX_REPLICAS_PER_PEER`].
        limit: u32,
        /// Number of matching peers.
        matching: usize,
    },
    /// The service asks for more replicas than one service may have.
    TooManyReplicas {
        /// Replicas asked for.
        asked: u32,
        /// [`MAX_REPLICAS_PER_SERVICE`].
        limit: u32,
    },
}

impl fmt::Display for Unplaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unplaced::NoPeers { draining: 0 } => write!(f, "no peer is alive to run it"),
            Unplaced::NoPeers { draining } => {
                write!(f, "no peer accepts work: all {draining} alive peers are draining")
            }
            Unplaced::NoMatchingPeer { constraints, draining } => {
                write!(f, "no peer matches the constraints `{}`", Constraints(constraints))?;
                if *draining > 0 {
                    write!(f, " ({draining} matching peers are draining)")?;
                }
                write!(f, ": label a peer to match or relax the constraints")
            }
            Unplaced::TooLarge { needs, largest, matching } => write!(
                f,
                "a replica reserves {needs}, more than any of the {matching} matching peers has in total (the largest \
                 have {} cpu and {}): lower the reservation or add a bigger peer",
                largest.cpus(),
                shoal_types::ByteSize(largest.memory_bytes)
            ),
            Unplaced::Insufficient { needs, most_free, matching } => write!(
                f,
                "not enough free CPU/memory on any of the {matching} matching peers: a replica reserves {needs}, the most \
                 free is {} cpu and {}",
                most_free.cpus(),
                shoal_types::ByteSize(most_free.memory_bytes)
            ),
            Unplaced::PeersFull { limit, matching } => write!(
                f,
                "all {matching} matching peers run {limit} replicas, the most one peer runs: add peers or lower replica counts"
            ),
            Unplaced::TooManyReplicas { asked, limit } => {
                write!(f, "the service asks for {asked} replicas; at most {limit} are placed")
            }
        }
    }
}

/// Shows constraints as `k=v, k2=v2`.
struct Constraints<'a>(&'a BTreeMap<String, String>);

impl fmt::Display for Constraints<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

impl Assignment {
    /// The peer that runs `slot` of `service`, if it is placed.
    pub fn owner(&self, service: &str, slot: &Slot) -> Option<&str> {
        self.placed.get(&(service.to_string(), slot.clone())).map(String::as_str)
    }

    /// The replicas assigned to `peer`, in (service, slot) order.
    pub fn on_peer<'a>(&'a self, peer: &'a str) -> impl Iterator<Item = (&'a str, &'a Slot)> + 'a {
        self.placed.iter().filter(move |(_, p)| p.as_str() == peer).map(|((s, i), _)| (s.as_str(), i))
    }

    /// The replicas of `service` that are placed, in slot order.
    pub fn of_service<'a>(&'a self, service: &'a str) -> impl Iterator<Item = (&'a Slot, &'a str)> + 'a {
        self.placed
            .range((service.to_string(), Slot::Index(0))..)
            .take_while(move |((s, _), _)| s == service)
            .map(|((_, slot), p)| (slot, p.as_str()))
    }

    /// The distinct reasons why replicas of `service` are unplaced, for `service ls`.
    pub fn reasons(&self, service: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let why = self
            .unplaced
            .range((service.to_string(), Slot::Index(0))..)
            .take_while(|((s, _), _)| s == service)
            .map(|(_, why)| why)
            .chain(self.idle.get(service));
        for why in why {
            let text = why.to_string();
            if !out.contains(&text) {
                out.push(text);
            }
        }
        out
    }
}

/// Places every replica of `services` (name, spec) on `peers`, keeping the replicas that
/// `reports` (from those peers) say are held where they are. See the module docs for the rule.
///
/// The result depends only on the sets given, not on their order. A name given twice keeps the
/// spec with the greater canonical encoding; a peer id given twice keeps the smaller view (by
/// `PeerView`'s order); reports from peers not in `peers` are ignored — none of this happens
/// with inputs from a [`crate::ServiceMap`] and a membership table, but the outcome must still
/// be the same on every peer.
pub fn place<'a>(
    services: impl IntoIterator<Item = (&'a str, &'a ServiceSpec)>,
    peers: &[PeerView],
    reports: impl IntoIterator<Item = &'a Report>,
) -> Assignment {
    let services = unique_services(services);
    let mut peers: Vec<&PeerView> = peers.iter().collect();
    peers.sort();
    peers.dedup_by(|later, kept| later.id == kept.id);
    let mut placer = Placer::new(&peers);

    // Reports by replica, each with its peer's index, one per peer; sorted so that nothing
    // depends on input order.
    let mut by_replica: BTreeMap<(&str, Slot), Vec<Claim<'_>>> = BTreeMap::new();
    for r in reports {
        if let Some(i) = placer.index(&r.peer) {
            by_replica.entry((r.service.as_str(), r.slot.clone())).or_default().push((i, r));
        }
    }
    for list in by_replica.values_mut() {
        list.sort_by(|a, b| (a.0, &a.1.version, a.1.state).cmp(&(b.0, &b.1.version, b.1.state)));
        list.dedup_by_key(|(i, _)| *i);
    }

    let mut pools: Pools<'_> = BTreeMap::new();
    for spec in services.values() {
        pools.entry((&spec.constraints, spec.spread.as_deref())).or_insert_with(|| placer.pool(spec));
    }
    let mut tallies: BTreeMap<&str, Tally> =
        services.iter().map(|(name, spec)| (*name, Tally::new(pool_of(&pools, spec)))).collect();
    let mut contested: Vec<(&str, u32, &[Claim<'_>])> = Vec::new();

    // 1. Held replicas stay: those with one candidate holder now, the contested ones after.
    for (&name, spec) in &services {
        let (pool, tally) = (pool_of(&pools, spec), tallies.get_mut(name).expect("a tally per service"));
        let needs = needs(spec);
        match spec.mode {
            ServiceMode::Global => {
                for &peer in &pool.eligible {
                    let slot = Slot::Peer(placer.id(peer).to_string());
                    let held = by_replica
                        .get(&(name, slot.clone()))
                        .is_some_and(|l| l.iter().any(|(i, r)| *i == peer && r.holds()));
                    if held && placer.room(peer, &needs) {
                        placer.take(name, slot, peer, needs, pool, tally);
                    }
                }
            }
            ServiceMode::Replicated => {
                for index in 0..replica_count(spec) {
                    let Some(list) = by_replica.get(&(name, Slot::Index(index))) else { continue };
                    let mut holders = list.iter().filter(|(i, r)| r.holds() && pool.is_eligible(*i));
                    match (holders.next(), holders.next()) {
                        // A start in progress (or failing) is placed with the fresh replicas.
                        (Some(&(_, r)), None) if r.is_tentative() => {}
                        (Some(&(peer, _)), None) if placer.room(peer, &needs) => {
                            placer.take(name, Slot::Index(index), peer, needs, pool, tally);
                        }
                        (Some(_), Some(_)) => contested.push((name, index, list)),
                        _ => {}
                    }
                }
            }
        }
    }
    for (name, index, list) in contested {
        placer.out.contested.insert((name.to_string(), Slot::Index(index)));
        let spec = services[name];
        let (pool, tally) = (pool_of(&pools, spec), tallies.get_mut(name).expect("a tally per service"));
        let current = crate::spec_version(spec);
        let key = replica_key(name, index);
        let best = list
            .iter()
            .filter(|(i, r)| r.holds() && pool.is_eligible(*i) && placer.room(*i, &needs(spec)))
            .min_by_key(|(i, r)| (r.version != current, !r.state.is_live(), placer.rank(*i, key, pool, tally)));
        if let Some(&(peer, _)) = best {
            placer.take(name, Slot::Index(index), peer, needs(spec), pool, tally);
        }
    }

    // 2. Global services: one on every eligible peer that has room.
    for (&name, spec) in services.iter().filter(|(_, s)| s.mode == ServiceMode::Global) {
        let (pool, tally) = (pool_of(&pools, spec), tallies.get_mut(name).expect("a tally per service"));
        if pool.eligible.is_empty() {
            let why = placer.nobody(spec, pool);
            placer.out.idle.insert(name.to_string(), why);
            continue;
        }
        for &peer in &pool.eligible {
            let slot = Slot::Peer(placer.id(peer).to_string());
            if placer.out.placed.contains_key(&(name.to_string(), slot.clone())) {
                continue;
            }
            if placer.room(peer, &needs(spec)) {
                placer.take(name, slot, peer, needs(spec), pool, tally);
            } else {
                let why = placer.no_room(needs(spec), &[peer]);
                placer.out.unplaced.insert((name.to_string(), slot), why);
            }
        }
    }

    // 3. Fresh replicas of replicated services.
    for (&name, spec) in services.iter().filter(|(_, s)| s.mode == ServiceMode::Replicated) {
        let (pool, tally) = (pool_of(&pools, spec), tallies.get_mut(name).expect("a tally per service"));
        if spec.replicas > MAX_REPLICAS_PER_SERVICE {
            placer.out.unplaced.insert(
                (name.to_string(), Slot::Index(MAX_REPLICAS_PER_SERVICE)),
                Unplaced::TooManyReplicas { asked: spec.replicas, limit: MAX_REPLICAS_PER_SERVICE },
            );
        }
        let avoided = |index: u32| -> Vec<usize> {
            by_replica
                .get(&(name, Slot::Index(index)))
                .map(|l| l.iter().filter(|(_, r)| r.avoids()).map(|(i, _)| *i).collect())
                .unwrap_or_default()
        };
        let pinned = |index: u32| -> Option<usize> {
            let list = by_replica.get(&(name, Slot::Index(index)))?;
            let mut holders = list.iter().filter(|(i, r)| r.holds() && pool.is_eligible(*i));
            match (holders.next(), holders.next()) {
                (Some(&(peer, r)), None) if r.is_tentative() => Some(peer),
                _ => None,
            }
        };
        placer.place_fresh(name, spec, pool, tally, avoided, pinned);
    }

    // 4. Rebalance on request.
    let rebalancing = services.iter().filter(|(_, s)| s.rebalance.is_some() && s.mode == ServiceMode::Replicated);
    for (&name, spec) in rebalancing {
        let (pool, tally) = (pool_of(&pools, spec), tallies.get_mut(name).expect("a tally per service"));
        let current = crate::spec_version(spec);
        let serves = |index: u32, peer: &str| {
            by_replica
                .get(&(name, Slot::Index(index)))
                .is_some_and(|l| l.iter().any(|(_, r)| r.peer == peer && r.serves(&current)))
        };
        placer.rebalance(name, spec, pool, tally, serves);
    }
    placer.out
}

/// A report with the index of its peer.
type Claim<'r> = (usize, &'r Report);

/// Services with the same constraints and spread label share one pool of peers.
type Pools<'s> = BTreeMap<(&'s BTreeMap<String, String>, Option<&'s str>), Pool>;

fn pool_of<'m, 's>(pools: &'m Pools<'s>, spec: &'s ServiceSpec) -> &'m Pool {
    pools.get(&(&spec.constraints, spec.spread.as_deref())).expect("a pool for every service")
}

/// Replicas placed for a replicated service.
fn replica_count(spec: &ServiceSpec) -> u32 {
    spec.replicas.min(MAX_REPLICAS_PER_SERVICE)
}

/// One replica's reservation.
fn needs(spec: &ServiceSpec) -> Resources {
    Resources::new(spec.cpus_milli, spec.memory_bytes)
}

/// Sorted by name, one spec per name, chosen independently of input order.
fn unique_services<'a>(
    services: impl IntoIterator<Item = (&'a str, &'a ServiceSpec)>,
) -> BTreeMap<&'a str, &'a ServiceSpec> {
    let mut map: BTreeMap<&str, &ServiceSpec> = BTreeMap::new();
    for (name, spec) in services {
        match map.get(name) {
            Some(kept) if *kept == spec || encode(kept) >= encode(spec) => {}
            _ => {
                map.insert(name, spec);
            }
        }
    }
    map
}

fn encode(spec: &ServiceSpec) -> Vec<u8> {
    postcard::to_stdvec(spec).expect("a ServiceSpec always serialises")
}

#[cfg(test)]
mod tests;
