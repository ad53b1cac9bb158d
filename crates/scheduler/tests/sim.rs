//! Services in simulation: many peers, each running the real planner on its own, possibly
//! stale, view, with kills, restarts, joins, partitions and message delays (see
//! `shoal_scheduler::sim`). Each test asserts convergence (every replica exactly once, views
//! agree), that no duplicate lasts, and stickiness (what does not have to move, does not).

use shoal_scheduler::place::ReplicaKey;
use shoal_scheduler::sim::{Sim, SimConfig};
use shoal_scheduler::synth::{self, SplitMix64};
use shoal_scheduler::{PeerView, spec_version};
use shoal_types::{Resources, ServiceMode, ServiceSpec, Slot};
use std::collections::{BTreeMap, BTreeSet};

const LIMIT_MS: u64 = 60_000;

fn roomy_peer(i: usize, zone: &str) -> PeerView {
    PeerView {
        id: format!("peer-{i:04}"),
        capacity: Resources::new(64_000, 256 << 30),
        labels: [("zone".to_string(), zone.to_string())].into(),
        draining: false,
    }
}

fn roomy(n: usize) -> Vec<PeerView> {
    (0..n).map(|i| roomy_peer(i, ["a", "b", "c"][i % 3])).collect()
}

fn svc(name: &str, replicas: u32) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        image: "app:1".into(),
        replicas,
        cpus_milli: 100,
        memory_bytes: 64 << 20,
        max_unavailable: 1,
        ..Default::default()
    }
}

fn cfg(seed: u64) -> SimConfig {
    SimConfig { seed, ..SimConfig::default() }
}

fn settle(sim: &mut Sim, what: &str) -> u64 {
    match sim.run_until_converged(LIMIT_MS) {
        Some(t) => t,
        None => panic!("{what}: not converged after {LIMIT_MS} ms: {:?}", sim.unsettled()),
    }
}

/// Replica → the one peer running it (panics on a duplicate).
fn placement(sim: &Sim) -> BTreeMap<ReplicaKey, usize> {
    sim.running()
        .into_iter()
        .map(|(k, peers)| {
            assert_eq!(peers.len(), 1, "{k:?} runs on {peers:?}");
            (k, peers[0])
        })
        .collect()
}

/// A cluster of `peers` running `services` (replicas 3..=6), converged.
fn running_cluster(seed: u64, peers: usize, services: usize) -> Sim {
    let mut sim = Sim::new(cfg(seed), roomy(peers));
    let mut rng = SplitMix64::new(seed);
    for i in 0..services {
        sim.put(i % peers, svc(&format!("svc-{i:02}"), rng.in_range(3..=6) as u32));
    }
    settle(&mut sim, "create");
    sim
}

fn busiest(p: &BTreeMap<ReplicaKey, usize>) -> usize {
    let mut count: BTreeMap<usize, usize> = BTreeMap::new();
    for &peer in p.values() {
        *count.entry(peer).or_default() += 1;
    }
    count.into_iter().max_by_key(|&(p, n)| (n, std::cmp::Reverse(p))).map(|(p, _)| p).unwrap_or(0)
}

#[test]
fn failover_moves_only_the_dead_peers_replicas() {
    for seed in 1..=5 {
        let mut sim = running_cluster(seed, 10, 8);
        let before = placement(&sim);
        let victim = busiest(&before);
        let stats = sim.stats().clone();
        sim.kill(victim);
        settle(&mut sim, "failover");
        let after = placement(&sim);
        assert_eq!(after.len(), before.len(), "every replica runs again");
        for (k, p) in &before {
            if *p != victim {
                assert_eq!(after.get(k), Some(p), "seed {seed}: {k:?} moved although its peer {p} lives");
            } else {
                assert_ne!(after.get(k), Some(&victim));
            }
        }
        assert_eq!(sim.stats().moves, stats.moves, "no healthy replica moved");
        assert_eq!(sim.stats().duplicates, stats.duplicates, "no duplicate was ever started");
    }
}

#[test]
fn a_returning_peer_and_a_new_peer_move_nothing() {
    for seed in 1..=5 {
        let mut sim = running_cluster(seed, 6, 6);
        // As many replicas as peers: the case where stateless placement moved healthy ones.
        sim.put(0, svc("wide", 6));
        settle(&mut sim, "create wide");
        let victim = busiest(&placement(&sim));
        sim.kill(victim);
        settle(&mut sim, "failover");
        let healed = placement(&sim);
        let stats = sim.stats().clone();
        sim.restart(victim);
        settle(&mut sim, "return");
        assert_eq!(placement(&sim), healed, "seed {seed}: the returning peer took nothing back");
        sim.join(roomy_peer(100, "a"));
        settle(&mut sim, "join");
        assert_eq!(placement(&sim), healed, "seed {seed}: the new peer took nothing");
        assert_eq!(sim.stats().starts, stats.starts, "nothing was started");
        assert_eq!((sim.stats().moves, sim.stats().duplicates), (0, 0));
    }
}

#[test]
fn a_crashed_agent_whose_containers_survive_leaves_no_duplicate_and_moves_nothing_else() {
    let mut sim = running_cluster(7, 8, 6);
    let before = placement(&sim);
    let victim = busiest(&before);
    let on_victim = before.values().filter(|&&p| p == victim).count() as u64;
    sim.crash(victim);
    sim.run_for(10_000);
    let during = sim.running();
    for k in before.keys() {
        let live_copies = during[k].iter().filter(|&&p| p != victim).count();
        assert_eq!(live_copies, 1, "{k:?} runs once among the live peers while the agent is down");
    }
    sim.restart(victim);
    settle(&mut sim, "return");
    let after = placement(&sim);
    for (k, p) in &before {
        if *p != victim {
            assert_eq!(after.get(k), Some(p), "{k:?} moved although its peer lived");
        }
    }
    assert_eq!(sim.stats().moves, 0);
    assert_eq!(sim.stats().duplicates, on_victim, "each replica of the returning peer was a duplicate once");
}

#[test]
fn each_side_of_a_partition_runs_every_replica_and_the_heal_keeps_one() {
    let mut sim = running_cluster(11, 10, 6);
    let all = placement(&sim);
    let left: Vec<usize> = (0..5).collect();
    let right: Vec<usize> = (5..10).collect();
    sim.partition(&[&left, &right]);
    sim.run_for(15_000);
    let during = sim.running();
    for side in [&left, &right] {
        for k in all.keys() {
            let copies = during[k].iter().filter(|p| side.contains(p)).count();
            assert_eq!(copies, 1, "{k:?} runs once on side {side:?}: {:?}", during[k]);
        }
    }
    sim.heal();
    settle(&mut sim, "heal");
    assert_eq!(placement(&sim).len(), all.len());
}

#[test]
fn fifty_peers_joining_at_once_take_nothing_and_get_new_work() {
    let mut sim = running_cluster(13, 5, 5);
    let before = placement(&sim);
    for i in 0..50 {
        sim.join(roomy_peer(200 + i, ["a", "b", "c"][i % 3]));
    }
    settle(&mut sim, "joins");
    assert_eq!(placement(&sim), before);
    sim.put(3, svc("fresh", 40));
    settle(&mut sim, "new service");
    let hosts: BTreeSet<usize> = placement(&sim).iter().filter(|(k, _)| k.0 == "fresh").map(|(_, p)| *p).collect();
    assert_eq!(hosts.len(), 40, "a new service spreads over the new peers too");
}

#[test]
fn global_services_run_once_per_matching_peer() {
    let mut sim = Sim::new(cfg(17), roomy(6));
    let mut agent = svc("agent", 0);
    agent.mode = ServiceMode::Global;
    sim.put(0, agent.clone());
    let mut zoned = svc("zoned", 0);
    zoned.mode = ServiceMode::Global;
    zoned.constraints.insert("zone".into(), "a".into());
    sim.put(1, zoned);
    settle(&mut sim, "create");
    let p = placement(&sim);
    for i in 0..6 {
        let id = sim.id(i).to_string();
        assert_eq!(p.get(&("agent".to_string(), Slot::Peer(id.clone()))), Some(&i));
        let zoned_here = p.contains_key(&("zoned".to_string(), Slot::Peer(id)));
        assert_eq!(zoned_here, i % 3 == 0, "zoned only on zone a");
    }
    let joined = sim.join(roomy_peer(50, "a"));
    let t = settle(&mut sim, "join");
    assert!(t < 5_000, "a joining peer gets its replicas within seconds ({t} ms)");
    let id = sim.id(joined).to_string();
    assert_eq!(placement(&sim).get(&("agent".to_string(), Slot::Peer(id))), Some(&joined));
    sim.kill(2);
    settle(&mut sim, "kill");
    let after = placement(&sim);
    assert_eq!(after.keys().filter(|k| k.0 == "agent").count(), 6, "the dead peer's replica went nowhere");
    assert_eq!(sim.stats().moves, 0);
}

#[test]
fn a_peer_whose_starts_fail_is_avoided() {
    let mut sim = Sim::new(cfg(19), roomy(5));
    sim.set_broken(2, true);
    for i in 0..10 {
        sim.put(0, svc(&format!("one-{i}"), 1));
    }
    settle(&mut sim, "create");
    assert!(placement(&sim).values().all(|&p| p != 2), "nothing runs on the broken peer");
}

#[test]
fn rebalance_spreads_again_without_taking_a_replica_down() {
    let mut sim = Sim::new(cfg(23), roomy(3));
    sim.put(0, svc("web", 6));
    settle(&mut sim, "create");
    sim.kill(0);
    settle(&mut sim, "failover");
    sim.restart(0);
    settle(&mut sim, "return");
    let count_on = |sim: &Sim, peer: usize| placement(sim).values().filter(|&&p| p == peer).count();
    assert_eq!(count_on(&sim, 0), 0, "returning moved nothing");
    let mut spec = sim.map(1).get("web").cloned().expect("web");
    spec.rebalance = Some(1);
    sim.put(1, spec);
    let start = sim.now_ms();
    while !sim.converged() || sim.now_ms() == start {
        let running: usize = sim.running().len();
        assert_eq!(running, 6, "every replica keeps running during the rebalance");
        sim.run_for(50);
        assert!(sim.now_ms() - start < LIMIT_MS, "{:?}", sim.unsettled());
    }
    assert_eq!((0..3).map(|p| count_on(&sim, p)).collect::<Vec<_>>(), [2, 2, 2]);
    assert_eq!(sim.map(2).get("web").and_then(|s| s.rebalance), None, "the request was cleared");
    assert_eq!(sim.stats().moves + sim.stats().duplicates, 2, "two replicas moved, on request");
}

#[test]
fn a_rolling_update_keeps_all_but_max_unavailable_replicas_running() {
    let mut sim = running_cluster(29, 8, 0);
    let mut spec = svc("web", 6);
    spec.max_unavailable = 2;
    sim.put(0, spec.clone());
    settle(&mut sim, "create");
    spec.image = "app:2".into();
    sim.put(5, spec.clone());
    let current = spec_version(&spec);
    let start = sim.now_ms();
    while !sim.converged() || sim.now_ms() == start {
        let up = sim.running().len();
        assert!(up >= 4, "{up} of 6 running during the update");
        sim.run_for(20);
        assert!(sim.now_ms() - start < LIMIT_MS, "{:?}", sim.unsettled());
    }
    assert_eq!(sim.map(3).get("web").map(spec_version), Some(current));
}

#[test]
fn random_churn_always_converges() {
    for seed in 100..106 {
        let mut rng = SplitMix64::new(seed);
        let peers = synth::peers(&mut rng, 24);
        let mut sim = Sim::new(cfg(seed), peers);
        for s in synth::services(&mut rng, 12, 1..=6) {
            sim.put(rng.in_range(0..=23) as usize, s);
        }
        for _ in 0..12 {
            let i = rng.in_range(0..=23) as usize;
            match rng.in_range(0..=5) {
                0 if sim.is_alive(i) => sim.kill(i),
                1 if sim.is_alive(i) => sim.crash(i),
                2 if !sim.is_alive(i) => sim.restart(i),
                3 => {
                    let cut = rng.in_range(1..=22) as usize;
                    let (a, b): (Vec<usize>, Vec<usize>) = (0..24).partition(|&p| p < cut);
                    sim.partition(&[&a, &b]);
                }
                4 => sim.heal(),
                _ => {
                    let name = format!("svc-{:04}", rng.in_range(0..=11));
                    if let Some(mut s) = sim.map(i).get(&name).cloned() {
                        s.replicas = rng.in_range(0..=8) as u32;
                        sim.put(i, s);
                    }
                }
            }
            sim.run_for(rng.in_range(200..=4000));
        }
        sim.heal();
        for i in 0..24 {
            if !sim.is_alive(i) {
                sim.restart(i);
            }
        }
        settle(&mut sim, &format!("seed {seed}"));
    }
}

#[test]
fn a_new_service_starts_each_replica_exactly_once() {
    for seed in 30..36 {
        // Reports travel slower than a round: a peer plans again before it hears of the others' starts.
        let mut sim = Sim::new(SimConfig { gossip_ms: (300, 700), start_ms: (300, 900), ..cfg(seed) }, roomy(8));
        sim.put((seed % 8) as usize, svc("burst", 30));
        settle(&mut sim, "create");
        assert_eq!(placement(&sim).len(), 30);
        let s = sim.stats();
        assert_eq!((s.starts, s.duplicates), (30, 0), "seed {seed}: every replica started once: {s:?}");
    }
}
