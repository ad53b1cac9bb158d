//! The machinery behind [`super::place`]: the sorted peers with their rendezvous seeds and free
//! room ([`Placer`]), the peers a service may use ([`Pool`]), how many replicas of a service
//! each of them holds so far ([`Tally`]), and the ranking of candidates.

use super::{Assignment, Unplaced, replica_count};
use crate::place::PeerView;
use shoal_types::{Resources, ServiceSpec, Slot};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

/// Peers, their seeds and free room, and the assignment being built.
pub(super) struct Placer<'p> {
    /// Sorted, unique by id.
    peers: &'p [&'p PeerView],
    /// Peer id → index into `peers`.
    index_of: HashMap<&'p str, usize>,
    /// Rendezvous seed per peer.
    seeds: Vec<u64>,
    /// Indices of the peers that are not draining.
    active: Vec<usize>,
    /// Room left per peer.
    pub(super) free: Vec<Resources>,
    /// Replicas placed per peer (at most [`super::MAX_REPLICAS_PER_PEER`]).
    count: Vec<u32>,
    /// The result so far.
    pub(super) out: Assignment,
}

/// The peers services with given constraints and spread label may use.
pub(super) struct Pool {
    /// Indices (into the sorted peers) of the non-draining peers that match the constraints.
    pub(super) eligible: Vec<usize>,
    /// Peer index → position in `eligible` (`u32::MAX` when not eligible).
    pos_of: Vec<u32>,
    /// Peers that match but are draining.
    draining: usize,
    /// Per eligible position, the index of its value of the spread label, if it has one.
    group_of: Vec<Option<usize>>,
    /// Per spread value, its rendezvous seed.
    group_seeds: Vec<u64>,
}

impl Pool {
    /// Whether peer `i` may run the pool's services.
    pub(super) fn is_eligible(&self, i: usize) -> bool {
        self.pos_of.get(i).is_some_and(|&p| p != u32::MAX)
    }

    fn pos(&self, i: usize) -> usize {
        self.pos_of[i] as usize
    }
}

/// Replicas of one service so far, per eligible peer and per spread value.
pub(super) struct Tally {
    hosted: Vec<u32>,
    group_count: Vec<u32>,
}

impl Tally {
    pub(super) fn new(pool: &Pool) -> Tally {
        Tally { hosted: vec![0; pool.eligible.len()], group_count: vec![0; pool.group_seeds.len()] }
    }

    fn add(&mut self, pool: &Pool, peer: usize, delta: i32) {
        let pos = pool.pos(peer);
        self.hosted[pos] = self.hosted[pos].saturating_add_signed(delta);
        if let Some(g) = pool.group_of[pos] {
            self.group_count[g] = self.group_count[g].saturating_add_signed(delta);
        }
    }
}

/// One candidate's rank for a replica; the smallest wins: replicas of the service on the peer,
/// no spread label, replicas in its spread value, the value's weight, the peer's weight, index.
pub(super) type Rank = (u32, bool, u32, Reverse<u64>, Reverse<u64>, usize);

impl<'p> Placer<'p> {
    pub(super) fn new(peers: &'p [&'p PeerView]) -> Placer<'p> {
        Placer {
            peers,
            index_of: peers.iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect(),
            seeds: peers.iter().map(|p| seed("shoal-scheduler 2025 placement peer v1", &[p.id.as_bytes()])).collect(),
            active: (0..peers.len()).filter(|&i| !peers[i].draining).collect(),
            free: peers.iter().map(|p| p.capacity).collect(),
            count: vec![0; peers.len()],
            out: Assignment::default(),
        }
    }

    /// The index of the peer with id `id`.
    pub(super) fn index(&self, id: &str) -> Option<usize> {
        self.index_of.get(id).copied()
    }

    /// The id of peer `i`.
    pub(super) fn id(&self, i: usize) -> &'p str {
        &self.peers[i].id
    }

    /// The pool of `spec`'s constraints and spread label.
    pub(super) fn pool(&self, spec: &ServiceSpec) -> Pool {
        let matches = |p: &PeerView| spec.constraints.iter().all(|(k, v)| p.labels.get(k) == Some(v));
        let eligible: Vec<usize> = self.active.iter().copied().filter(|&i| matches(self.peers[i])).collect();
        let mut pos_of = vec![u32::MAX; self.peers.len()];
        for (pos, &i) in eligible.iter().enumerate() {
            pos_of[i] = pos as u32;
        }
        let draining = self.peers.iter().filter(|p| p.draining && matches(p)).count();
        let Some(label) = spec.spread.as_deref() else {
            return Pool { group_of: vec![None; eligible.len()], group_seeds: Vec::new(), eligible, pos_of, draining };
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
        Pool { eligible, pos_of, draining, group_of, group_seeds }
    }

    /// Assigns `slot` of `name` to peer `peer` and books its room.
    pub(super) fn take(
        &mut self,
        name: &str,
        slot: Slot,
        peer: usize,
        needs: Resources,
        pool: &Pool,
        tally: &mut Tally,
    ) {
        self.free[peer] = self.free[peer].saturating_sub(&needs);
        self.count[peer] += 1;
        tally.add(pool, peer, 1);
        self.out.placed.insert((name.to_string(), slot), self.peers[peer].id.clone());
    }

    /// Whether one more replica reserving `needs` fits on `peer`: its free CPU and memory, and
    /// its replica count under [`super::MAX_REPLICAS_PER_PEER`] (so what the planner places is
    /// bounded by the cluster's size, whatever replica counts the specs ask for).
    pub(super) fn room(&self, peer: usize, needs: &Resources) -> bool {
        self.free[peer].fits(needs) && self.count[peer] < super::MAX_REPLICAS_PER_PEER
    }

    /// Peer `peer`'s rank for the replica with rendezvous key `key`.
    pub(super) fn rank(&self, peer: usize, key: u64, pool: &Pool, tally: &Tally) -> Rank {
        let pos = pool.pos(peer);
        let (no_label, g_count, g_weight) = match pool.group_of[pos] {
            Some(g) => (false, tally.group_count[g], mix64(pool.group_seeds[g] ^ key)),
            None => (true, 0, 0),
        };
        (tally.hosted[pos], no_label, g_count, Reverse(g_weight), Reverse(mix64(self.seeds[peer] ^ key)), peer)
    }

    /// The best eligible peer with room for `needs`, preferring peers not in `avoid` (they are
    /// taken only when no other peer has room).
    fn best(&self, pool: &Pool, tally: &Tally, key: u64, needs: &Resources, avoid: &[usize]) -> Option<usize> {
        let pick = |allow_avoided: bool| {
            let mut best: Option<(Rank, usize)> = None;
            for &peer in &pool.eligible {
                if !self.room(peer, needs) || (!allow_avoided && avoid.contains(&peer)) {
                    continue;
                }
                let rank = self.rank(peer, key, pool, tally);
                if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                    best = Some((rank, peer));
                }
            }
            best.map(|(_, p)| p)
        };
        pick(false).or_else(|| if avoid.is_empty() { None } else { pick(true) })
    }

    /// Places the replicas of `name` that nothing holds yet (see the module docs); `avoided`
    /// gives, per index, the peers that keep failing to start it, and `pinned` the peer whose
    /// start of it is in progress: that peer keeps it, at its index in this pass, so the other
    /// fresh replicas get the owners they had before any start (what peers that have not heard
    /// of the start yet compute).
    pub(super) fn place_fresh(
        &mut self,
        name: &str,
        spec: &ServiceSpec,
        pool: &Pool,
        tally: &mut Tally,
        avoided: impl Fn(u32) -> Vec<usize>,
        pinned: impl Fn(u32) -> Option<usize>,
    ) {
        let needs = super::needs(spec);
        let mut exhausted: Option<Unplaced> = None;
        let mut unplaced_shown = 0;
        for index in 0..replica_count(spec) {
            let key_pair = (name.to_string(), Slot::Index(index));
            if self.out.placed.contains_key(&key_pair) {
                continue;
            }
            if pool.eligible.is_empty() {
                exhausted = exhausted.or_else(|| Some(self.nobody(spec, pool)));
            }
            if let Some(why) = &exhausted {
                // The reason is the same for every later replica: a bounded number of them
                // carry it (`service ps` shows the rest as pending), so a huge replica count
                // costs no memory here.
                if unplaced_shown < super::MAX_UNPLACED_PER_SERVICE {
                    self.out.unplaced.insert(key_pair, why.clone());
                    unplaced_shown += 1;
                }
                continue;
            }
            if let Some(peer) = pinned(index).filter(|&p| self.room(p, &needs)) {
                self.take(name, Slot::Index(index), peer, needs, pool, tally);
                continue;
            }
            let key = replica_key(name, index);
            match self.best(pool, tally, key, &needs, &avoided(index)) {
                Some(peer) => self.take(name, Slot::Index(index), peer, needs, pool, tally),
                None => {
                    // Free room only shrinks, so no later replica of this service fits either.
                    let why = self.no_room(needs, &pool.eligible);
                    self.out.unplaced.insert(key_pair, why.clone());
                    unplaced_shown += 1;
                    exhausted = Some(why);
                }
            }
        }
    }

    /// Moves up to the service's budget of settled replicas to peers where the spread is
    /// better (see the module docs); `serves(index, peer)` says whether `peer` runs replica
    /// `index` at the current version.
    pub(super) fn rebalance(
        &mut self,
        name: &str,
        spec: &ServiceSpec,
        pool: &Pool,
        tally: &mut Tally,
        serves: impl Fn(u32, &str) -> bool,
    ) {
        let needs = super::needs(spec);
        let owner = |out: &Assignment, index: u32| out.owner(name, &Slot::Index(index)).map(str::to_string);
        let count = replica_count(spec);
        let in_flight = (0..count).filter(|&i| owner(&self.out, i).is_some_and(|p| !serves(i, &p))).count() as u32;
        let mut budget = spec.max_unavailable.max(1).saturating_sub(in_flight);
        for index in 0..count {
            if budget == 0 {
                return;
            }
            let Some(from_id) = owner(&self.out, index) else { continue };
            let Some(from) = self.index(&from_id) else { continue };
            if !serves(index, &from_id) || !pool.is_eligible(from) {
                continue;
            }
            tally.add(pool, from, -1);
            let key = replica_key(name, index);
            match self.best(pool, tally, key, &needs, &[from]) {
                Some(to) if to != from && improves(pool, tally, from, to) => {
                    self.take(name, Slot::Index(index), to, needs, pool, tally);
                    budget -= 1;
                }
                _ => tally.add(pool, from, 1),
            }
        }
    }

    /// Why none of `candidates` can take a replica reserving `needs`.
    pub(super) fn no_room(&self, needs: Resources, candidates: &[usize]) -> Unplaced {
        let max = |f: &dyn Fn(usize) -> Resources| {
            candidates.iter().fold(Resources::ZERO, |m, &i| {
                let r = f(i);
                Resources::new(m.millicpus.max(r.millicpus), m.memory_bytes.max(r.memory_bytes))
            })
        };
        if !candidates.is_empty() && candidates.iter().all(|&i| self.count[i] >= super::MAX_REPLICAS_PER_PEER) {
            Unplaced::PeersFull { limit: super::MAX_REPLICAS_PER_PEER, matching: candidates.len() }
        } else if candidates.iter().any(|&i| self.peers[i].capacity.fits(&needs)) {
            Unplaced::Insufficient { needs, most_free: max(&|i| self.free[i]), matching: candidates.len() }
        } else {
            Unplaced::TooLarge { needs, largest: max(&|i| self.peers[i].capacity), matching: candidates.len() }
        }
    }

    /// Why a service finds no eligible peer at all.
    pub(super) fn nobody(&self, spec: &ServiceSpec, pool: &Pool) -> Unplaced {
        if self.active.is_empty() {
            Unplaced::NoPeers { draining: pool.draining }
        } else {
            Unplaced::NoMatchingPeer { constraints: spec.constraints.clone(), draining: pool.draining }
        }
    }
}

/// Whether moving a replica (already taken out of `tally`) from `from` to `to` spreads the
/// service better: fewer replicas on the busiest of the two peers, or as many and a better
/// spread over the label's values.
fn improves(pool: &Pool, tally: &Tally, from: usize, to: usize) -> bool {
    let (pf, pt) = (pool.pos(from), pool.pos(to));
    let (hf, ht) = (tally.hosted[pf], tally.hosted[pt]);
    if ht < hf {
        return true;
    }
    if ht > hf {
        return false;
    }
    match (pool.group_of[pf], pool.group_of[pt]) {
        (None, Some(_)) => true,
        (Some(gf), Some(gt)) => gf != gt && tally.group_count[gt] < tally.group_count[gf],
        _ => false,
    }
}

/// The rendezvous key of one replica.
pub(super) fn replica_key(service: &str, index: u32) -> u64 {
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
