//! Deterministic placement: which peer runs each replica of each service.
//!
//! Every peer runs [`place`] on its own copy of the service map and of the membership view, and
//! acts only on the replicas assigned to itself (see [`crate::reconcile`]). There is no leader
//! and no lock: agreement comes from determinism. `place` is a pure function of the *sets* of
//! services and peers (both are sorted and de-duplicated first), so peers whose views agree
//! compute the same [`Assignment`], and every replica has exactly one owner.
//!
//! # The rule
//!
//! Services are taken by name, replicas by index, and each replica goes to the best *candidate*:
//! a peer that is not draining, has every `key=value` label of the service's constraints and
//! still has the replica's reservation (`cpus_milli`, `memory_bytes`) free after the replicas
//! placed before it. "Best" compares, in order:
//!
//! 1. fewest replicas of this service already on the peer, so replicas land on distinct peers
//!    while there are enough candidates and share peers evenly once there are not;
//! 2. with `spread: Some(label)`: peers that have the label before peers without it, then the
//!    label value holding the fewest replicas of the service so far, then the value with the
//!    highest rendezvous weight for this replica;
//! 3. the highest rendezvous (highest-random-weight) weight of (service, replica, peer);
//! 4. the peer id, only if two weights collide.
//!
//! A replica is unplaced only when no candidate exists ([`Unplaced`] says why). In particular,
//! fewer matching peers than replicas does *not* leave replicas unplaced: they share peers, as
//! long as the peers have room. Spread is a preference and never leaves a replica unplaced.
//!
//! # Stability
//!
//! Rendezvous weights make a replica's choice depend on the peers themselves, not on their
//! number or order: removing a peer moves the replicas it held to their next-best peer and
//! leaves the others where they were; adding a peer takes only the replicas for which it now has
//! the highest weight. Choosing the spread value by its own rendezvous weight (rather than by the
//! best peer in it) keeps a replica in its zone when one peer of the zone goes. Knock-on moves
//! remain when a moved replica fills a peer that a later replica wanted, or takes a peer that a
//! later replica of the same service held; `tests/sim.rs` measures them.
//!
//! # Cost
//!
//! Weights are `mix64(peer_seed ^ replica_key)`, where both seeds are BLAKE3 hashes computed
//! once per peer and once per replica, so the inner loop over peers does a few multiplications
//! instead of a hash; constraints and spread labels are resolved once per distinct pair. Placing
//! 10,000 replicas on 1,000 peers scans 10 million (replica, peer) pairs.

use serde::{Deserialize, Serialize};
use shoal_types::{Resources, ServiceSpec};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;

/// The most replicas placed for one service; a spec asking for more gets the excess reported as
/// [`Unplaced::TooManyReplicas`] (this bounds the work a single spec from a peer can cause).
pub const MAX_REPLICAS_PER_SERVICE: u32 = 10_000;

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

/// A replica: service name and 0-based index.
pub type ReplicaKey = (String, u32);

/// The result of [`place`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Replica → id of the peer that runs it.
    pub placed: BTreeMap<ReplicaKey, String>,
    /// Replica → why no peer can run it.
    pub unplaced: BTreeMap<ReplicaKey, Unplaced>,
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
    /// The peer that runs replica `index` of `service`, if it is placed.
    pub fn owner(&self, service: &str, index: u32) -> Option<&str> {
        self.placed.get(&(service.to_string(), index)).map(String::as_str)
    }

    /// The replicas assigned to `peer`, in (service, index) order.
    pub fn on_peer<'a>(&'a self, peer: &'a str) -> impl Iterator<Item = (&'a str, u32)> + 'a {
        self.placed.iter().filter(move |(_, p)| p.as_str() == peer).map(|((s, i), _)| (s.as_str(), *i))
    }

    /// The distinct reasons why replicas of `service` are unplaced, for `service ls`.
    pub fn reasons(&self, service: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, why) in self.unplaced.range((service.to_string(), 0)..=(service.to_string(), u32::MAX)) {
            let text = why.to_string();
            if !out.contains(&text) {
                out.push(text);
            }
        }
        out
    }
}

/// Places every replica of `services` (name, spec) on `peers`. See the module docs for the rule.
///
/// The result depends only on the sets given, not on their order. A name given twice keeps the
/// spec with the greater canonical encoding; a peer id given twice keeps the smaller view (by
/// `PeerView`'s order) — neither happens with inputs from a [`crate::ServiceMap`] and a
/// membership table, but the outcome must still be the same on every peer.
pub fn place<'a>(services: impl IntoIterator<Item = (&'a str, &'a ServiceSpec)>, peers: &[PeerView]) -> Assignment {
    let services = unique_services(services);
    let mut peers: Vec<&PeerView> = peers.iter().collect();
    peers.sort();
    peers.dedup_by(|later, kept| later.id == kept.id);

    let seeds: Vec<u64> =
        peers.iter().map(|p| seed("shoal-scheduler 2025 placement peer v1", &[p.id.as_bytes()])).collect();
    let mut free: Vec<Resources> = peers.iter().map(|p| p.capacity).collect();
    let active: Vec<usize> = (0..peers.len()).filter(|&i| !peers[i].draining).collect();

    let ctx = Ctx { peers: &peers, seeds: &seeds, active: &active };
    // Services with the same constraints and spread label share their pool of peers.
    let mut pools: BTreeMap<(&BTreeMap<String, String>, Option<&str>), Pool> = BTreeMap::new();
    let mut out = Assignment::default();
    for (name, spec) in services {
        let pool = pools.entry((&spec.constraints, spec.spread.as_deref())).or_insert_with(|| ctx.pool(spec));
        ctx.place_service(name, spec, pool, &mut free, &mut out);
    }
    out
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

/// What every service's placement shares.
struct Ctx<'p> {
    /// Sorted, unique by id.
    peers: &'p [&'p PeerView],
    /// Rendezvous seed per peer.
    seeds: &'p [u64],
    /// Indices of the peers that are not draining.
    active: &'p [usize],
}

/// The peers services with given constraints and spread label may use.
struct Pool {
    /// Indices (into the sorted peers) of the non-draining peers that match the constraints.
    eligible: Vec<usize>,
    /// Peers that match but are draining.
    draining: usize,
    /// Per eligible peer, the index of its value of the spread label, if it has one.
    group_of: Vec<Option<usize>>,
    /// Per spread value, its rendezvous seed.
    group_seeds: Vec<u64>,
}

/// One candidate's rank for a replica; the smallest wins.
type Rank = (u32, bool, u32, Reverse<u64>, Reverse<u64>, usize);

impl Ctx<'_> {
    fn place_service(&self, name: &str, spec: &ServiceSpec, pool: &Pool, free: &mut [Resources], out: &mut Assignment) {
        let count = spec.replicas.min(MAX_REPLICAS_PER_SERVICE);
        if spec.replicas > MAX_REPLICAS_PER_SERVICE {
            out.unplaced.insert(
                (name.to_string(), MAX_REPLICAS_PER_SERVICE),
                Unplaced::TooManyReplicas { asked: spec.replicas, limit: MAX_REPLICAS_PER_SERVICE },
            );
        }
        if count == 0 {
            return;
        }
        let needs = Resources::new(spec.cpus_milli, spec.memory_bytes);
        let Pool { eligible, draining, group_of, group_seeds } = pool;
        if eligible.is_empty() {
            let why = if self.active.is_empty() {
                Unplaced::NoPeers { draining: *draining }
            } else {
                Unplaced::NoMatchingPeer { constraints: spec.constraints.clone(), draining: *draining }
            };
            for index in 0..count {
                out.unplaced.insert((name.to_string(), index), why.clone());
            }
            return;
        }

        let mut group_count = vec![0u32; group_seeds.len()];
        let mut group_weight = vec![0u64; group_seeds.len()];
        // Replicas of this service per eligible peer (by position in `eligible`).
        let mut hosted = vec![0u32; eligible.len()];

        for index in 0..count {
            let key = replica_key(name, index);
            for (w, s) in group_weight.iter_mut().zip(group_seeds) {
                *w = mix64(s ^ key);
            }
            let mut best: Option<(Rank, usize)> = None;
            for (pos, &peer) in eligible.iter().enumerate() {
                if !free[peer].fits(&needs) {
                    continue;
                }
                let (no_label, g_count, g_weight) = match group_of[pos] {
                    Some(g) => (false, group_count[g], group_weight[g]),
                    None => (true, 0, 0),
                };
                let rank: Rank =
                    (hosted[pos], no_label, g_count, Reverse(g_weight), Reverse(mix64(self.seeds[peer] ^ key)), peer);
                if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                    best = Some((rank, pos));
                }
            }
            let Some((_, pos)) = best else {
                // Free space only shrinks, so no later replica of this service fits either.
                let why = self.no_room(needs, eligible, free);
                for later in index..count {
                    out.unplaced.insert((name.to_string(), later), why.clone());
                }
                return;
            };
            let peer = eligible[pos];
            free[peer] = free[peer].saturating_sub(&needs);
            hosted[pos] += 1;
            if let Some(g) = group_of[pos] {
                group_count[g] += 1;
            }
            out.placed.insert((name.to_string(), index), self.peers[peer].id.clone());
        }
    }

    /// The pool of `spec`'s constraints and spread label.
    fn pool(&self, spec: &ServiceSpec) -> Pool {
        let matches = |p: &PeerView| spec.constraints.iter().all(|(k, v)| p.labels.get(k) == Some(v));
        let eligible: Vec<usize> = self.active.iter().copied().filter(|&i| matches(self.peers[i])).collect();
        let draining = self.peers.iter().filter(|p| p.draining && matches(p)).count();
        let Some(label) = spec.spread.as_deref() else {
            return Pool { group_of: vec![None; eligible.len()], group_seeds: Vec::new(), eligible, draining };
        };
        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut group_seeds = Vec::new();
        let group_of = eligible
            .iter()
            .map(|&i| {
                let value = self.peers[i].labels.get(label)?;
                Some(*ids.entry(value.as_str()).or_insert_with(|| {
                    group_seeds
                        .push(seed("shoal-scheduler 2025 placement spread v1", &[label.as_bytes(), value.as_bytes()]));
                    group_seeds.len() - 1
                }))
            })
            .collect();
        Pool { eligible, draining, group_of, group_seeds }
    }

    /// Why no eligible peer can take a replica reserving `needs`.
    fn no_room(&self, needs: Resources, eligible: &[usize], free: &[Resources]) -> Unplaced {
        let max = |f: &dyn Fn(usize) -> Resources| {
            eligible.iter().fold(Resources::ZERO, |m, &i| {
                let r = f(i);
                Resources::new(m.millicpus.max(r.millicpus), m.memory_bytes.max(r.memory_bytes))
            })
        };
        if eligible.iter().any(|&i| self.peers[i].capacity.fits(&needs)) {
            Unplaced::Insufficient { needs, most_free: max(&|i| free[i]), matching: eligible.len() }
        } else {
            Unplaced::TooLarge { needs, largest: max(&|i| self.peers[i].capacity), matching: eligible.len() }
        }
    }
}

/// The rendezvous key of one replica.
fn replica_key(service: &str, index: u32) -> u64 {
    seed("shoal-scheduler 2025 placement replica v1", &[service.as_bytes(), &index.to_le_bytes()])
}

/// 64 bits of a keyed BLAKE3 hash of length-prefixed `parts`.
fn seed(domain: &str, parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new_derive_key(domain);
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let hash = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// SplitMix64's finaliser: a bijection with full avalanche, so `mix64(seed ^ key)` behaves as an
/// independent random weight per (peer, replica) when seeds and keys are themselves random.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn encode(spec: &ServiceSpec) -> Vec<u8> {
    postcard::to_stdvec(spec).expect("a ServiceSpec always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, cpus: u64, mem: u64, labels: &[(&str, &str)]) -> PeerView {
        PeerView {
            id: id.into(),
            capacity: Resources::new(cpus, mem),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            draining: false,
        }
    }

    fn svc(name: &str, replicas: u32, cpus: u64, mem: u64) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            image: "img".into(),
            replicas,
            cpus_milli: cpus,
            memory_bytes: mem,
            max_unavailable: 1,
            ..Default::default()
        }
    }

    fn run(services: &[ServiceSpec], peers: &[PeerView]) -> Assignment {
        place(services.iter().map(|s| (s.name.as_str(), s)), peers)
    }

    #[test]
    fn replicas_go_to_distinct_peers_then_share() {
        let peers: Vec<_> = (0..3).map(|i| peer(&format!("p{i}"), 4000, 1 << 30, &[])).collect();
        let a = run(&[svc("web", 3, 100, 0)], &peers);
        let mut used: Vec<_> = a.placed.values().collect();
        used.sort();
        used.dedup();
        assert_eq!(used.len(), 3);
        let a = run(&[svc("web", 7, 100, 0)], &peers);
        assert!(a.unplaced.is_empty(), "fewer peers than replicas shares peers");
        let mut per_peer = BTreeMap::new();
        for p in a.placed.values() {
            *per_peer.entry(p).or_insert(0) += 1;
        }
        assert!(per_peer.values().all(|&n| n == 2 || n == 3), "{per_peer:?}");
    }

    #[test]
    fn spread_balances_over_label_values_and_puts_unlabelled_peers_last() {
        let mut peers = Vec::new();
        for zone in ["a", "b", "c"] {
            for i in 0..5 {
                peers.push(peer(&format!("{zone}{i}"), 4000, 1 << 30, &[("zone", zone)]));
            }
        }
        for i in 0..20 {
            peers.push(peer(&format!("x{i}"), 4000, 1 << 30, &[]));
        }
        let mut s = svc("web", 9, 100, 0);
        s.spread = Some("zone".into());
        let a = run(std::slice::from_ref(&s), &peers);
        for zone in ["a", "b", "c"] {
            assert_eq!(a.placed.values().filter(|p| p.starts_with(zone)).count(), 3, "{a:?}");
        }
        s.replicas = 17;
        let a = run(&[s], &peers);
        assert_eq!(a.placed.values().filter(|p| p.starts_with('x')).count(), 2, "labelled peers first");
    }

    #[test]
    fn reasons_for_unplaced_replicas() {
        let mut peers = vec![peer("p1", 2000, 1 << 30, &[("region", "us")]), peer("p2", 1000, 4 << 30, &[])];
        let mut eu = svc("eu", 1, 0, 0);
        eu.constraints.insert("region".into(), "eu".into());
        let big = svc("big", 1, 4000, 0);
        let full = svc("full", 4, 1000, 1 << 30);
        let a = run(&[eu, big, full], &peers);
        let why = |s: &str, i: u32| a.unplaced.get(&(s.to_string(), i)).map(|u| u.to_string()).unwrap_or_default();
        assert!(why("eu", 0).contains("`region=eu`"), "{}", why("eu", 0));
        assert!(matches!(a.unplaced.get(&("big".to_string(), 0)), Some(Unplaced::TooLarge { .. })));
        assert!(why("big", 0).contains("4 cpu"), "{}", why("big", 0));
        // "full" fits 2000m on p1 (1 GiB only once) and 1000m on p2: 2 placed, 2 unplaced.
        assert_eq!(a.placed.keys().filter(|(s, _)| s == "full").count(), 2);
        assert!(matches!(a.unplaced.get(&("full".to_string(), 2)), Some(Unplaced::Insufficient { .. })));
        assert!(why("full", 3).starts_with("not enough free"), "{}", why("full", 3));
        assert_eq!(a.reasons("full").len(), 1);

        for p in &mut peers {
            p.draining = true;
        }
        let a = run(&[svc("web", 1, 0, 0)], &peers);
        assert_eq!(a.unplaced.get(&("web".to_string(), 0)), Some(&Unplaced::NoPeers { draining: 2 }));
        assert!(run(&[svc("web", 1, 0, 0)], &[]).placed.is_empty());
    }

    #[test]
    fn too_many_replicas_are_capped() {
        let a = run(&[svc("huge", u32::MAX, 0, 0)], &[peer("p", 1, 1, &[])]);
        assert_eq!(a.placed.len(), MAX_REPLICAS_PER_SERVICE as usize);
        assert!(matches!(a.unplaced.values().next(), Some(Unplaced::TooManyReplicas { .. })));
    }

    #[test]
    fn duplicate_inputs_do_not_depend_on_order() {
        let p1 = peer("p", 1000, 1, &[]);
        let p2 = peer("p", 2000, 1, &[]);
        let s1 = svc("web", 1, 1500, 0);
        let mut s2 = s1.clone();
        s2.image = "other".into();
        let x = place([("web", &s1), ("web", &s2)], &[p1.clone(), p2.clone()]);
        let y = place([("web", &s2), ("web", &s1)], &[p2, p1]);
        assert_eq!(x, y);
    }

    #[test]
    fn removing_a_peer_moves_only_its_replicas_when_there_is_room() {
        // One replica each, so no sibling can be displaced (tests/place.rs covers the general case).
        let peers: Vec<_> = (0..20).map(|i| peer(&format!("p{i:02}"), 64_000, 1 << 40, &[])).collect();
        let services: Vec<_> = (0..60).map(|i| svc(&format!("s{i}"), 1, 100, 0)).collect();
        let before = run(&services, &peers);
        let gone = "p07";
        let rest: Vec<_> = peers.iter().filter(|p| p.id != gone).cloned().collect();
        let after = run(&services, &rest);
        for (k, p) in &before.placed {
            if p != gone {
                assert_eq!(after.placed.get(k), Some(p), "{k:?} moved although its peer stayed");
            }
        }
    }
}
