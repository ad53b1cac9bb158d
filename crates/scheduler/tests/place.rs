//! Property tests of placement: determinism, constraints, capacity, distinct peers, draining
//! peers, and that every unplaced replica is unplaced for the reason given.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use shoal_scheduler::{Assignment, PeerView, Unplaced, place};
use shoal_types::{Resources, ServiceSpec};
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
    place(services.iter().map(|s| (s.name.as_str(), s)), peers)
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
        let keys: BTreeSet<(String, u32)> = (0..s.replicas).map(|i| (s.name.clone(), i)).collect();
        for k in &keys {
            prop_assert!(a.placed.contains_key(k) != a.unplaced.contains_key(k), "{k:?} placed xor unplaced");
        }
        let hosts: Vec<&str> = a.placed.iter().filter(|((n, _), _)| *n == s.name).map(|(_, p)| p.as_str()).collect();
        let distinct: BTreeSet<&str> = hosts.iter().copied().collect();
        if distinct.len() < hosts.len() {
            for p in peers.iter().filter(|p| matches(p, s) && !distinct.contains(p.id.as_str())) {
                prop_assert!(!free(p).fits(&needs(s)), "{} shares peers although {} had room", s.name, p.id);
            }
        }
        let matching: Vec<&PeerView> = peers.iter().filter(|p| matches(p, s)).collect();
        for ((_, i), why) in a.unplaced.range((s.name.clone(), 0)..=(s.name.clone(), u32::MAX)) {
            prop_assert!(*i < s.replicas);
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

    /// Without capacity pressure, removing a peer moves its own replicas, plus at most the
    /// later replicas of the same services (which may lose their peer to a displaced sibling).
    #[test]
    fn removing_a_peer_moves_little(services in arb_services(), peers in arb_peers(), victim in any::<prop::sample::Index>()) {
        prop_assume!(!peers.is_empty());
        let roomy: Vec<PeerView> = peers
            .iter()
            .map(|p| PeerView { capacity: Resources::new(1 << 40, 1 << 60), ..p.clone() })
            .collect();
        let gone = roomy[victim.index(roomy.len())].id.clone();
        let rest: Vec<PeerView> = roomy.iter().filter(|p| p.id != gone).cloned().collect();
        let before = run(&services, &roomy);
        let after = run(&services, &rest);
        let first_hit: BTreeMap<&str, u32> = before
            .placed
            .iter()
            .filter(|(_, p)| **p == gone)
            .fold(BTreeMap::new(), |mut m, ((s, i), _)| {
                let e = m.entry(s.as_str()).or_insert(*i);
                *e = (*e).min(*i);
                m
            });
        for ((s, i), p) in &before.placed {
            if *p != gone && after.placed.get(&(s.clone(), *i)) != Some(p) {
                prop_assert!(first_hit.get(s.as_str()).is_some_and(|first| first < i), "{s}/{i} moved off {p}");
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
    let why = a.unplaced.get(&("big".to_string(), 1)).map(ToString::to_string).unwrap_or_default();
    assert!(why.contains("more than any of the 3 matching peers"), "{why}");
    assert!(why.contains("8.0 GiB") || why.contains("8 GiB"), "{why}");
}
