//! Property tests of placement: determinism, constraints, capacity, distinct peers, draining
//! peers, that every unplaced replica is unplaced for the reason given, and stickiness: held
//! replicas stay, so removing a peer moves only its replicas and adding one moves nothing.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use shoal_scheduler::{Assignment, PeerView, ReplicaState, Report, Unplaced, place, spec_version};
use shoal_types::{Resources, ServiceSpec, Slot};
use std::collections::{BTreeMap, BTreeSet};

const GIB: u64 = 1 << 30;

fn arb_peer(id: usize) -> impl Strategy<Value = PeerView> {
    (
        0u64..=8,
        0u64..=8,
        proptest::option::of(prop_oneof![Just("eu"), Just("us")]),
        proptest::option::of(prop_oneof![Just("a"), Just("b"), Just("c")]),
        proptest::bool::weighted(0.1),
    )
        .prop_map(move |(cpus, mem, region, zone, draining)| {
            let mut labels = BTreeMap::new();
            if let Some(r) = region {
                labels.insert("region".to_string(), r.to_string());
            }
            if let Some(z) = zone {
                labels.insert("zone".to_string(), z.to_string());
            }
            PeerView { id: format!("p{id:02}"), capacity: Resources::new(cpus * 500, mem * GIB / 2), labels, draining }
        })
}

fn arb_peers() -> impl Strategy<Value = Vec<PeerView>> {
    (0usize..14).prop_flat_map(|n| (0..n).map(arb_peer).collect::<Vec<_>>())
}

fn arb_service(id: usize) -> impl Strategy<Value = ServiceSpec> {
    (0u32..7, 0u64..=6, 0u64..=6, proptest::option::of(prop_oneof![Just("eu"), Just("us")]), any::<bool>()).prop_map(
        move |(replicas, cpus, mem, region, spread)| ServiceSpec {
            name: format!("s{id:02}"),
            image: "img".to_string(),
            replicas,
            cpus_milli: cpus * 250,
            memory_bytes: mem * GIB / 4,
            constraints: region.map(|r| ("region".to_string(), r.to_string())).into_iter().collect(),
            spread: spread.then(|| "zone".to_string()),
            max_unavailable: 1,
            ..Default::default()
        },
    )
}

fn arb_services() -> impl Strategy<Value = Vec<ServiceSpec>> {
    (0usize..10).prop_flat_map(|n| (0..n).map(arb_service).collect::<Vec<_>>())
}

fn run(services: &[ServiceSpec], peers: &[PeerView]) -> Assignment {
    place(services.iter().map(|s| (s.name.as_str(), s)), peers, [])
}

fn run_held(services: &[ServiceSpec], peers: &[PeerView], reports: &[Report]) -> Assignment {
    place(services.iter().map(|s| (s.name.as_str(), s)), peers, reports)
}

fn report(service: &ServiceSpec, slot: Slot, peer: &str) -> Report {
    Report {
        peer: peer.to_string(),
        service: service.name.clone(),
        slot,
        version: spec_version(service),
        state: ReplicaState::Running,
        restarts: 0,
        cpu_milli: 0,
        failures: 0,
        fault: None,
        container: String::new(),
        ip: None,
        started_unix: None,
    }
}

/// What the peers of `a` would report once they run it.
fn reports_of(services: &[ServiceSpec], a: &Assignment) -> Vec<Report> {
    a.placed
        .iter()
        .filter_map(|((s, slot), p)| services.iter().find(|x| &x.name == s).map(|spec| report(spec, slot.clone(), p)))
        .collect()
}

fn roomy(peers: &[PeerView]) -> Vec<PeerView> {
    peers.iter().map(|p| PeerView { capacity: Resources::new(1 << 40, 1 << 60), ..p.clone() }).collect()
}

fn key(s: &str, i: u32) -> (String, Slot) {
    (s.to_string(), Slot::Index(i))
}

fn needs(s: &ServiceSpec) -> Resources {
    Resources::new(s.cpus_milli, s.memory_bytes)
}

fn matches(p: &PeerView, s: &ServiceSpec) -> bool {
    !p.draining && s.constraints.iter().all(|(k, v)| p.labels.get(k) == Some(v))
}

/// Checks every invariant of an assignment; free space only shrinks during placement, so a
/// peer with room for a replica at the end had room when that replica was placed.
fn check(services: &[ServiceSpec], peers: &[PeerView], a: &Assignment) -> Result<(), TestCaseError> {
    check_sticky(services, peers, a, true)
}

/// [`check`]; with `fresh` false (held replicas were given), replicas may share a peer that
/// held them although others have room: stickiness wins over spreading.
fn check_sticky(
    services: &[ServiceSpec],
    peers: &[PeerView],
    a: &Assignment,
    fresh: bool,
) -> Result<(), TestCaseError> {
    let by_id: BTreeMap<&str, &PeerView> = peers.iter().map(|p| (p.id.as_str(), p)).collect();
    let by_name: BTreeMap<&str, &ServiceSpec> = services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
    for ((svc, _), peer) in &a.placed {
        let p = by_id[peer.as_str()];
        let s = by_name[svc.as_str()];
        prop_assert!(matches(p, s), "{svc} on {peer} breaks its constraints or the peer drains");
        let u = used.entry(peer.as_str()).or_default();
        *u = u.saturating_add(&needs(s));
    }
    for (peer, u) in &used {
        prop_assert!(by_id[peer].capacity.fits(u), "{peer} overcommitted: {u:?}");
    }
    let free = |p: &PeerView| p.capacity.saturating_sub(&used.get(p.id.as_str()).copied().unwrap_or_default());
    for s in services {
        let keys: BTreeSet<(String, Slot)> = (0..s.replicas).map(|i| key(&s.name, i)).collect();
        for k in &keys {
            prop_assert!(a.placed.contains_key(k) != a.unplaced.contains_key(k), "{k:?} placed xor unplaced");
        }
        let hosts: Vec<&str> = a.placed.iter().filter(|((n, _), _)| *n == s.name).map(|(_, p)| p.as_str()).collect();
        let distinct: BTreeSet<&str> = hosts.iter().copied().collect();
        if fresh && distinct.len() < hosts.len() {
            for p in peers.iter().filter(|p| matches(p, s) && !distinct.contains(p.id.as_str())) {
                prop_assert!(!free(p).fits(&needs(s)), "{} shares peers although {} had room", s.name, p.id);
            }
        }
        let matching: Vec<&PeerView> = peers.iter().filter(|p| matches(p, s)).collect();
        for ((_, slot), why) in a.unplaced.range(key(&s.name, 0)..=key(&s.name, u32::MAX)) {
            prop_assert!(slot.index().is_some_and(|i| i < s.replicas));
            match why {
                Unplaced::NoPeers { .. } => prop_assert!(peers.iter().all(|p| p.draining)),
                Unplaced::NoMatchingPeer { .. } => prop_assert!(matching.is_empty()),
                Unplaced::TooLarge { .. } => {
                    prop_assert!(!matching.is_empty() && matching.iter().all(|p| !p.capacity.fits(&needs(s))))
                }
                Unplaced::Insufficient { .. } => {
                    prop_assert!(matching.iter().any(|p| p.capacity.fits(&needs(s))));
                    prop_assert!(
                        matching.iter().all(|p| !free(p).fits(&needs(s))),
                        "{} unplaced but room left",
                        s.name
                    );
                }
                Unplaced::TooManyReplicas { .. } => prop_assert!(false, "no spec here asks for that many"),
                Unplaced::PeersFull { .. } => prop_assert!(false, "no peer here runs that many"),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold(services in arb_services(), peers in arb_peers()) {
        let a = run(&services, &peers);
        check(&services, &peers, &a)?;
    }

    #[test]
    fn input_order_does_not_matter(
        (services, shuffled_services) in arb_services().prop_flat_map(|s| (Just(s.clone()), Just(s).prop_shuffle())),
        (peers, shuffled_peers) in arb_peers().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle())),
    ) {
        prop_assert_eq!(run(&services, &peers), run(&shuffled_services, &shuffled_peers));
    }

    /// Held replicas stay: with the reports of a running assignment, removing a peer moves
    /// only that peer's replicas, and adding it back moves nothing.
    #[test]
    fn removing_a_peer_moves_only_its_replicas_and_its_return_moves_nothing(
        services in arb_services(), peers in arb_peers(), victim in any::<prop::sample::Index>(),
    ) {
        prop_assume!(!peers.is_empty());
        let roomy = roomy(&peers);
        let gone = roomy[victim.index(roomy.len())].id.clone();
        let rest: Vec<PeerView> = roomy.iter().filter(|p| p.id != gone).cloned().collect();
        let before = run(&services, &roomy);
        let held: Vec<Report> = reports_of(&services, &before).into_iter().filter(|r| r.peer != gone).collect();
        let after = run_held(&services, &rest, &held);
        for (k, p) in &before.placed {
            if *p != gone {
                prop_assert_eq!(after.placed.get(k), Some(p), "{:?} moved off {}", k, p);
            }
        }
        let back = run_held(&services, &roomy, &reports_of(&services, &after));
        for (k, p) in &after.placed {
            prop_assert_eq!(back.placed.get(k), Some(p), "the returning peer took {:?}", k);
        }
    }

    /// With reports in any order (and some peers reporting the same replica), the result is
    /// the same, and a replica one eligible peer holds stays there when there is room.
    #[test]
    fn held_replicas_stay_whatever_the_order(
        services in arb_services(), peers in arb_peers(), seed in any::<u64>(),
    ) {
        let roomy = roomy(&peers);
        let a = run(&services, &roomy);
        let mut reports = reports_of(&services, &a);
        // Some replicas claimed by a second peer too (a healed partition).
        let extra: Vec<Report> = reports
            .iter()
            .enumerate()
            .filter(|(i, _)| (seed >> (i % 64)) & 1 == 1)
            .filter_map(|(i, r)| roomy.get((i + 1) % roomy.len().max(1)).map(|p| Report { peer: p.id.clone(), ..r.clone() }))
            .collect();
        reports.extend(extra);
        let forward = run_held(&services, &roomy, &reports);
        reports.reverse();
        prop_assert_eq!(&run_held(&services, &roomy, &reports), &forward);
        check_sticky(&services, &roomy, &forward, false)?;
        for (k, p) in &a.placed {
            let holders: BTreeSet<&str> = reports.iter().filter(|r| (&r.service, &r.slot) == (&k.0, &k.1)).map(|r| r.peer.as_str()).collect();
            if holders.len() == 1 {
                prop_assert_eq!(forward.placed.get(k), Some(p));
            } else {
                prop_assert!(forward.placed.get(k).is_some_and(|o| holders.contains(o.as_str())), "contested {:?} went to a holder", k);
            }
        }
    }
}

#[test]
fn replicas_larger_than_any_peer_are_unplaced_with_the_reason() {
    let peers: Vec<PeerView> = (0..3)
        .map(|i| PeerView {
            id: format!("p{i}"),
            capacity: Resources::new(2000, 4 * GIB),
            labels: BTreeMap::new(),
            draining: false,
        })
        .collect();
    let big = ServiceSpec { name: "big".into(), replicas: 2, memory_bytes: 8 * GIB, ..Default::default() };
    let a = run(&[big], &peers);
    assert!(a.placed.is_empty());
    let why = a.unplaced.get(&key("big", 1)).map(ToString::to_string).unwrap_or_default();
    assert!(why.contains("more than any of the 3 matching peers"), "{why}");
    assert!(why.contains("8.0 GiB") || why.contains("8 GiB"), "{why}");
}
