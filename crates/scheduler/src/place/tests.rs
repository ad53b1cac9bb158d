use super::*;
use crate::report::{Fault, ReplicaState};

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
    place(services.iter().map(|s| (s.name.as_str(), s)), peers, [])
}

fn held(services: &[ServiceSpec], peers: &[PeerView], reports: &[Report]) -> Assignment {
    place(services.iter().map(|s| (s.name.as_str(), s)), peers, reports)
}

fn key(s: &str, i: u32) -> ReplicaKey {
    (s.to_string(), Slot::Index(i))
}

fn report(spec: &ServiceSpec, slot: Slot, peer: &str, state: ReplicaState) -> Report {
    Report {
        peer: peer.into(),
        service: spec.name.clone(),
        slot,
        version: crate::spec_version(spec),
        state,
        restarts: 0,
        cpu_milli: 0,
        failures: 0,
        fault: None,
        container: String::new(),
        ip: None,
        started_unix: None,
    }
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
    let why = |s: &str, i: u32| a.unplaced.get(&key(s, i)).map(|u| u.to_string()).unwrap_or_default();
    assert!(why("eu", 0).contains("`region=eu`"), "{}", why("eu", 0));
    assert!(matches!(a.unplaced.get(&key("big", 0)), Some(Unplaced::TooLarge { .. })));
    assert!(why("big", 0).contains("4 cpu"), "{}", why("big", 0));
    // "full" fits 2000m on p1 (1 GiB only once) and 1000m on p2: 2 placed, 2 unplaced.
    assert_eq!(a.placed.keys().filter(|(s, _)| s == "full").count(), 2);
    assert!(matches!(a.unplaced.get(&key("full", 2)), Some(Unplaced::Insufficient { .. })));
    assert!(why("full", 3).starts_with("not enough free"), "{}", why("full", 3));
    assert_eq!(a.reasons("full").len(), 1);

    for p in &mut peers {
        p.draining = true;
    }
    let a = run(&[svc("web", 1, 0, 0)], &peers);
    assert_eq!(a.unplaced.get(&key("web", 0)), Some(&Unplaced::NoPeers { draining: 2 }));
    assert!(run(&[svc("web", 1, 0, 0)], &[]).placed.is_empty());
}

#[test]
fn too_many_replicas_are_capped() {
    let peers: Vec<PeerView> = (0..20).map(|i| peer(&format!("p{i:02}"), 1, 1, &[])).collect();
    let a = run(&[svc("huge", u32::MAX, 0, 0)], &peers);
    assert_eq!(a.placed.len(), MAX_REPLICAS_PER_SERVICE as usize);
    assert!(a.unplaced.values().any(|u| matches!(u, Unplaced::TooManyReplicas { .. })));
}

/// Specs that ask for millions of replicas that reserve nothing: what is placed is bounded by
/// the peers (at most MAX_REPLICAS_PER_PEER each), what carries a reason by the services.
#[test]
fn what_is_placed_is_bounded_by_the_peers_not_by_the_specs() {
    let peers: Vec<PeerView> = (0..3).map(|i| peer(&format!("p{i}"), 1, 1, &[])).collect();
    let specs: Vec<ServiceSpec> = (0..300).map(|i| svc(&format!("s{i:03}"), MAX_REPLICAS_PER_SERVICE, 0, 0)).collect();
    let started = std::time::Instant::now();
    let a = run(&specs, &peers);
    assert_eq!(a.placed.len(), 3 * MAX_REPLICAS_PER_PEER as usize);
    assert!(a.unplaced.len() <= 300 * MAX_UNPLACED_PER_SERVICE, "{}", a.unplaced.len());
    let full = a.unplaced.values().find(|u| matches!(u, Unplaced::PeersFull { .. })).expect("a reason");
    assert!(full.to_string().contains("add peers"), "{full}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
}

#[test]
fn duplicate_inputs_do_not_depend_on_order() {
    let p1 = peer("p", 1000, 1, &[]);
    let p2 = peer("p", 2000, 1, &[]);
    let s1 = svc("web", 1, 1500, 0);
    let mut s2 = s1.clone();
    s2.image = "other".into();
    let x = place([("web", &s1), ("web", &s2)], &[p1.clone(), p2.clone()], []);
    let y = place([("web", &s2), ("web", &s1)], &[p2, p1], []);
    assert_eq!(x, y);
}

#[test]
fn held_replicas_stay_unless_their_peer_no_longer_fits() {
    let peers: Vec<_> = (0..4).map(|i| peer(&format!("p{i}"), 1000, 1 << 30, &[("zone", "a")])).collect();
    let web = svc("web", 2, 400, 0);
    // Both replicas on p3, which rendezvous hashing would not choose for both.
    let reports = [
        report(&web, Slot::Index(0), "p3", ReplicaState::Running),
        report(&web, Slot::Index(1), "p3", ReplicaState::Starting),
    ];
    let a = held(std::slice::from_ref(&web), &peers, &reports);
    assert_eq!(a.owner("web", &Slot::Index(0)), Some("p3"));
    assert_eq!(a.owner("web", &Slot::Index(1)), Some("p3"), "a starting replica is held too");

    // p3 no longer matches a constraint: both move.
    let mut constrained = web.clone();
    constrained.constraints.insert("zone".into(), "a".into());
    let mut moved = peers.clone();
    moved[3].labels.insert("zone".into(), "b".into());
    let a = held(std::slice::from_ref(&constrained), &moved, &reports);
    assert!(a.of_service("web").all(|(_, p)| p != "p3"));
    // p3 drains: both move.
    let mut draining = peers.clone();
    draining[3].draining = true;
    let a = held(std::slice::from_ref(&web), &draining, &reports);
    assert!(a.of_service("web").all(|(_, p)| p != "p3"));
    // p3 shrank to room for one: the first stays, the second moves.
    let mut small = peers.clone();
    small[3].capacity = Resources::new(500, 1 << 30);
    let a = held(std::slice::from_ref(&web), &small, &reports);
    assert_eq!(a.owner("web", &Slot::Index(0)), Some("p3"));
    assert_ne!(a.owner("web", &Slot::Index(1)), Some("p3"));
}

#[test]
fn a_contested_replica_keeps_the_better_spread_copy() {
    let peers: Vec<_> = (0..3).map(|i| peer(&format!("p{i}"), 4000, 1 << 30, &[])).collect();
    let web = svc("web", 3, 100, 0);
    // Replicas 0 and 1 on p0; replica 1 also on p2 (each side of a partition ran one).
    let reports = [
        report(&web, Slot::Index(0), "p0", ReplicaState::Running),
        report(&web, Slot::Index(1), "p0", ReplicaState::Running),
        report(&web, Slot::Index(1), "p2", ReplicaState::Running),
        report(&web, Slot::Index(2), "p1", ReplicaState::Running),
    ];
    let a = held(std::slice::from_ref(&web), &peers, &reports);
    assert_eq!(a.owner("web", &Slot::Index(1)), Some("p2"));
    assert!(a.contested.contains(&key("web", 1)));
    // An outdated copy loses to a current one, whatever the spread.
    let mut old = reports.clone();
    old[2].version = "old".into();
    let a = held(std::slice::from_ref(&web), &peers, &old);
    assert_eq!(a.owner("web", &Slot::Index(1)), Some("p0"));
}

#[test]
fn a_peer_that_keeps_failing_for_its_own_reason_is_avoided() {
    let peers: Vec<_> = (0..3).map(|i| peer(&format!("p{i}"), 4000, 1 << 30, &[])).collect();
    let one = svc("one", 1, 100, 0);
    let first = run(std::slice::from_ref(&one), &peers).owner("one", &Slot::Index(0)).map(str::to_string);
    let first = first.expect("placed");
    let mut failed = report(&one, Slot::Index(0), &first, ReplicaState::Failed);
    failed.failures = crate::report::AVOID_AFTER;
    failed.fault = Some(Fault { local: true, message: "port 80 in use".into() });
    let a = held(std::slice::from_ref(&one), &peers, std::slice::from_ref(&failed));
    assert_ne!(a.owner("one", &Slot::Index(0)), Some(first.as_str()));
    // A cause no other peer escapes (no peer has the image) keeps it where it is.
    failed.fault = Some(Fault { local: false, message: "no peer has the image".into() });
    let a = held(std::slice::from_ref(&one), &peers, std::slice::from_ref(&failed));
    assert_eq!(a.owner("one", &Slot::Index(0)), Some(first.as_str()));
    // When every peer failed, it is placed anyway (someone keeps trying, the reason shows).
    failed.fault = Some(Fault { local: true, message: "port 80 in use".into() });
    let all: Vec<Report> = peers.iter().map(|p| Report { peer: p.id.clone(), ..failed.clone() }).collect();
    assert!(held(std::slice::from_ref(&one), &peers, &all).owner("one", &Slot::Index(0)).is_some());
}

#[test]
fn global_services_go_on_every_matching_peer_with_room() {
    let mut peers: Vec<_> = (0..4).map(|i| peer(&format!("p{i}"), 1000, 1 << 30, &[("disk", "ssd")])).collect();
    peers[1].labels.clear();
    peers[2].draining = true;
    peers[3].capacity = Resources::new(50, 1 << 30);
    let mut g = svc("agent", 0, 100, 0);
    g.mode = ServiceMode::Global;
    g.constraints.insert("disk".into(), "ssd".into());
    let a = run(std::slice::from_ref(&g), &peers);
    assert_eq!(a.owner("agent", &Slot::Peer("p0".into())), Some("p0"));
    assert_eq!(a.placed.len(), 1, "not on the unlabelled, the draining or the full peer: {a:?}");
    assert!(matches!(a.unplaced.get(&("agent".into(), Slot::Peer("p3".into()))), Some(Unplaced::TooLarge { .. })));
    g.constraints.insert("disk".into(), "nvme".into());
    let a = run(&[g], &peers);
    assert!(a.placed.is_empty());
    assert!(a.reasons("agent")[0].contains("no peer matches"), "{:?}", a.reasons("agent"));
}

#[test]
fn rebalance_moves_one_replica_at_a_time_toward_an_even_spread() {
    let peers: Vec<_> = (0..3).map(|i| peer(&format!("p{i}"), 4000, 1 << 30, &[])).collect();
    let mut web = svc("web", 6, 100, 0);
    // After a failover of p2 and its return: three on p0, three on p1.
    let reports: Vec<Report> =
        (0..6).map(|i| report(&web, Slot::Index(i), ["p0", "p1"][i as usize % 2], ReplicaState::Running)).collect();
    let a = held(std::slice::from_ref(&web), &peers, &reports);
    assert!(a.of_service("web").all(|(_, p)| p != "p2"), "without a request nothing moves");
    web.rebalance = Some(1);
    let a = held(std::slice::from_ref(&web), &peers, &reports);
    let on_p2: Vec<&Slot> = a.of_service("web").filter(|(_, p)| *p == "p2").map(|(s, _)| s).collect();
    assert_eq!(on_p2, [&Slot::Index(0)], "one at a time (max_unavailable 1), lowest slot first");
    // While that copy starts, nothing else moves; the new copy wins once contested.
    let mut next = reports.clone();
    next.push(report(&web, Slot::Index(0), "p2", ReplicaState::Starting));
    let a = held(std::slice::from_ref(&web), &peers, &next);
    assert_eq!(a.of_service("web").filter(|(_, p)| *p == "p2").count(), 1);
    assert_eq!(a.owner("web", &Slot::Index(0)), Some("p2"));
}
