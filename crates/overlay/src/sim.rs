//! A deterministic simulator of Shoal's membership protocol: many foca instances, one virtual
//! clock, a simulated network (latency, jitter, loss, partitions), no sockets and no sleeps.
//!
//! Each simulated peer runs exactly the foca configuration an agent runs ([`swim_config`] with
//! the same [`SwimTuning`]); only the identity is compact ([`SimId`]: an index and a
//! generation, with the same renew/conflict rules as [`crate::swim::SwimId`]) so that 10,000
//! peers, each knowing every other, fit in memory. Tests use it for convergence properties;
//! the benchmark suite uses it for the 1,000 and 10,000-peer figures.

use crate::swim::{SwimTuning, rejoin_targets, swim_config};
use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, Identity, Member, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// A compact identity with [`crate::swim::SwimId`]'s rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SimId {
    pub idx: u32,
    pub generation: u32,
}

impl Identity for SimId {
    type Addr = u32;
    fn renew(&self) -> Option<Self> {
        Some(SimId { idx: self.idx, generation: self.generation + 1 })
    }
    fn addr(&self) -> u32 {
        self.idx
    }
    fn win_addr_conflict(&self, other: &Self) -> bool {
        self.generation > other.generation
    }
}

type SimFoca = Foca<SimId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// Network and protocol settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub peers: usize,
    pub latency: Duration,
    pub jitter: Duration,
    /// Probability that a packet is lost.
    pub loss: f64,
    pub seed: u64,
    pub tuning: SwimTuning,
}

impl SimConfig {
    /// A LAN: 1 ms ± 0.5 ms, no loss.
    pub fn lan(peers: usize, seed: u64) -> Self {
        SimConfig {
            peers,
            latency: Duration::from_millis(1),
            jitter: Duration::from_micros(500),
            loss: 0.0,
            seed,
            tuning: SwimTuning::default(),
        }
    }
}

enum Event {
    Deliver { to: u32, data: Bytes },
    Timer { node: u32, incarnation: u32, timer: Timer<SimId> },
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct SimNode {
    foca: Option<SimFoca>,
    /// Bumped on every restart so timers of a previous run are ignored.
    run: u32,
    generation: u32,
    group: u16,
}

/// A membership change some peer observed, with its virtual time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub at: Duration,
    pub observer: u32,
    pub subject: SimId,
    pub up: bool,
}

/// The simulation.
pub struct Sim {
    cfg: SimConfig,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    now: u64,
    seq: u64,
    rng: StdRng,
    rt: AccumulatingRuntime<SimId>,
    /// Every MemberUp/MemberDown seen, in order.
    pub observed: Vec<Observed>,
    /// Keep `observed` only for this subject (None: keep all; at 10,000 peers "all" is large).
    pub watch: Option<u32>,
    /// Packets sent and bytes carried.
    pub packets: u64,
    pub bytes: u64,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

impl Sim {
    /// Starts `cfg.peers` peers that already know each other (as after a completed join).
    pub fn new(cfg: SimConfig) -> Self {
        let n = cfg.peers;
        let mut sim = Sim {
            nodes: Vec::with_capacity(n),
            queue: BinaryHeap::new(),
            now: 0,
            seq: 0,
            rng: StdRng::seed_from_u64(cfg.seed),
            rt: AccumulatingRuntime::new(),
            observed: Vec::new(),
            watch: None,
            packets: 0,
            bytes: 0,
            cfg,
        };
        for i in 0..n as u32 {
            let id = SimId { idx: i, generation: 1 };
            let foca = Foca::new(
                id,
                swim_config(n, &sim.cfg.tuning),
                StdRng::seed_from_u64(sim.cfg.seed ^ (u64::from(i) << 20)),
                PostcardCodec,
            );
            sim.nodes.push(SimNode { foca: Some(foca), run: 0, generation: 1, group: 0 });
        }
        for i in 0..n as u32 {
            let others = (0..n as u32).filter(|&j| j != i).map(|j| Member::alive(SimId { idx: j, generation: 1 }));
            if let Some(f) = sim.nodes[i as usize].foca.as_mut() {
                let _ = f.apply_many(others, false, &mut sim.rt);
            }
            // Start-up notifications (everyone up) are not observations.
            sim.drain(i, false);
        }
        sim
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    fn push(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at, seq: self.seq, ev }));
    }

    fn drain(&mut self, node: u32, observe: bool) {
        let mut rejoined = false;
        self.drain_once(node, observe, &mut rejoined);
        if rejoined {
            self.announce_to_known(node);
        }
    }

    /// What the agent does after a rejoin (see [`rejoin_targets`]).
    fn announce_to_known(&mut self, node: u32) {
        let Some(f) = self.nodes[node as usize].foca.as_mut() else { return };
        for t in rejoin_targets(f.iter_membership_state(), f.identity(), &mut self.rng) {
            let _ = f.announce(t, &mut self.rt);
        }
        let mut again = false;
        self.drain_once(node, true, &mut again);
    }

    fn drain_once(&mut self, node: u32, observe: bool, rejoined: &mut bool) {
        let run = self.nodes[node as usize].run;
        while let Some((to, data)) = self.rt.to_send() {
            self.packets += 1;
            self.bytes += data.len() as u64;
            let lost = self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss);
            let cut = self.nodes[node as usize].group != self.nodes[to.idx as usize].group;
            if lost || cut {
                continue;
            }
            let jitter = nanos(self.cfg.jitter);
            let delay = nanos(self.cfg.latency) + if jitter > 0 { self.rng.random_range(0..jitter) } else { 0 };
            self.push(self.now + delay, Event::Deliver { to: to.idx, data });
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.push(self.now + nanos(after), Event::Timer { node, incarnation: run, timer });
        }
        while let Some(n) = self.rt.to_notify() {
            if !observe {
                continue;
            }
            if let OwnedNotification::Rejoin(_) = n {
                *rejoined = true;
            }
            let (subject, up) = match n {
                OwnedNotification::MemberUp(id) => (id, true),
                OwnedNotification::MemberDown(id) => (id, false),
                OwnedNotification::Rename(_, id) => (id, true),
                _ => continue,
            };
            if self.watch.is_none_or(|w| w == subject.idx) {
                self.observed.push(Observed { at: self.now(), observer: node, subject, up });
            }
        }
    }

    /// Runs events until virtual time `t`.
    pub fn run_until(&mut self, t: Duration) {
        let end = nanos(t);
        while let Some(Reverse(s)) = self.queue.peek() {
            if s.at > end {
                break;
            }
            let Some(Reverse(s)) = self.queue.pop() else { break };
            self.now = s.at;
            match s.ev {
                Event::Deliver { to, data } => {
                    if let Some(f) = self.nodes[to as usize].foca.as_mut() {
                        let _ = f.handle_data(&data, &mut self.rt);
                        self.drain(to, true);
                    }
                }
                Event::Timer { node, incarnation, timer } => {
                    let n = &mut self.nodes[node as usize];
                    if n.run != incarnation {
                        continue;
                    }
                    if let Some(f) = n.foca.as_mut() {
                        let _ = f.handle_timer(timer, &mut self.rt);
                        self.drain(node, true);
                    }
                }
            }
        }
        self.now = self.now.max(end);
    }

    /// Runs for `d` more.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now() + d;
        self.run_until(t);
    }

    /// SIGKILL: the peer stops answering.
    pub fn crash(&mut self, idx: u32) {
        self.nodes[idx as usize].foca = None;
    }

    /// Starts a crashed peer again with the next generation; it announces itself to `via`.
    pub fn restart(&mut self, idx: u32, via: u32) {
        let n = self.cfg.peers;
        let node = &mut self.nodes[idx as usize];
        node.run += 1;
        node.generation += 1;
        let id = SimId { idx, generation: node.generation };
        let mut foca = Foca::new(
            id,
            swim_config(n, &self.cfg.tuning),
            StdRng::seed_from_u64(self.cfg.seed ^ u64::from(node.run) ^ (u64::from(idx) << 20)),
            PostcardCodec,
        );
        let _ = foca.announce(SimId { idx: via, generation: 0 }, &mut self.rt);
        node.foca = Some(foca);
        self.drain(idx, true);
    }

    /// Cuts the network between groups: `groups[i]` is peer i's side.
    pub fn partition(&mut self, groups: &[u16]) {
        for (n, g) in self.nodes.iter_mut().zip(groups) {
            n.group = *g;
        }
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
    }

    /// Whether peer `observer` currently counts `subject` (any generation) as active.
    pub fn sees_active(&self, observer: u32, subject: u32) -> Option<bool> {
        let f = self.nodes[observer as usize].foca.as_ref()?;
        Some(f.iter_members().any(|m| m.id().idx == subject))
    }

    /// Number of members peer `observer` counts as active.
    pub fn active_count(&self, observer: u32) -> Option<usize> {
        Some(self.nodes[observer as usize].foca.as_ref()?.iter_members().count())
    }

    /// Whether the peer is running.
    pub fn is_up(&self, idx: u32) -> bool {
        self.nodes[idx as usize].foca.is_some()
    }

    pub fn peers(&self) -> usize {
        self.cfg.peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_down_seen_by_all(sim: &Sim, target: u32, after: Duration) -> Option<Duration> {
        let n = sim.peers() as u32;
        let mut latest = Duration::ZERO;
        for o in (0..n).filter(|&o| o != target && sim.is_up(o)) {
            let t =
                sim.observed.iter().find(|e| e.observer == o && e.subject.idx == target && !e.up && e.at >= after)?;
            latest = latest.max(t.at);
        }
        Some(latest - after)
    }

    #[test]
    fn a_crashed_peer_is_declared_down_by_every_other_within_seconds() {
        let mut sim = Sim::new(SimConfig::lan(50, 7));
        sim.watch = Some(13);
        sim.run_for(Duration::from_secs(5));
        let t0 = sim.now();
        sim.crash(13);
        sim.run_for(Duration::from_secs(10));
        let took = first_down_seen_by_all(&sim, 13, t0).expect("every live peer declared it down");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        // And nobody else was declared down on the way.
        assert!(sim.observed.iter().all(|e| e.up || e.subject.idx == 13));
    }

    #[test]
    fn no_false_positive_in_a_quiet_cluster_with_jitter_and_some_loss() {
        let mut cfg = SimConfig::lan(40, 3);
        cfg.jitter = Duration::from_millis(20);
        cfg.loss = 0.01;
        let mut sim = Sim::new(cfg);
        sim.run_for(Duration::from_secs(120));
        // A quiet cluster only probes: a ping and an ack per peer per probe period (periodic
        // gossip is skipped when there is nothing new), so about 4 packets per peer per second.
        let per_peer_per_sec = sim.packets as f64 / 40.0 / 120.0;
        assert!((3.0..6.0).contains(&per_peer_per_sec), "{per_peer_per_sec} packets/peer/s");
        let downs: Vec<_> = sim.observed.iter().filter(|e| !e.up).collect();
        assert!(downs.is_empty(), "false positives: {downs:?}");
    }

    #[test]
    fn a_restarted_peer_is_active_again_everywhere() {
        let mut sim = Sim::new(SimConfig::lan(30, 11));
        sim.run_for(Duration::from_secs(2));
        sim.crash(4);
        sim.run_for(Duration::from_secs(8));
        assert!((0..30).filter(|&o| o != 4).all(|o| sim.sees_active(o, 4) == Some(false)));
        sim.restart(4, 0);
        sim.run_for(Duration::from_secs(10));
        assert!((0..30).filter(|&o| o != 4).all(|o| sim.sees_active(o, 4) == Some(true)));
        assert_eq!(sim.active_count(4), Some(29));
    }

    #[test]
    fn two_halves_of_a_partition_find_each_other_again() {
        let n = 20u32;
        let mut sim = Sim::new(SimConfig::lan(n as usize, 5));
        sim.run_for(Duration::from_secs(2));
        let groups: Vec<u16> = (0..n).map(|i| u16::from(i >= n / 2)).collect();
        sim.partition(&groups);
        sim.run_for(Duration::from_secs(20));
        for o in 0..n {
            assert_eq!(sim.active_count(o), Some((n / 2 - 1) as usize), "peer {o} during the partition");
        }
        sim.heal();
        sim.run_for(Duration::from_secs(30));
        for o in 0..n {
            assert_eq!(sim.active_count(o), Some((n - 1) as usize), "peer {o} after the heal");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        // Whatever peers crash and restart, once things settle every running peer sees exactly
        // the running peers.
        #[test]
        fn views_converge_after_any_crash_restart_sequence(
            seed in 0u64..1000,
            ops in proptest::collection::vec((0u32..12, proptest::bool::ANY), 1..8),
        ) {
            let n = 12u32;
            let mut sim = Sim::new(SimConfig::lan(n as usize, seed));
            for (who, crash) in ops {
                if crash && sim.is_up(who) && (0..n).filter(|&i| sim.is_up(i)).count() > 2 {
                    sim.crash(who);
                } else if !sim.is_up(who) {
                    let via = (0..n).find(|&i| sim.is_up(i)).unwrap();
                    sim.restart(who, via);
                }
                sim.run_for(Duration::from_millis(700));
            }
            sim.run_for(Duration::from_secs(30));
            let up: Vec<u32> = (0..n).filter(|&i| sim.is_up(i)).collect();
            for &o in &up {
                for s in 0..n {
                    if s == o { continue; }
                    proptest::prop_assert_eq!(sim.sees_active(o, s), Some(sim.is_up(s)), "peer {} about {}", o, s);
                }
            }
        }
    }
}
