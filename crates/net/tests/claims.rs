//! Subnet claims in simulation: peers that learn each other's claims late (gossip delay),
//! join all at once, restart, and split and heal; every live peer must end with a subnet no
//! other live peer holds, and keep it across restarts.

use shoal_net::ipam::{Claim, Pool, Subnet, claim};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A tiny deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Peer {
    id: String,
    alive: bool,
    side: u8,
    /// Its own claim (persisted across restarts).
    mine: Option<Claim>,
    /// What it knows of the others' claims (learned with a delay), with the version of the
    /// record that carried each: a newer record replaces an older one, never the reverse.
    known: Vec<Option<(u64, Arc<Claim>)>>,
    /// Versions of its own record.
    version: u64,
}

/// (to, from, record version, claim).
type Delivery = (usize, usize, u64, Arc<Claim>);

struct World {
    pool: Pool,
    peers: Vec<Peer>,
    /// Deliveries by step: (to, from, record version, claim).
    inflight: BTreeMap<u64, Vec<Delivery>>,
    /// Peers whose knowledge changed since they last looked.
    dirty: BTreeSet<usize>,
    step: u64,
    rng: Rng,
}

impl World {
    fn new(pool: Pool, n: usize, seed: u64) -> World {
        let peers = (0..n)
            .map(|i| Peer {
                id: format!("12D3KooW{i:05}x{seed}"),
                alive: false,
                side: 0,
                mine: None,
                known: vec![None; n],
                version: 0,
            })
            .collect();
        World { pool, peers, inflight: BTreeMap::new(), dirty: BTreeSet::new(), step: 0, rng: Rng(seed) }
    }

    /// One step: deliveries due, then every live peer re-evaluates its claim and, if it changed,
    /// publishes it (each other live, reachable peer learns it 1-20 steps later).
    fn tick(&mut self) {
        self.step += 1;
        let now = self.step;
        let due = self.inflight.remove(&now).unwrap_or_default();
        for (to, from, version, c) in due {
            let reachable = self.peers[from].side == self.peers[to].side;
            let newer = self.peers[to].known[from].as_ref().is_none_or(|(v, _)| *v < version);
            if self.peers[to].alive && reachable && newer {
                self.peers[to].known[from] = Some((version, c));
                self.dirty.insert(to);
            }
        }
        for i in std::mem::take(&mut self.dirty) {
            if !self.peers[i].alive {
                continue;
            }
            let p = &self.peers[i];
            let known = p.known.iter().flatten().map(|(_, c)| c.as_ref());
            let next = claim(&self.pool, &p.id, p.mine.as_ref(), known, now).expect("room");
            if self.peers[i].mine.as_ref() != Some(&next) {
                self.peers[i].mine = Some(next.clone());
                self.publish(i, next);
            }
        }
    }

    fn publish(&mut self, i: usize, c: Claim) {
        let c = Arc::new(c);
        self.peers[i].version += 1;
        let version = self.peers[i].version;
        for j in 0..self.peers.len() {
            if j != i && self.peers[j].alive {
                let at = self.step + 1 + self.rng.below(20);
                self.inflight.entry(at).or_default().push((j, i, version, c.clone()));
            }
        }
    }

    /// A peer starts (or restarts): it learns every live reachable peer's claim (the record
    /// sync of a join) after a delay, and they learn its claim.
    fn start(&mut self, i: usize) {
        self.peers[i].alive = true;
        self.dirty.insert(i);
        self.peers[i].known.iter_mut().for_each(|k| *k = None);
        for j in 0..self.peers.len() {
            if j != i
                && self.peers[j].alive
                && self.peers[j].side == self.peers[i].side
                && let Some(c) = self.peers[j].mine.clone()
            {
                let at = self.step + 1 + self.rng.below(20);
                let v = self.peers[j].version;
                self.inflight.entry(at).or_default().push((i, j, v, Arc::new(c)));
            }
        }
        // A restarted peer's record is newer (a new generation) and reaches everyone.
        if let Some(c) = self.peers[i].mine.clone() {
            self.publish(i, c);
        }
    }

    fn heal(&mut self) {
        for p in &mut self.peers {
            p.side = 0;
        }
        for i in 0..self.peers.len() {
            if let Some(c) = self.peers[i].mine.clone() {
                self.publish(i, c);
            }
        }
    }

    /// Live peers' subnets, if they are all distinct (within each side of a partition).
    fn distinct(&self) -> Result<BTreeMap<Subnet, String>, String> {
        let mut seen = BTreeMap::new();
        for p in self.peers.iter().filter(|p| p.alive) {
            let Some(c) = &p.mine else { return Err(format!("{} has no subnet", p.id)) };
            if let Some(other) = seen.insert((p.side, c.subnet), p.id.clone()) {
                return Err(format!("{} and {other} both hold {}", p.id, c.subnet));
            }
        }
        Ok(seen.into_iter().map(|((_, s), p)| (s, p)).collect())
    }

    fn settle(&mut self, limit: u64) -> Result<u64, String> {
        let start = self.step;
        loop {
            self.tick();
            if self.inflight.is_empty() {
                return self.distinct().map(|_| self.step - start);
            }
            if self.step - start > limit {
                return Err(format!("not settled after {limit} steps: {:?}", self.distinct().err()));
            }
        }
    }
}

#[test]
fn a_thousand_peers_joining_at_once_end_with_distinct_subnets() {
    for seed in 1..=2 {
        // 1,024 subnets for 1,000 peers: a nearly full pool, where collisions are common.
        let pool = Pool::new(Subnet::parse("10.0.0.0/14").expect("pool"), 24).expect("pool");
        let mut w = World::new(pool, 1000, seed);
        for i in 0..1000 {
            w.start(i);
        }
        let steps = w.settle(10_000).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(steps < 2000, "seed {seed}: settled after {steps} steps");
    }
}

#[test]
fn restarts_keep_their_subnet_and_newcomers_avoid_it() {
    let pool = Pool::new(Subnet::parse("198.19.0.0/16").expect("pool"), 24).expect("pool");
    let mut w = World::new(pool, 60, 7);
    for i in 0..50 {
        w.start(i);
    }
    w.settle(5000).expect("settled");
    let before = w.distinct().expect("distinct");
    // Ten peers die; ten newcomers join while they are away; the ten come back.
    for i in 0..10 {
        w.peers[i].alive = false;
    }
    for i in 50..60 {
        w.start(i);
    }
    w.settle(5000).expect("newcomers");
    for i in 0..10 {
        w.start(i);
    }
    let after = w.settle(5000).map(|_| w.distinct()).expect("settled").expect("distinct");
    for (subnet, peer) in &before {
        assert_eq!(after.get(subnet), Some(peer), "{peer} kept {subnet} across its restart");
    }
}

#[test]
fn after_a_partition_heals_every_live_peer_holds_a_distinct_subnet() {
    for seed in 10..14 {
        let pool = Pool::new(Subnet::parse("10.0.0.0/20").expect("pool"), 24).expect("pool"); // 16 subnets
        let mut w = World::new(pool, 12, seed);
        for i in 0..4 {
            w.start(i);
        }
        w.settle(5000).expect("first four");
        // Split; each side gets new peers that cannot see the other side's claims.
        for i in 0..12 {
            w.peers[i].side = if i % 2 == 0 { 1 } else { 2 };
        }
        for i in 4..12 {
            w.start(i);
        }
        w.settle(5000).expect("each side settles");
        w.heal();
        w.settle(5000).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let held: BTreeSet<Subnet> = w.distinct().expect("distinct").keys().copied().collect();
        assert_eq!(held.len(), 12);
    }
}
