//! A services simulator: many peers, each running the real [`plan`] on its own, possibly stale,
//! view of the cluster, on a virtual clock.
//!
//! Each simulated peer has its own copy of the desired state ([`ServiceMap`] and [`Clock`]), its
//! own idea of who is alive, the replica reports it has received from each peer, and its own
//! containers. What it learns travels as messages with random delays drawn from [`SimConfig`]:
//!
//! - a peer's death reaches each survivor after a failure-detection delay, its return (or a new
//!   peer's arrival) after a join delay, as SWIM would deliver them;
//! - reports are published after every round that changed them and reach each live peer after a
//!   gossip delay (and whole, on a join: anti-entropy);
//! - desired-state changes are pushed to every live peer after a short delay, and every second
//!   each peer merges maps with one random live peer;
//! - across a partition nothing is delivered, and each side declares the other dead.
//!
//! Each live peer plans every round (250 ms) in which its view changed, and at least every 2 s,
//! and carries out the plan at once: stops are immediate, starts complete after a start delay,
//! rewrites go into its map and are pushed. A restarted or newly joined peer does not act until
//! it has heard from every peer it believes alive (or a grace period passed), as the agent does.
//!
//! [`Sim::converged`] says when every live peer's views agree and every placed replica runs
//! exactly once at the current version on its owner, with nothing else running. [`SimStats`]
//! counts replicas stopped because they moved (`moves`) or were duplicates (`duplicates`):
//! stickiness keeps both at zero when a peer returns or joins.

use crate::crdt::ServiceMap;
use crate::hlc::Clock;
use crate::place::{PeerView, ReplicaKey};
use crate::plan::{self, Input, LocalReplica, StartFailure, StopReason};
use crate::report::Report;
use crate::synth::SplitMix64;
use shoal_types::{ContainerState, ServiceSpec, Slot};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

mod check;

/// Delays of the simulated cluster, each a `(min, max)` range in milliseconds.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds every random choice; a run is reproduced by its seed.
    pub seed: u64,
    /// Time between two planning rounds of a peer.
    pub round_ms: u64,
    /// From a peer's death (or a partition) until a given survivor declares it dead.
    pub detect_ms: (u64, u64),
    /// From a peer's start (or a heal) until a given peer sees it alive.
    pub join_ms: (u64, u64),
    /// Delivery of a peer's published reports.
    pub gossip_ms: (u64, u64),
    /// Delivery of a pushed service map.
    pub push_ms: (u64, u64),
    /// From a start until the container runs.
    pub start_ms: (u64, u64),
    /// A restarted peer that has not heard from everyone acts after this long anyway.
    pub settle_grace_ms: u64,
}

impl Default for SimConfig {
    /// Timings measured on the agent: detection ~2-2.6 s, gossip up to ~0.3 s.
    fn default() -> Self {
        SimConfig {
            seed: 1,
            round_ms: 250,
            detect_ms: (1800, 2600),
            join_ms: (100, 600),
            gossip_ms: (5, 300),
            push_ms: (2, 50),
            start_ms: (30, 400),
            settle_grace_ms: 5000,
        }
    }
}

/// What happened to containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Containers started.
    pub starts: u64,
    /// Running replicas stopped because their replica now runs on another peer.
    pub moves: u64,
    /// Replicas stopped because another copy of the same replica was kept.
    pub duplicates: u64,
    /// Every stop, by reason.
    pub stops: BTreeMap<&'static str, u64>,
    /// Planning rounds run.
    pub rounds: u64,
}

/// A peer's reports with the version of the record that carried them (newer replaces older,
/// whatever order they arrive in).
type Versioned = (u64, Arc<Vec<Report>>);

struct Container {
    service: String,
    slot: Slot,
    version: String,
    running: bool,
    started_secs: u64,
}

struct Peer {
    view: PeerView,
    alive: bool,
    incarnation: u32,
    /// Acting since: no actions until every believed-alive peer has been heard from.
    settled: bool,
    started_ms: u64,
    map: ServiceMap,
    clock: Clock,
    /// Peers this one believes alive (itself included).
    members: BTreeSet<usize>,
    /// The latest reports received from each peer.
    reports: BTreeMap<usize, Versioned>,
    containers: BTreeMap<String, Container>,
    starting: BTreeSet<ReplicaKey>,
    failures: BTreeMap<ReplicaKey, StartFailure>,
    published: Versioned,
    dirty: bool,
    last_round_ms: u64,
    next_container: u64,
    /// Starts on this peer fail (with a fault of its own) when set.
    broken: bool,
}

enum Event {
    Round,
    Dead { to: usize, who: usize },
    Alive { to: usize, who: usize },
    Reports { to: usize, from: usize, reports: Versioned },
    Map { to: usize, map: Arc<ServiceMap> },
    StartDone { peer: usize, incarnation: u32, key: ReplicaKey, version: String },
}

struct Queued {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The simulated cluster.
pub struct Sim {
    cfg: SimConfig,
    rng: SplitMix64,
    now: u64,
    seq: u64,
    peers: Vec<Peer>,
    queue: BinaryHeap<Reverse<Queued>>,
    /// Side of the partition per peer (all 0 when healed).
    side: Vec<u32>,
    stats: SimStats,
    last_sync_ms: u64,
}

impl Sim {
    /// A cluster of `peers`, all alive and knowing each other, with no services.
    pub fn new(cfg: SimConfig, peers: Vec<PeerView>) -> Sim {
        let rng = SplitMix64::new(cfg.seed);
        let n = peers.len();
        let mut sim = Sim {
            cfg,
            rng,
            now: 0,
            seq: 0,
            peers: Vec::new(),
            queue: BinaryHeap::new(),
            side: vec![0; n],
            stats: SimStats::default(),
            last_sync_ms: 0,
        };
        for view in peers {
            let p = sim.fresh_peer(view);
            sim.peers.push(p);
        }
        for p in &mut sim.peers {
            p.members = (0..n).collect();
            p.reports = (0..n).map(|i| (i, (0, Arc::new(Vec::new())))).collect();
            p.settled = true;
        }
        sim.schedule(0, Event::Round);
        sim
    }

    fn fresh_peer(&self, view: PeerView) -> Peer {
        Peer {
            clock: Clock::new(view.id.clone()),
            view,
            alive: true,
            incarnation: 0,
            settled: false,
            started_ms: self.now,
            map: ServiceMap::new(),
            members: BTreeSet::new(),
            reports: BTreeMap::new(),
            containers: BTreeMap::new(),
            starting: BTreeSet::new(),
            failures: BTreeMap::new(),
            published: (0, Arc::new(Vec::new())),
            dirty: true,
            last_round_ms: 0,
            next_container: 0,
            broken: false,
        }
    }

    /// Virtual time, milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// What happened to containers so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The number of peers ever (their indexes are `0..n`).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the simulation has no peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Whether peer `i` is alive.
    pub fn is_alive(&self, i: usize) -> bool {
        self.peers[i].alive
    }

    /// Peer `i`'s id.
    pub fn id(&self, i: usize) -> &str {
        &self.peers[i].view.id
    }

    /// Makes every start on peer `i` fail with a fault of its own (a port taken there).
    pub fn set_broken(&mut self, i: usize, broken: bool) {
        self.peers[i].broken = broken;
    }

    fn delay(&mut self, (lo, hi): (u64, u64)) -> u64 {
        self.rng.in_range(lo..=hi)
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued { at: self.now + after, seq: self.seq, event }));
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.side[a] == self.side[b]
    }

    /// Declares or updates a service at peer `at`, as `service create`/`update` there would.
    pub fn put(&mut self, at: usize, spec: ServiceSpec) {
        let hlc = self.peers[at].clock.tick(self.now);
        self.peers[at].map.put(spec, hlc);
        self.changed_map(at);
    }

    /// Removes a service at peer `at`.
    pub fn remove(&mut self, at: usize, name: &str) {
        let hlc = self.peers[at].clock.tick(self.now);
        self.peers[at].map.remove(name, hlc);
        self.changed_map(at);
    }

    /// Peer `at`'s copy of the desired state.
    pub fn map(&self, at: usize) -> &ServiceMap {
        &self.peers[at].map
    }

    fn changed_map(&mut self, at: usize) {
        self.peers[at].dirty = true;
        let snapshot = Arc::new(self.peers[at].map.clone());
        let members: Vec<usize> = self.peers[at].members.iter().copied().filter(|&m| m != at).collect();
        for m in members {
            let d = self.delay(self.cfg.push_ms);
            self.schedule(d, Event::Map { to: m, map: snapshot.clone() });
        }
    }

    /// A power loss: peer `i` and its containers are gone.
    pub fn kill(&mut self, i: usize) {
        self.crash(i);
        self.peers[i].containers.clear();
    }

    /// The agent of peer `i` dies; its containers keep running (and serving).
    pub fn crash(&mut self, i: usize) {
        let p = &mut self.peers[i];
        p.alive = false;
        p.incarnation += 1;
        p.starting.clear();
        // Starts in progress die with the agent (the runtime cleans their containers up).
        p.containers.retain(|_, c| c.running);
        for j in 0..self.peers.len() {
            if j != i && self.peers[j].alive {
                let d = self.delay(self.cfg.detect_ms);
                self.schedule(d, Event::Dead { to: j, who: i });
            }
        }
    }

    /// Starts peer `i` again (its desired state kept, its view of others lost).
    pub fn restart(&mut self, i: usize) {
        let now = self.now;
        let p = &mut self.peers[i];
        p.alive = true;
        p.settled = false;
        p.started_ms = now;
        p.members = [i].into();
        p.failures.clear();
        p.dirty = true;
        // Its record starts again from what it really runs (a newer version wins everywhere).
        let fresh = (self.peers[i].published.0 + 1, Arc::new(own_reports_now(self, i)));
        self.peers[i].published = fresh.clone();
        self.peers[i].reports = [(i, fresh)].into();
        self.announce(i);
    }

    /// A new peer joins; returns its index.
    pub fn join(&mut self, view: PeerView) -> usize {
        let i = self.peers.len();
        let mut p = self.fresh_peer(view);
        p.members = [i].into();
        p.reports = [(i, (0, Arc::new(Vec::new())))].into();
        self.peers.push(p);
        self.side.push(0);
        self.announce(i);
        i
    }

    /// Peer `i` is up: every reachable live peer and `i` learn of each other.
    fn announce(&mut self, i: usize) {
        for j in 0..self.peers.len() {
            if j != i && self.peers[j].alive && self.reachable(i, j) {
                let d = self.delay(self.cfg.join_ms);
                self.schedule(d, Event::Alive { to: j, who: i });
                let d = self.delay(self.cfg.join_ms);
                self.schedule(d, Event::Alive { to: i, who: j });
            }
        }
    }

    /// Cuts the network between `groups` (peers not named form one more group).
    pub fn partition(&mut self, groups: &[&[usize]]) {
        let mut side = vec![groups.len() as u32; self.peers.len()];
        for (g, members) in groups.iter().enumerate() {
            for &m in *members {
                side[m] = g as u32;
            }
        }
        self.side = side;
        for a in 0..self.peers.len() {
            for b in 0..self.peers.len() {
                if a != b && self.peers[a].alive && self.peers[b].alive && !self.reachable(a, b) {
                    let d = self.delay(self.cfg.detect_ms);
                    self.schedule(d, Event::Dead { to: a, who: b });
                }
            }
        }
    }

    /// Restores the network; each side learns the other is alive again.
    pub fn heal(&mut self) {
        let before = std::mem::replace(&mut self.side, vec![0; self.peers.len()]);
        for a in 0..self.peers.len() {
            for b in 0..self.peers.len() {
                if a != b && before[a] != before[b] && self.peers[a].alive && self.peers[b].alive {
                    let d = self.delay(self.cfg.join_ms);
                    self.schedule(d, Event::Alive { to: a, who: b });
                }
            }
        }
    }

    /// Runs the simulation for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while let Some(Reverse(q)) = self.queue.peek() {
            if q.at > end {
                break;
            }
            let Some(Reverse(q)) = self.queue.pop() else { break };
            self.now = q.at;
            self.handle(q.event);
        }
        self.now = end;
    }

    /// Runs until [`Sim::converged`] (checked every round) or `limit_ms` passed; the time it
    /// took, if it converged.
    pub fn run_until_converged(&mut self, limit_ms: u64) -> Option<u64> {
        let start = self.now;
        while self.now - start <= limit_ms {
            if self.converged() {
                return Some(self.now - start);
            }
            self.run_for(self.cfg.round_ms);
        }
        None
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Round => {
                for i in 0..self.peers.len() {
                    self.maybe_round(i);
                }
                self.anti_entropy();
                self.schedule(self.cfg.round_ms, Event::Round);
            }
            Event::Dead { to, who } => {
                // A death notice about a peer that is (again) up and reachable is stale.
                let stale = self.peers[who].alive && self.reachable(to, who);
                if self.peers[to].alive && !stale && self.peers[to].members.remove(&who) {
                    self.peers[to].reports.remove(&who);
                    self.peers[to].dirty = true;
                }
            }
            Event::Alive { to, who } => {
                if !self.peers[to].alive || !self.peers[who].alive || !self.reachable(to, who) {
                    return;
                }
                self.peers[to].members.insert(who);
                let theirs = self.peers[who].published.clone();
                let map = Arc::new(self.peers[who].map.clone());
                self.deliver_reports(to, who, theirs);
                self.merge_map(to, &map);
                if !self.peers[to].settled && self.peers[who].settled {
                    self.full_sync(to, who);
                }
            }
            Event::Reports { to, from, reports } => {
                if self.peers[to].alive && self.peers[from].alive && self.reachable(to, from) {
                    self.deliver_reports(to, from, reports);
                }
            }
            Event::Map { to, map } => {
                if self.peers[to].alive {
                    self.merge_map(to, &map);
                }
            }
            Event::StartDone { peer, incarnation, key, version } => self.start_done(peer, incarnation, key, version),
        }
    }

    fn deliver_reports(&mut self, to: usize, from: usize, reports: Versioned) {
        let p = &mut self.peers[to];
        if p.members.contains(&from) && p.reports.get(&from).is_none_or(|(v, _)| *v < reports.0) {
            p.reports.insert(from, reports);
            p.dirty = true;
        }
    }

    /// A (re)started peer's first exchange with a live member: it takes that member's view of
    /// who is alive and their reports (the record anti-entropy), and then acts.
    fn full_sync(&mut self, to: usize, from: usize) {
        let known: Vec<(usize, Option<Versioned>)> = self.peers[from]
            .members
            .iter()
            .filter(|&&m| m != to)
            .map(|&m| (m, self.peers[from].reports.get(&m).cloned()))
            .collect();
        let p = &mut self.peers[to];
        for (m, reports) in known {
            p.members.insert(m);
            if let Some(r) = reports {
                p.reports.insert(m, r);
            }
        }
        p.settled = true;
        p.dirty = true;
    }

    fn merge_map(&mut self, to: usize, map: &ServiceMap) {
        let p = &mut self.peers[to];
        if let Some(v) = map.max_version() {
            p.clock.observe(v);
        }
        if p.map.merge(map) {
            p.dirty = true;
        }
    }

    /// Every second, each live peer merges maps both ways with one random live member.
    fn anti_entropy(&mut self) {
        if self.now < self.last_sync_ms + 1000 {
            return;
        }
        self.last_sync_ms = self.now;
        for i in 0..self.peers.len() {
            if !self.peers[i].alive {
                continue;
            }
            let others: Vec<usize> = self.peers[i].members.iter().copied().filter(|&m| m != i).collect();
            if others.is_empty() {
                continue;
            }
            let j = others[self.rng.in_range(0..=others.len() as u64 - 1) as usize];
            if !self.peers[j].alive || !self.reachable(i, j) {
                continue;
            }
            // Membership gossip: j's live members (SWIM would not spread a dead one).
            let gossip: Vec<usize> = self.peers[j]
                .members
                .iter()
                .copied()
                .filter(|&m| self.peers[m].alive && self.reachable(i, m) && !self.peers[i].members.contains(&m))
                .collect();
            for m in gossip {
                self.peers[i].members.insert(m);
                self.peers[i].dirty = true;
            }
            // The record book: i takes j's newer copies (or first copies) of the members it knows.
            let newer: Vec<(usize, Versioned)> = self.peers[j]
                .reports
                .iter()
                .filter(|(m, r)| {
                    self.peers[i].members.contains(m) && self.peers[i].reports.get(m).is_none_or(|mine| mine.0 < r.0)
                })
                .map(|(m, r)| (*m, r.clone()))
                .collect();
            for (m, r) in newer {
                self.deliver_reports(i, m, r);
            }
            if self.peers[i].map != self.peers[j].map {
                let (a, b) = (Arc::new(self.peers[i].map.clone()), Arc::new(self.peers[j].map.clone()));
                self.merge_map(i, &b);
                self.merge_map(j, &a);
            }
        }
    }

    fn maybe_round(&mut self, i: usize) {
        let p = &mut self.peers[i];
        if !p.alive {
            return;
        }
        if !p.settled && self.now.saturating_sub(p.started_ms) >= self.cfg.settle_grace_ms {
            p.settled = true;
        }
        if !p.dirty && self.now.saturating_sub(p.last_round_ms) < 2000 {
            return;
        }
        p.dirty = false;
        p.last_round_ms = self.now;
        self.round(i);
    }

    /// Peer `i`'s view: the peers it believes alive and the reports it has from the others.
    fn view_of(&self, i: usize) -> (Vec<PeerView>, Vec<&Report>) {
        let p = &self.peers[i];
        let views: Vec<PeerView> = p.members.iter().map(|&m| self.peers[m].view.clone()).collect();
        let reports: Vec<&Report> =
            p.reports.iter().filter(|(m, _)| **m != i).flat_map(|(_, (_, r))| r.iter()).collect();
        (views, reports)
    }

    /// Peer `i`'s containers as the planner sees them.
    fn local_of(&self, i: usize) -> Vec<LocalReplica> {
        self.peers[i]
            .containers
            .iter()
            .map(|(id, c)| LocalReplica {
                container: id.clone(),
                service: c.service.clone(),
                slot: c.slot.clone(),
                version: c.version.clone(),
                state: if c.running { ContainerState::Running } else { ContainerState::Created },
                restarts: 0,
                started_unix: Some(c.started_secs),
                ip: None,
                cpu_milli: 0,
            })
            .collect()
    }

    /// What peer `i` would decide now.
    fn plan_of(&self, i: usize) -> plan::Plan {
        let (views, reports) = self.view_of(i);
        let local = self.local_of(i);
        plan::plan(&self.input(i, &views, &reports, &local))
    }

    /// Peer `i`'s planner input (no health checks, no autoscaling in the simulation).
    fn input<'a>(
        &'a self,
        i: usize,
        views: &'a [PeerView],
        reports: &'a [&'a Report],
        local: &'a [LocalReplica],
    ) -> Input<'a> {
        static NONE_HEALTH: BTreeMap<String, plan::Health> = BTreeMap::new();
        static NONE_SCALED: BTreeMap<String, u64> = BTreeMap::new();
        let p = &self.peers[i];
        Input {
            me: &p.view.id,
            now_ms: self.now,
            now_unix: self.now / 1000,
            services: &p.map,
            peers: views,
            reports,
            local,
            health: &NONE_HEALTH,
            failures: &p.failures,
            starting: &p.starting,
            scaled: &NONE_SCALED,
            writers: None,
        }
    }

    /// One planning round of peer `i`, carried out at once.
    fn round(&mut self, i: usize) {
        self.stats.rounds += 1;
        let plan = self.plan_of(i);
        // Acting on a partial view would start replicas that members it has no record of run.
        let p = &self.peers[i];
        let settled = p.settled && p.members.iter().all(|m| p.reports.contains_key(m));
        if settled {
            for stop in &plan.stops {
                let running = self.peers[i].containers.remove(&stop.container).is_some_and(|c| c.running);
                *self.stats.stops.entry(reason_name(&stop.reason)).or_default() += 1;
                match stop.reason {
                    StopReason::Moved { .. } if running => self.stats.moves += 1,
                    StopReason::Duplicate { .. } => self.stats.duplicates += 1,
                    _ => {}
                }
            }
            for start in &plan.starts {
                let key = (start.service.clone(), start.slot.clone());
                // Like the runtime, a start makes its container at once (created, not running).
                let p = &mut self.peers[i];
                p.starting.insert(key.clone());
                p.next_container += 1;
                let id = format!("{}-{}", p.view.id, p.next_container);
                let half = Container {
                    service: key.0.clone(),
                    slot: key.1.clone(),
                    version: start.version.clone(),
                    running: false,
                    started_secs: 0,
                };
                p.containers.insert(id, half);
                let d = self.delay(self.cfg.start_ms);
                let incarnation = self.peers[i].incarnation;
                self.schedule(d, Event::StartDone { peer: i, incarnation, key, version: start.version.clone() });
            }
            for w in plan.writes {
                self.put(i, w.spec);
            }
        }
        // Publish what changed (the reports of the plan describe the state before its actions;
        // the next round publishes the rest).
        let mine = own_reports_now(self, i);
        if mine != *self.peers[i].published.1 {
            let mine = (self.peers[i].published.0 + 1, Arc::new(mine));
            self.peers[i].published = mine.clone();
            self.peers[i].reports.insert(i, mine.clone());
            let members: Vec<usize> = self.peers[i].members.iter().copied().filter(|&m| m != i).collect();
            for m in members {
                let d = self.delay(self.cfg.gossip_ms);
                self.schedule(d, Event::Reports { to: m, from: i, reports: mine.clone() });
            }
        }
    }

    fn start_done(&mut self, i: usize, incarnation: u32, key: ReplicaKey, version: String) {
        let now = self.now;
        let p = &mut self.peers[i];
        if !p.alive || p.incarnation != incarnation {
            return;
        }
        p.starting.remove(&key);
        p.dirty = true;
        let half = p.containers.iter().find(|(_, c)| !c.running && c.service == key.0 && c.slot == key.1);
        let Some(id) = half.map(|(id, _)| id.clone()) else { return };
        if p.broken {
            p.containers.remove(&id);
            let count = p.failures.get(&key).filter(|f| f.version == version).map_or(1, |f| f.count + 1);
            let fault = crate::report::Fault { local: true, message: "port in use on this peer".into() };
            p.failures.insert(key, StartFailure { version, count, at_ms: now, fault });
            return;
        }
        p.failures.remove(&key);
        if let Some(c) = p.containers.get_mut(&id) {
            c.running = true;
            c.started_secs = now / 1000;
        }
        self.stats.starts += 1;
    }
}

/// Peer `i`'s reports as its next round would build them (after the actions just taken).
fn own_reports_now(sim: &Sim, i: usize) -> Vec<Report> {
    let (views, _) = sim.view_of(i);
    let local = sim.local_of(i);
    plan::own_reports_for(&sim.input(i, &views, &[], &local))
}

fn reason_name(r: &StopReason) -> &'static str {
    match r {
        StopReason::ServiceRemoved => "removed",
        StopReason::ScaledDown { .. } => "scaled-down",
        StopReason::ModeChanged => "mode-changed",
        StopReason::Moved { .. } => "moved",
        StopReason::Unplaced { .. } => "unplaced",
        StopReason::Duplicate { .. } => "duplicate",
        StopReason::Unhealthy => "unhealthy",
        StopReason::Exited => "exited",
        StopReason::Outdated { .. } => "outdated",
    }
}
